"""Training runs: loss and accuracy per epoch, loss per step, and several runs side by side.

History records are the per-epoch dicts of ``history.json`` (``epoch``, ``train_loss``,
``train_accuracy`` and optionally ``val_loss``, ``val_accuracy``). Accuracies are fractions in
[0, 1], shown as percentages.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter
from numpy.typing import ArrayLike

from flaxmnist.evaluation.figures.common import (
    TRAIN_COLOR,
    VAL_COLOR,
    accuracy_floor,
    check_lengths,
    new_figure,
    rotate_tick_labels,
)

_MAX_EPOCH_LABELS = 30


def _moving_average(values: ArrayLike, window: int) -> np.ndarray:
    """Centred moving average over ``window`` points, shrinking at the ends and skipping NaNs."""
    values = np.asarray(values, dtype=np.float64)
    num = len(values)
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    first = np.arange(num) - window // 2  # window of point i: [first, first + window)
    start, stop = np.clip(first, 0, num), np.clip(first + window, 0, num)
    total, count = sums[stop] - sums[start], counts[stop] - counts[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and values of ``key`` over the history records that have it."""
    points = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
    if not points:
        return np.zeros(0), np.zeros(0)
    epochs, values = zip(*points, strict=True)
    return np.asarray(epochs, dtype=np.float64), np.asarray(values, dtype=np.float64)


def _pretty(key: str) -> str:
    """``"val_accuracy"`` → ``"validation accuracy"``."""
    return key.replace("val_", "validation ").replace("_", " ")


def training_curves(
    history: Sequence[Mapping[str, Any]], *, best_epoch: int | None = None
) -> Figure:
    """Loss and accuracy per epoch, train (solid) against validation (dashed), side by side.

    Args:
      history: one record per epoch with ``epoch``, ``train_loss``, ``train_accuracy`` and
        optionally ``val_loss``, ``val_accuracy`` (as written to ``history.json``).
      best_epoch: an epoch to mark with a vertical line on both panels (e.g. the best checkpoint).
    """
    if not history:
        raise ValueError("history is empty")
    fig = new_figure(11, 4.2)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        for split, color, style in (("train", TRAIN_COLOR, "-"), ("val", VAL_COLOR, "--")):
            epochs, values = _series(history, f"{split}_{metric}")
            if len(values):
                label = "train" if split == "train" else "validation"
                ax.plot(epochs, values, style, marker="o", ms=4, color=color, label=label)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="0.4", ls=":", lw=1.5, label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric.capitalize())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    acc_ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    fig.suptitle("Training curves", fontsize=12)
    return fig


def step_loss_curve(
    steps: ArrayLike,
    losses: ArrayLike,
    *,
    epochs: ArrayLike | None = None,
    smoothing: int | None = None,
    log_scale: bool = False,
) -> Figure:
    """The training loss at every step: raw values (faint) and a centred moving average.

    Args:
      steps: global step of each loss value.
      losses: training loss of each step (NaNs are skipped by the average).
      epochs: epoch number of each step; boundaries between epochs get a vertical line.
      smoothing: moving-average window in steps (``None``: about 2 % of the steps).
      log_scale: use a logarithmic loss axis.
    """
    steps = np.asarray(steps, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    num = check_lengths(steps=steps, losses=losses)
    window = max(1, round(num / 50)) if smoothing is None else max(1, int(smoothing))
    fig = new_figure(10, 4.2)
    ax = fig.subplots()
    ax.plot(steps, losses, color=TRAIN_COLOR, alpha=0.25, lw=0.8, label="loss per step")
    ax.plot(
        steps,
        _moving_average(losses, window),
        color=TRAIN_COLOR,
        lw=2,
        label=f"moving average ({window} steps)",
    )
    if epochs is not None:
        epochs = np.asarray(epochs)
        check_lengths(steps=steps, epochs=epochs)
        starts = np.flatnonzero(epochs[1:] != epochs[:-1]) + 1
        for i in starts:
            ax.axvline((steps[i - 1] + steps[i]) / 2, color="0.5", ls=":", lw=1)
        if len(starts) + 1 <= _MAX_EPOCH_LABELS:
            bounds = [0, *starts.tolist(), num]
            transform = ax.get_xaxis_transform()
            for lo, hi in itertools.pairwise(bounds):
                middle = (steps[lo] + steps[hi - 1]) / 2
                ax.text(
                    middle,
                    0.98,
                    f"epoch {epochs[lo]}",
                    transform=transform,
                    ha="center",
                    va="top",
                    fontsize=8,
                    color="0.35",
                )
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss per step")
    ax.grid(alpha=0.3)
    ax.legend(loc="center right")
    return fig


def overlaid_curves(
    curves: Mapping[str, Sequence[Mapping[str, Any]]], *, metric: str = "val_accuracy"
) -> Figure:
    """One history metric per epoch for several runs on one axis, the best epoch of each dotted.

    Args:
      curves: run name → its history records.
      metric: the history field to plot (``val_accuracy``, ``train_loss``, ...); runs without it
        are left out.
    """
    fig = new_figure(8, 4.5)
    ax = fig.subplots()
    higher_is_better = "accuracy" in metric
    skipped = []
    for name, history in curves.items():
        epochs, values = _series(history, metric)
        if not len(values):
            skipped.append(str(name))
            continue
        (line,) = ax.plot(epochs, values, marker="o", ms=3, label=str(name))
        best = int(np.nanargmax(values) if higher_is_better else np.nanargmin(values))
        ax.plot(epochs[best], values[best], "o", ms=9, mfc="none", color=line.get_color())
    if len(skipped) == len(curves):
        raise ValueError(f"no run has {metric!r} in its history")
    if higher_is_better:
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(_pretty(metric))
    ax.set_title(f"{_pretty(metric).capitalize()} by run (circle: best epoch)")
    ax.grid(alpha=0.3)
    note = f"not plotted (no {metric}): {', '.join(skipped)}" if skipped else None
    ax.legend(fontsize=8, title=note, title_fontsize=7)
    return fig


def model_comparison(names: Sequence[str], accuracies: ArrayLike, losses: ArrayLike) -> Figure:
    """Test accuracy and test loss of several runs as two side-by-side horizontal bar charts.

    The best run of each panel (highest accuracy, lowest loss) is highlighted.

    Args:
      names: run names.
      accuracies: test accuracy of each run, as a fraction.
      losses: test loss of each run.
    """
    accuracies = np.asarray(accuracies, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    num = check_lengths(names=names, accuracies=accuracies, losses=losses)
    fig = new_figure(11, max(2.5, 0.45 * num + 1.5))
    acc_ax, loss_ax = fig.subplots(1, 2, sharey=True)
    y = np.arange(num)
    panels = (
        (acc_ax, accuracies, int(np.nanargmax(accuracies)), "test accuracy", "{:.2%}"),
        (loss_ax, losses, int(np.nanargmin(losses)), "test loss", "{:.4f}"),
    )
    for ax, values, best, label, fmt in panels:
        colors = ["0.65"] * num
        colors[best] = "tab:green"
        bars = ax.barh(y, values, color=colors)
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=3, fontsize=8)
        ax.set_xlabel(label)
        ax.set_title(f"{label.capitalize()} (best in green)")
        if ax is acc_ax:
            left = accuracy_floor(values)
            ax.set_xlim(left, 1.0 + 0.15 * (1.0 - left))
        else:
            ax.set_xlim(0, np.nanmax(values) * 1.2 if np.nanmax(values) > 0 else 1)
        ax.grid(axis="x", alpha=0.3)
    acc_ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    acc_ax.set_yticks(y, [str(name) for name in names])
    acc_ax.invert_yaxis()  # first run on top
    fig.suptitle("Model comparison", fontsize=12)
    return fig


def per_class_comparison(per_class: Mapping[str, Mapping[str, float]]) -> Figure:
    """Per-class accuracy (recall) of several runs as grouped bars, one group per class.

    Args:
      per_class: run name → {class name: accuracy as a fraction}; classes from the first run.
    """
    runs = list(per_class)
    classes = list(next(iter(per_class.values()))) if runs else []
    fig = new_figure(max(8.0, 0.6 * len(classes) * max(len(runs), 1) / 2 + 3), 4.5)
    ax = fig.subplots()
    width = 0.8 / max(len(runs), 1)
    x = np.arange(len(classes))
    values = np.array([[per_class[r].get(c, np.nan) for c in classes] for r in runs])
    for i, run in enumerate(runs):
        ax.bar(x - 0.4 + (i + 0.5) * width, values[i], width, label=run)
    ax.set_ylim(accuracy_floor(values.ravel()) if values.size else 0.0, 1.0)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_xticks(x, classes)
    rotate_tick_labels(ax, classes)
    ax.set_ylabel("test accuracy (recall)")
    ax.set_title("Per-class accuracy by run")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return fig
