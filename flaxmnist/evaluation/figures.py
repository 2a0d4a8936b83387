"""Plots of data, training runs and trained models, as plain ``matplotlib`` figures.

Every function takes numpy arrays or plain Python lists (history records, confusion matrices,
softmax probabilities, kernels) and returns a new :class:`matplotlib.figure.Figure` built with the
object API: nothing touches pyplot's global state, nothing calls ``plt.show``. The figures render
headless (scripts, tests, CI) and display themselves inline in Jupyter and Colab when they are the
last expression of a cell; :func:`save_figure` writes one to disk.

Images are uint8 arrays ``[N, H, W, 1]`` or ``[N, H, W]``, shown in grayscale on the fixed 0–255
range so that a faint digit stays faint. Accuracies are fractions in [0, 1], shown as percentages.

Example::

    from flaxmnist.data import datasets
    from flaxmnist.evaluation import figures

    data = datasets.load_dataset("fashion_mnist")
    fig = figures.sample_grid(data.train.images, data.train.labels, data.class_names)
    figures.save_figure(fig, "plots/samples.png")
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter, PercentFormatter
from numpy.typing import ArrayLike

from flaxmnist.storage import files

__all__ = [
    "CORRECT_COLOR",
    "WRONG_COLOR",
    "ScoredImages",
    "ambiguous_images",
    "class_distribution",
    "confident_mistakes",
    "confusion_matrix_heatmap",
    "conv_kernels",
    "feature_maps",
    "model_comparison",
    "overlaid_curves",
    "per_class_accuracy",
    "prediction_grid",
    "reliability_diagram",
    "sample_grid",
    "save_figure",
    "step_loss_curve",
    "training_curves",
]

CORRECT_COLOR = "tab:green"  # title colour of a correct prediction
WRONG_COLOR = "tab:red"  # title colour of a wrong prediction
TRAIN_COLOR = "tab:blue"
VAL_COLOR = "tab:orange"
DEFAULT_DPI = 120

_MAX_GRID_COLUMNS = 8
_MAX_FIGURE_WIDTH = 18.0  # inches
_TITLE_FONT_SIZE = 8
_WRAP_TITLES_LONGER_THAN = 22  # characters; longer prediction titles go on two lines
_MAX_ANNOTATED_CLASSES = 30  # confusion matrices larger than this are not annotated
_MAX_EPOCH_LABELS = 30


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _new_figure(width: float, height: float) -> Figure:
    """A new pyplot-free figure with constrained (tight) layout."""
    return Figure(figsize=(min(width, _MAX_FIGURE_WIDTH), height), layout="constrained")


def _class_name(class_names: Sequence[str] | None, index: int) -> str:
    """The name of class ``index``, or the index itself when no name is known."""
    index = int(index)
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    return str(index)


def _as_display_images(images: ArrayLike) -> np.ndarray:
    """Images as ``[N, H, W]`` (grayscale) or ``[N, H, W, 3]`` (RGB) for ``imshow``."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (3, 4)):
        return images
    raise ValueError(f"expected images [N, H, W] or [N, H, W, C], got shape {images.shape}")


def _check_lengths(**arrays: Any) -> int:
    """The common leading length of the named arrays; ``ValueError`` when they disagree."""
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"length mismatch: {lengths}")
    return next(iter(lengths.values()))


def _as_probabilities(probabilities: ArrayLike, num: int) -> np.ndarray:
    """Softmax outputs as a float ``[N, K]`` array, checked against the number of images."""
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or len(probs) != num:
        raise ValueError(f"expected probabilities [{num}, num_classes], got shape {probs.shape}")
    return probs


def _grid_shape(num: int, max_columns: int = _MAX_GRID_COLUMNS) -> tuple[int, int]:
    """Rows and columns of a near-square grid of ``num`` cells."""
    columns = max(1, min(num, max_columns, math.ceil(math.sqrt(num))))
    return math.ceil(num / columns), columns


def _image_grid(
    images: np.ndarray,
    titles: Sequence[str],
    *,
    title_colors: Sequence[str] | None = None,
    suptitle: str | None = None,
    cmap: str = "gray",
    vmin: float | None = None,
    vmax: float | None = None,
    cell: float = 1.5,
    max_columns: int = _MAX_GRID_COLUMNS,
) -> tuple[Figure, list[AxesImage]]:
    """Lays out ``images`` in a near-square grid, one small title per image.

    uint8 images are drawn on the fixed 0–255 range unless ``vmin`` / ``vmax`` say otherwise.
    Returns the figure and the drawn images (for a colorbar).
    """
    images = _as_display_images(images)
    if not len(images):
        return _message_figure("No images to show.", suptitle or ""), []
    rows, columns = _grid_shape(len(images), max_columns)
    lines = [line for title in titles for line in title.split("\n")] or [""]
    title_lines = max(title.count("\n") + 1 for title in titles) if titles else 0
    # Widen the cells so that the longest title line fits (~0.6 em per character).
    cell_width = max(cell, 0.6 * _TITLE_FONT_SIZE / 72 * max(map(len, lines)) + 0.15)
    cell_height = cell + 0.18 * title_lines
    fig = _new_figure(columns * cell_width, rows * cell_height + (0.4 if suptitle else 0.0))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    if images.dtype == np.uint8 and vmin is None and vmax is None:
        vmin, vmax = 0, 255
    drawn = []
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= len(images):
            continue
        drawn.append(ax.imshow(images[i], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest"))
        color = title_colors[i] if title_colors is not None else "black"
        ax.set_title(titles[i], fontsize=_TITLE_FONT_SIZE, color=color)
    if suptitle:
        fig.suptitle(suptitle, fontsize=12)
    return fig, drawn


def _message_figure(message: str, title: str) -> Figure:
    """A small figure that says ``message`` (e.g. when there is nothing to plot)."""
    fig = _new_figure(5, 2)
    ax = fig.subplots()
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, transform=ax.transAxes)
    fig.suptitle(title, fontsize=12)
    return fig


def _prediction_titles(
    predicted: np.ndarray,
    confidence: np.ndarray,
    true: np.ndarray,
    class_names: Sequence[str] | None,
) -> list[str]:
    """``"pred P (conf%) / true T"`` per image; all on two lines when any would be too long."""
    titles = [
        f"pred {_class_name(class_names, p)} ({c:.0%}) / true {_class_name(class_names, t)}"
        for p, c, t in zip(predicted, confidence, true, strict=True)
    ]
    if any(len(title) > _WRAP_TITLES_LONGER_THAN for title in titles):
        titles = [title.replace(" / ", " /\n") for title in titles]
    return titles


def _rotate_tick_labels(ax: Axes, names: Sequence[str]) -> None:
    """Slants the x tick labels when class names are long or many."""
    if len(names) > 20:
        ax.tick_params(axis="x", labelrotation=90)
    elif max((len(str(name)) for name in names), default=0) > 3:
        ax.tick_params(axis="x", labelrotation=35)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")


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


def _accuracy_floor(values: np.ndarray) -> float:
    """A lower axis limit for accuracies that keeps differences near 100 % visible.

    Twice the worst error rate below the worst value (so 97 % starts the axis near 91 %), and 0
    as soon as the worst value is below about two thirds.
    """
    finite = values[np.isfinite(values)]
    worst = float(finite.min()) if finite.size else 0.0
    return max(0.0, worst - 2 * (1 - worst) - 0.01)


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


def _entropy(probabilities: np.ndarray) -> np.ndarray:
    """Predictive entropy (nats) of each row of ``probabilities``."""
    p = np.clip(probabilities, 1e-12, 1.0)
    return -(probabilities * np.log(p)).sum(axis=-1)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def sample_grid(
    images: ArrayLike,
    labels: ArrayLike,
    class_names: Sequence[str] | None,
    *,
    n: int = 25,
    seed: int = 0,
    title: str = "Random training samples",
) -> Figure:
    """Up to ``n`` images drawn at random (without replacement, seeded), titled by class name.

    Args:
      images: uint8 ``[N, H, W, 1]`` or ``[N, H, W]``.
      labels: integer class of each image ``[N]``.
      class_names: name of each class index (``None``: show indices).
      n: how many images to show.
      seed: seed of the random choice.
      title: figure title.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    num = _check_lengths(images=images, labels=labels)
    chosen = np.sort(np.random.default_rng(seed).choice(num, size=min(n, num), replace=False))
    titles = [_class_name(class_names, label) for label in labels[chosen]]
    fig, _ = _image_grid(images[chosen], titles, suptitle=title)
    return fig


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
    fig = _new_figure(max(7.0, 0.6 * num_classes + 2), 4.5)
    ax = fig.subplots()
    for offset, counts, split, color in (
        (-width / 2, train_counts[:num_classes], "train", TRAIN_COLOR),
        (width / 2, test_counts[:num_classes], "test", VAL_COLOR),
    ):
        label = f"{split} ({counts.sum():,} images)"
        ax.bar(x + offset, counts, width, label=label, color=color)
    ax.set_xticks(x, [str(name) for name in class_names])
    _rotate_tick_labels(ax, class_names)
    ax.set_xlabel("class")
    ax.set_ylabel("number of images")
    ax.set_title("Examples per class")
    ax.set_ylim(0, max(1, train_counts.max(initial=0), test_counts.max(initial=0)) * 1.15)
    ax.legend(loc="upper center", ncols=2, framealpha=0.9)
    ax.grid(axis="y", alpha=0.3)
    return fig


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


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
    fig = _new_figure(11, 4.2)
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
    num = _check_lengths(steps=steps, losses=losses)
    window = max(1, round(num / 50)) if smoothing is None else max(1, int(smoothing))
    fig = _new_figure(10, 4.2)
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
        _check_lengths(steps=steps, epochs=epochs)
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
    fig = _new_figure(8, 4.5)
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
    num = _check_lengths(names=names, accuracies=accuracies, losses=losses)
    fig = _new_figure(11, max(2.5, 0.45 * num + 1.5))
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
            left = _accuracy_floor(values)
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
    fig = _new_figure(max(8.0, 0.6 * len(classes) * max(len(runs), 1) / 2 + 3), 4.5)
    ax = fig.subplots()
    width = 0.8 / max(len(runs), 1)
    x = np.arange(len(classes))
    values = np.array([[per_class[r].get(c, np.nan) for c in classes] for r in runs])
    for i, run in enumerate(runs):
        ax.bar(x - 0.4 + (i + 0.5) * width, values[i], width, label=run)
    ax.set_ylim(_accuracy_floor(values.ravel()) if values.size else 0.0, 1.0)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_xticks(x, classes)
    _rotate_tick_labels(ax, classes)
    ax.set_ylabel("test accuracy (recall)")
    ax.set_title("Per-class accuracy by run")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return fig


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


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
    fig = _new_figure(size + 1.0, size)
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
    _rotate_tick_labels(ax, names)
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
    fig = _new_figure(max(7.0, 0.6 * num_classes + 2), 4.5)
    ax = fig.subplots()
    x = np.arange(num_classes)
    colors = [WRONG_COLOR if a < overall else TRAIN_COLOR for a in accuracies]
    bars = ax.bar(x, accuracies, color=colors)
    ax.bar_label(bars, labels=[f"{a:.1%}" for a in accuracies], padding=2, fontsize=8)
    line = ax.axhline(overall, color="0.2", ls="--", lw=1.2, label=f"overall {overall:.2%}")
    bottom = _accuracy_floor(accuracies)
    ax.set_ylim(bottom, 1.0 + 0.08 * (1.0 - bottom))
    for column in np.flatnonzero(np.isnan(accuracies)):  # no example of the class: no bar
        ax.text(column, bottom, "n/a", ha="center", va="bottom", fontsize=8, color="0.4")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    names = [str(name) for name in class_names]
    ax.set_xticks(x, names)
    _rotate_tick_labels(ax, names)
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


@dataclasses.dataclass(frozen=True)
class ScoredImages:
    """Images with their true labels and a model's predicted class probabilities.

    The input of the figures that show predictions (:func:`prediction_grid`,
    :func:`confident_mistakes`, :func:`ambiguous_images`). Arrays are converted and checked to
    describe the same examples when it is made.

    Attributes:
      images: uint8 ``[N, H, W, 1]`` or ``[N, H, W]``.
      labels: ``[N]`` true class of each image.
      probabilities: ``[N, K]`` predicted class probabilities (softmax outputs).
      class_names: name of each class index (``None``: show indices).

    Example::

        scored = figures.ScoredImages(test.images, test.labels, probabilities, class_names)
        figures.save_figure(figures.confident_mistakes(scored), "mistakes.png")
    """

    images: ArrayLike
    labels: ArrayLike
    probabilities: ArrayLike
    class_names: Sequence[str] | None = None

    def __post_init__(self) -> None:
        images, labels = np.asarray(self.images), np.asarray(self.labels)
        num = _check_lengths(images=images, labels=labels)
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "probabilities", _as_probabilities(self.probabilities, num))


def prediction_grid(scored: ScoredImages, *, n: int = 25) -> Figure:
    """The first ``n`` images titled ``"pred P (conf%) / true T"``: green if right, red if wrong.

    Args:
      scored: the images, their labels and predicted probabilities.
      n: how many images to show.
    """
    probs, labels = scored.probabilities[:n], scored.labels[:n]
    predicted = probs.argmax(axis=1)
    titles = _prediction_titles(predicted, probs.max(axis=1), labels, scored.class_names)
    colors = [
        CORRECT_COLOR if p == t else WRONG_COLOR for p, t in zip(predicted, labels, strict=True)
    ]
    suptitle = "Predictions"
    if len(labels):
        suptitle += f" ({np.mean(predicted == labels):.0%} of these {len(labels)} correct)"
    fig, _ = _image_grid(scored.images[:n], titles, title_colors=colors, suptitle=suptitle)
    return fig


def confident_mistakes(scored: ScoredImages, *, n: int = 16) -> Figure:
    """The ``n`` wrong predictions with the highest confidence, most confident first.

    Titled like :func:`prediction_grid` (all red). With no mistakes, a figure that says so.

    Args:
      scored: the images, their labels and predicted probabilities.
      n: how many mistakes to show.
    """
    probs, labels, num = scored.probabilities, scored.labels, len(scored.labels)
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    title = "Most confident mistakes"
    if not len(wrong):
        return _message_figure(f"No mistakes among {num:,} images.", title)
    chosen = wrong[np.argsort(-confidence[wrong], kind="stable")][:n]
    titles = _prediction_titles(
        predicted[chosen], confidence[chosen], labels[chosen], scored.class_names
    )
    suptitle = f"{title} ({len(chosen)} of {len(wrong):,} errors in {num:,} images)"
    colors = [WRONG_COLOR] * len(chosen)
    fig, _ = _image_grid(scored.images[chosen], titles, title_colors=colors, suptitle=suptitle)
    return fig


def ambiguous_images(scored: ScoredImages, *, n: int = 16) -> Figure:
    """The ``n`` images with the highest predictive entropy, most uncertain first.

    Each is titled with its two most probable classes and their probabilities, and its true class
    (green when the top class is right, red when wrong).

    Args:
      scored: the images, their labels and predicted probabilities.
      n: how many images to show.
    """
    probs, labels, names = scored.probabilities, scored.labels, scored.class_names
    chosen = np.argsort(-_entropy(probs), kind="stable")[:n]
    top2 = np.argsort(-probs[chosen], axis=1, kind="stable")[:, :2]
    titles, colors = [], []
    for index, (first, second) in zip(chosen, top2, strict=True):
        p = probs[index]
        titles.append(
            f"{_class_name(names, first)} {p[first]:.0%} · "
            f"{_class_name(names, second)} {p[second]:.0%}\n"
            f"true {_class_name(names, labels[index])}"
        )
        colors.append(CORRECT_COLOR if first == labels[index] else WRONG_COLOR)
    suptitle = "Most ambiguous images (highest predictive entropy): top-2 classes"
    fig, _ = _image_grid(scored.images[chosen], titles, title_colors=colors, suptitle=suptitle)
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
    num_bins = _check_lengths(confidence=confidence, accuracy=accuracy, counts=counts)
    edges = (
        np.linspace(0.0, 1.0, num_bins + 1)
        if bin_edges is None
        else np.asarray(bin_edges, dtype=np.float64)
    )
    if len(edges) != num_bins + 1:
        raise ValueError(f"{num_bins} bins need {num_bins + 1} edges, got {len(edges)}")
    keep = counts > 0
    left, widths = edges[:-1][keep], np.diff(edges)[keep]
    fig = Figure(figsize=(6, 7), layout="constrained")
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


# --------------------------------------------------------------------------------------------
# Model internals
# --------------------------------------------------------------------------------------------


def conv_kernels(
    kernel: ArrayLike, *, max_filters: int = 64, input_channel: int | None = 0
) -> Figure:
    """First-layer convolution kernels, one small image per output filter.

    Drawn on a colour map symmetric around 0 (red positive, blue negative) shared by all filters.

    Args:
      kernel: HWIO kernel ``[kh, kw, in, out]`` (as in Flax's ``Conv`` params).
      max_filters: show at most this many output filters.
      input_channel: which input channel to show (``None``: the mean over input channels).
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 4:
        raise ValueError(f"expected an HWIO kernel [kh, kw, in, out], got shape {kernel.shape}")
    weights = kernel.mean(axis=2) if input_channel is None else kernel[:, :, input_channel]
    weights = np.moveaxis(weights, -1, 0)[:max_filters]  # [filters, kh, kw]
    limit = float(np.abs(weights).max()) or 1.0
    which = (
        "mean over input channels" if input_channel is None else f"input channel {input_channel}"
    )
    suptitle = (
        f"Conv kernels {kernel.shape[0]}x{kernel.shape[1]} "
        f"({len(weights)} of {kernel.shape[3]} filters, {which})"
    )
    titles = [f"#{i}" for i in range(len(weights))]
    fig, drawn = _image_grid(
        weights, titles, suptitle=suptitle, cmap="RdBu_r", vmin=-limit, vmax=limit, cell=1.0
    )
    if drawn:
        fig.colorbar(drawn[0], ax=fig.axes, shrink=0.6, label="weight")
    return fig


def feature_maps(
    image: ArrayLike,
    activations: Sequence[tuple[str, ArrayLike]],
    *,
    max_channels: int = 16,
) -> Figure:
    """What a network sees: the input image, then one row of channels per layer.

    Each channel is drawn on its own colour range (viridis), so that weak channels stay visible.

    Args:
      image: one input image ``[H, W, 1]`` or ``[H, W]``.
      activations: ``(layer_name, array [H, W, C])`` per layer, in order.
      max_channels: show at most this many channels of each layer.
    """
    picture = _as_display_images(np.asarray(image)[None])[0]
    rows = 1 + len(activations)
    columns = max([1] + [min(max_channels, np.asarray(a).shape[-1]) for _, a in activations])
    cell = 1.1
    fig = _new_figure(max(4.0, columns * cell), rows * (cell + 0.35))
    subfigures = np.atleast_1d(fig.subfigures(rows, 1))
    input_fig = subfigures[0]
    ax = input_fig.subplots()
    vmin, vmax = (0, 255) if picture.dtype == np.uint8 else (None, None)
    ax.imshow(picture, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    input_fig.suptitle(f"input {'x'.join(map(str, np.asarray(image).shape))}", fontsize=10)
    for subfigure, (name, activation) in zip(subfigures[1:], activations, strict=True):
        activation = np.asarray(activation, dtype=np.float64)
        if activation.ndim != 3:
            raise ValueError(f"{name}: expected activations [H, W, C], got {activation.shape}")
        shown = min(max_channels, activation.shape[-1])
        axes = subfigure.subplots(1, columns, squeeze=False).ravel()
        for channel, ax in enumerate(axes):
            ax.set_axis_off()
            if channel < shown:
                ax.imshow(activation[..., channel], cmap="viridis", interpolation="nearest")
                ax.set_title(f"ch {channel}", fontsize=7)
        height, width, channels = activation.shape
        subfigure.suptitle(
            f"{name}: {height}x{width}x{channels} (first {shown} channels)", fontsize=10
        )
    return fig


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def save_figure(fig: Figure, path: str | Path, *, dpi: int = DEFAULT_DPI) -> Path:
    """Writes ``fig`` to ``path`` (PNG unless the suffix names another format), atomically.

    Parent folders are created. Touches no pyplot state and leaves the figure usable.

    Returns:
      The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = io.BytesIO()
    fig.savefig(image, dpi=dpi, format=path.suffix[1:].lower() or "png", facecolor="white")
    files.write_bytes_atomic(path, image.getvalue())
    return path
