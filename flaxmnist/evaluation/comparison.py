"""Trained runs side by side, like the reference notebooks' ANN vs CNN vs deeper-CNN comparison.

Test accuracy and loss, parameter counts, training time, per-class accuracy and validation curves
(training curves when no run held out validation data).

:func:`compare` writes ``comparison.csv``, ``comparison.md`` and four figures; runs without
``eval/metrics.json`` are scored on the fly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flaxmnist.errors import FlaxmnistError
from flaxmnist.evaluation import evaluator, figures
from flaxmnist.storage import files

COLUMNS = (
    "run",
    "model",
    "dataset",
    "params",
    "epochs",
    "test_accuracy",
    "test_loss",
    "final_val_accuracy",
    "train_time_s",
)


def load_summary(
    workdir: Path, *, allow_plugins: bool = False
) -> tuple[dict[str, Any], list[dict], dict[str, float]]:
    """(table row, history, per-class accuracy) of one run (``allow_plugins``: see load_run)."""
    metrics_file = workdir / "metrics.json"
    if not metrics_file.exists():
        raise FlaxmnistError(f"{workdir} has no metrics.json (not a finished run)")
    trained = json.loads(metrics_file.read_text())
    eval_file = workdir / "eval" / "metrics.json"
    if eval_file.exists():
        evaluation = json.loads(eval_file.read_text())
    else:
        evaluation = evaluator.predict_test(workdir, allow_plugins=allow_plugins)[3]
    history = json.loads((workdir / "history.json").read_text())
    row = {
        "run": workdir.name,
        "model": trained["model"],
        "dataset": trained["dataset"],
        "params": trained["num_params"],
        "epochs": trained.get("epochs_completed"),
        "test_accuracy": trained["test_accuracy"],
        "test_loss": trained["test_loss"],
        "final_val_accuracy": trained.get("final_val_accuracy"),
        "train_time_s": trained.get("train_time_s"),
    }
    per_class = {name: scores["recall"] for name, scores in evaluation["per_class"].items()}
    return row, history, per_class


def markdown(rows: list[dict[str, Any]]) -> str:
    """The comparison as a markdown table."""

    def cell(value: Any) -> str:
        if value is None:  # a run without validation data has no final_val_accuracy
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def curve_metric(histories: Iterable[list[dict]], kind: str) -> str:
    """``val_<kind>`` when any of the runs held out validation data, else ``train_<kind>``."""
    validated = any(f"val_{kind}" in record for history in histories for record in history)
    return f"val_{kind}" if validated else f"train_{kind}"


def compare(
    workdirs: list[Path], out: Path, *, allow_plugins: bool = False
) -> list[dict[str, Any]]:
    """Writes the comparison files and figures; returns the table rows.

    ``allow_plugins``: see :func:`flaxmnist.load_run` (used for runs scored on the fly).
    """
    summaries = [load_summary(w, allow_plugins=allow_plugins) for w in workdirs]
    rows = [s[0] for s in summaries]
    out.mkdir(parents=True, exist_ok=True)
    files.write_csv_atomic(out / "comparison.csv", rows)
    files.write_text_atomic(out / "comparison.md", markdown(rows))
    names = [r["run"] for r in rows]
    figures.save_figure(
        figures.model_comparison(
            names, [r["test_accuracy"] for r in rows], [r["test_loss"] for r in rows]
        ),
        out / "model_comparison.png",
    )
    curves = {r["run"]: history for r, (_, history, _) in zip(rows, summaries, strict=True)}
    for kind in ("accuracy", "loss"):
        metric = curve_metric(curves.values(), kind)
        figures.save_figure(
            figures.overlaid_curves(curves, metric=metric), out / f"{metric}_curves.png"
        )
    per_class = {r["run"]: s[2] for r, s in zip(rows, summaries, strict=True)}
    figures.save_figure(figures.per_class_comparison(per_class), out / "per_class.png")
    return rows
