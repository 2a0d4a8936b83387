"""Per-class views of data and a trained model: class counts, confusion, accuracy, calibration.

Confusion matrices are ``[K, K]`` counts indexed ``matrix[true, predicted]``; accuracies are
fractions in [0, 1], shown as percentages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter, PercentFormatter
from numpy.typing import ArrayLike

from flaxmnist.evaluation.figures.common import (
    TRAIN_COLOR,
    VAL_COLOR,
    WRONG_COLOR,
    accuracy_floor,
    check_lengths,
    new_figure,
    rotate_tick_labels,
)

_MAX_ANNOTATED_CLASSES = 30  # confusion matrices larger than this are not annotated


def class_distribution(
    train_labels: ArrayLike, test_labels: ArrayLike, class_names: Sequence[str]
) -> Figure:
    """Grouped bars of the number of examples per class in the train and test splits.

    Args:
      train_labels: integer labels of the training split.
      test_labels: integer labels of the test split.
      class_names: name of each class index; fixes the number of classes.
    """
    num_classes = len(class_names)
    train_counts = np.bincount(np.asarray(train_labels, dtype=np.int64), minlength=num_classes)
    test_counts = np.bincount(np.asarray(test_labels, dtype=np.int64), minlength=num_classes)
    x = np.arange(num_classes)
    width = 0.4
    fig = new_figure(max(7.0, 0.6 * num_classes + 2), 4.5)
    ax = fig.subplots()
    for offset, counts, split, color in (
        (-width / 2, train_counts[:num_classes], "train", TRAIN_COLOR),
        (width / 2, test_counts[:num_classes], "test", VAL_COLOR),
    ):
        label = f"{split} ({counts.sum():,} images)"
        ax.bar(x + offset, counts, width, label=label, color=color)
    ax.set_xticks(x, [str(name) for name in class_names])
    rotate_tick_labels(ax, class_names)
    ax.set_xlabel("class")
    ax.set_ylabel("number of images")
    ax.set_title("Examples per class")
    ax.set_ylim(0, max(1, train_counts.max(initial=0), test_counts.max(initial=0)) * 1.15)
    ax.legend(loc="upper center", ncols=2, framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    return fig


def confusion_matrix_heatmap(
    matrix: ArrayLike,
    class_names: Sequence[str],
    *,
    normalize: bool = False,
    annotate: bool | None = None,
) -> Figure:
    """A confusion matrix as a heatmap: true class down (y), predicted class across (x).

    Args:
      matrix: ``[K, K]`` counts, ``matrix[true, predicted]``.
      class_names: name of each class index.
      normalize: divide each row by its sum (fractions of each true class) instead of counts.
      annotate: write each cell's value in it (``None``: when there are at most 30 classes).
    """
    counts = np.asarray(matrix)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {counts.shape}")
    num_classes = len(counts)
    total = counts.sum()
    accuracy = np.trace(counts) / total if total else float("nan")
    if normalize:
        row_sums = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, row_sums, out=np.zeros(counts.shape), where=row_sums > 0)
        fmt, kind = "{:.2f}", "row-normalized"
    else:
        values, fmt, kind = counts, "{:d}", "counts"
    size = min(16.0, max(6.0, 0.6 * num_classes + 2.5))
    fig = new_figure(size + 1.0, size)
    ax = fig.subplots()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of true class" if normalize else "count")
    if annotate is None:
        annotate = num_classes <= _MAX_ANNOTATED_CLASSES
    if annotate:
        threshold = (values.max() if values.size else 0) / 2
        font_size = max(5, min(10, 110 // max(num_classes, 1)))
        for (row, column), value in np.ndenumerate(values):
            text = fmt.format(float(value) if normalize else int(value))
            color = "white" if value > threshold else "black"
            ax.text(column, row, text, ha="center", va="center", fontsize=font_size, color=color)
    ticks = np.arange(num_classes)
    names = [str(name) for name in class_names]
    ax.set_xticks(ticks, names)
    ax.set_yticks(ticks, names)
    rotate_tick_labels(ax, names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix ({kind}) — accuracy {accuracy:.2%}")
    return fig


def per_class_accuracy(matrix: ArrayLike, class_names: Sequence[str]) -> Figure:
    """Accuracy of each true class (diagonal / row sum) as bars, overall accuracy as a line.

    Classes below the overall accuracy are drawn in red. The y axis starts below the worst class
    (not at 0) so that small differences between good classes stay visible; every bar is
    labelled with its value.

    Args:
      matrix: ``[K, K]`` confusion counts, ``matrix[true, predicted]``.
      class_names: name of each class index.
    """
    counts = np.asarray(matrix, dtype=np.float64)
    row_sums = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracies = np.where(row_sums > 0, np.diag(counts) / row_sums, np.nan)
    overall = np.trace(counts) / counts.sum() if counts.sum() else float("nan")
    num_classes = len(counts)
    fig = new_figure(max(7.0, 0.6 * num_classes + 2), 4.5)
    ax = fig.subplots()
    x = np.arange(num_classes)
    colors = [WRONG_COLOR if a < overall else TRAIN_COLOR for a in accuracies]
    bars = ax.bar(x, accuracies, color=colors)
    ax.bar_label(bars, labels=[f"{a:.1%}" for a in accuracies], padding=2, fontsize=8)
    line = ax.axhline(overall, color="0.2", ls="--", lw=1.2, label=f"overall {overall:.2%}")
    bottom = accuracy_floor(accuracies)
    ax.set_ylim(bottom, 1.0 + 0.08 * (1.0 - bottom))
    for column in np.flatnonzero(np.isnan(accuracies)):  # no example of the class: no bar
        ax.text(column, bottom, "n/a", ha="center", va="bottom", fontsize=8, color="0.4")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    names = [str(name) for name in class_names]
    ax.set_xticks(x, names)
    rotate_tick_labels(ax, names)
    ax.set_xlabel("true class")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy per class")
    handles = [
        line,
        Patch(color=TRAIN_COLOR, label="class at or above overall"),
        Patch(color=WRONG_COLOR, label="class below overall"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return fig


def reliability_diagram(
    bin_confidence: ArrayLike,
    bin_accuracy: ArrayLike,
    bin_counts: ArrayLike,
    *,
    ece: float | None = None,
    bin_edges: ArrayLike | None = None,
) -> Figure:
    """Calibration: accuracy against confidence per bin, with the diagonal of perfect calibration.

    Top panel: one bar per non-empty bin with the bin's accuracy, a hatched red bar for the gap to
    its mean confidence, and the diagonal. Bottom panel: how many predictions fall in each bin
    (log scale). Bins with zero count are left out of both.

    Args:
      bin_confidence: mean confidence of the predictions in each bin.
      bin_accuracy: accuracy of the predictions in each bin.
      bin_counts: number of predictions in each bin.
      ece: expected calibration error, shown in the title when given.
      bin_edges: the ``B + 1`` bin edges (default: ``B`` equal bins over [0, 1]).
    """
    confidence = np.asarray(bin_confidence, dtype=np.float64)
    accuracy = np.asarray(bin_accuracy, dtype=np.float64)
    counts = np.asarray(bin_counts, dtype=np.float64)
    num_bins = check_lengths(confidence=confidence, accuracy=accuracy, counts=counts)
    edges = (
        np.linspace(0.0, 1.0, num_bins + 1)
        if bin_edges is None
        else np.asarray(bin_edges, dtype=np.float64)
    )
    if len(edges) != num_bins + 1:
        raise ValueError(f"{num_bins} bins need {num_bins + 1} edges, got {len(edges)}")
    keep = counts > 0
    left, widths = edges[:-1][keep], np.diff(edges)[keep]
    fig = new_figure(6, 7)
    ax, count_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.bar(
        left,
        accuracy[keep],
        widths,
        align="edge",
        color=TRAIN_COLOR,
        edgecolor="black",
        lw=0.5,
        label="accuracy",
    )
    ax.bar(
        left,
        confidence[keep] - accuracy[keep],
        widths,
        bottom=accuracy[keep],
        align="edge",
        facecolor="none",
        hatch="//",
        edgecolor=WRONG_COLOR,
        lw=0.8,
        label="gap to mean confidence",
    )
    ax.plot([0, 1], [0, 1], ls="--", color="0.3", label="perfect calibration")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    title = "Reliability diagram"
    ax.set_title(title if ece is None else f"{title} — ECE {ece:.2%}")
    bars = count_ax.bar(
        left, counts[keep], widths, align="edge", color="0.6", edgecolor="black", lw=0.5
    )
    count_ax.bar_label(bars, labels=[f"{c:,.0f}" for c in counts[keep]], fontsize=7)
    if keep.any():
        count_ax.set_yscale("log")
        count_ax.set_ylim(top=counts.max() * 3)  # room for the labels
        count_ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
        count_ax.yaxis.set_minor_formatter(NullFormatter())
    count_ax.set_xlabel("confidence (top predicted probability)")
    count_ax.set_ylabel("predictions")
    count_ax.grid(alpha=0.3)
    return fig
