"""Classification metrics as pure numpy functions of labels, predictions and probabilities.

The confusion matrix has true classes as rows and predicted classes as columns. Division by zero
(a class never predicted, or absent) gives 0, as scikit-learn's ``zero_division=0`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

REPORT_HEADERS = ("precision", "recall", "f1-score", "support")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable, in float64."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [num_classes, num_classes]: entry (t, p) = examples of class t predicted as p."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(
        numerator, denominator, out=np.zeros_like(numerator, np.float64), where=denominator > 0
    )


def per_class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of each class from a confusion matrix."""
    true_positives = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    precision = _safe_divide(true_positives, matrix.sum(axis=0).astype(np.float64))
    recall = _safe_divide(true_positives, support.astype(np.float64))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def averaged_scores(scores: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Macro (unweighted) and support-weighted averages of per-class scores."""
    support = scores["support"]
    weights = support / max(support.sum(), 1)
    return {
        kind: {name: float(np.sum(scores[name] * w)) for name in ("precision", "recall", "f1")}
        | {"support": int(support.sum())}
        for kind, w in (("macro", np.full(len(support), 1 / len(support))), ("weighted", weights))
    }


def top_k_accuracy(probabilities: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of examples whose true class is among the k most probable."""
    top_k = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    return float(np.mean(np.any(top_k == labels[:, None], axis=-1)))


def calibration_bins(
    probabilities: np.ndarray, labels: np.ndarray, num_bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean confidence, accuracy and count per equal-width confidence bin (bins (a, b])."""
    confidence = probabilities.max(axis=-1)
    correct = (probabilities.argmax(axis=-1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
    counts = np.bincount(index, minlength=num_bins)
    mean_confidence = _safe_divide(np.bincount(index, confidence, num_bins), counts)
    accuracy = _safe_divide(np.bincount(index, correct, num_bins), counts)
    return mean_confidence, accuracy, counts


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, num_bins: int = 15
) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over confidence bins."""
    confidence, accuracy, counts = calibration_bins(probabilities, labels, num_bins)
    return float(np.sum(counts * np.abs(accuracy - confidence)) / max(counts.sum(), 1))


def most_confused_pairs(
    matrix: np.ndarray, class_names: Sequence[str], top: int = 10
) -> list[dict[str, Any]]:
    """The largest off-diagonal entries: (true, predicted, count), most frequent first."""
    off_diagonal = matrix * (1 - np.eye(len(matrix), dtype=matrix.dtype))
    order = np.argsort(-off_diagonal, axis=None, kind="stable")[:top]
    pairs = []
    for flat in order:
        true, predicted = np.unravel_index(flat, matrix.shape)
        if off_diagonal[true, predicted] == 0:
            break
        pairs.append(
            {
                "true": class_names[true],
                "predicted": class_names[predicted],
                "count": int(off_diagonal[true, predicted]),
            }
        )
    return pairs


def classification_report(matrix: np.ndarray, class_names: Sequence[str], digits: int = 4) -> str:
    """The per-class table in scikit-learn's ``classification_report`` text format."""
    scores = per_class_scores(matrix)
    averages = averaged_scores(scores)
    total = int(scores["support"].sum())
    width = max(len("weighted avg"), *(len(name) for name in class_names), digits)
    head = f"{'':>{width}s} " + "".join(f" {h:>9}" for h in REPORT_HEADERS)

    def row(name: str, p: float, r: float, f: float, support: int) -> str:
        return (
            f"{name:>{width}s} "
            + "".join(f" {v:>9.{digits}f}" for v in (p, r, f))
            + (f" {support:>9}")
        )

    lines = [head, ""]
    for i, name in enumerate(class_names):
        lines.append(
            row(
                name,
                scores["precision"][i],
                scores["recall"][i],
                scores["f1"][i],
                int(scores["support"][i]),
            )
        )
    accuracy = np.trace(matrix) / max(total, 1)
    lines += [
        "",
        f"{'accuracy':>{width}s} " + f" {'':>9}" * 2 + f" {accuracy:>9.{digits}f}" + f" {total:>9}",
    ]
    for kind, label in (("macro", "macro avg"), ("weighted", "weighted avg")):
        a = averages[kind]
        lines.append(row(label, a["precision"], a["recall"], a["f1"], total))
    return "\n".join(lines) + "\n"


def evaluation_summary(
    logits: np.ndarray, labels: np.ndarray, class_names: Sequence[str], num_bins: int = 15
) -> dict[str, Any]:
    """Every metric of ``eval/metrics.json`` from logits and integer labels."""
    probabilities = softmax(logits)
    predictions = probabilities.argmax(axis=-1)
    matrix = confusion_matrix(labels, predictions, len(class_names))
    scores = per_class_scores(matrix)
    log_likelihood = np.log(np.maximum(probabilities[np.arange(len(labels)), labels], 1e-300))
    return {
        "num_examples": len(labels),
        "accuracy": float(np.mean(predictions == labels)),
        "loss": float(-np.mean(log_likelihood)),
        "top2_accuracy": top_k_accuracy(probabilities, labels, 2),
        "expected_calibration_error": expected_calibration_error(probabilities, labels, num_bins),
        "per_class": {
            name: {
                "precision": float(scores["precision"][i]),
                "recall": float(scores["recall"][i]),
                "f1": float(scores["f1"][i]),
                "support": int(scores["support"][i]),
            }
            for i, name in enumerate(class_names)
        },
        **{f"{kind}_avg": value for kind, value in averaged_scores(scores).items()},
        "most_confused": most_confused_pairs(matrix, class_names),
        "confusion_matrix": matrix.tolist(),
    }
