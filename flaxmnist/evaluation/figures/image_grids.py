"""Grids of images: random samples, predictions, the most confident mistakes, ambiguous images.

Images are uint8 arrays ``[N, H, W, 1]`` or ``[N, H, W]``, shown in grayscale on the fixed 0–255
range so that a faint digit stays faint. :func:`image_grid` lays out any such set (also used for
conv kernels in :mod:`~flaxmnist.evaluation.figures.internals`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from numpy.typing import ArrayLike

from flaxmnist.evaluation.figures.common import (
    CORRECT_COLOR,
    WRONG_COLOR,
    check_lengths,
    class_name,
    message_figure,
    new_figure,
)

_MAX_GRID_COLUMNS = 8
_TITLE_FONT_SIZE = 8
_WRAP_TITLES_LONGER_THAN = 22  # characters; longer prediction titles go on two lines


def as_display_images(images: ArrayLike) -> np.ndarray:
    """Images as ``[N, H, W]`` (grayscale) or ``[N, H, W, 3]`` (RGB) for ``imshow``."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (3, 4)):
        return images
    raise ValueError(f"expected images [N, H, W] or [N, H, W, C], got shape {images.shape}")


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


def image_grid(
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
    images = as_display_images(images)
    if not len(images):
        return message_figure("No images to show.", suptitle or ""), []
    rows, columns = _grid_shape(len(images), max_columns)
    lines = [line for title in titles for line in title.split("\n")] or [""]
    title_lines = max(title.count("\n") + 1 for title in titles) if titles else 0
    # Widen the cells so that the longest title line fits (~0.6 em per character).
    cell_width = max(cell, 0.6 * _TITLE_FONT_SIZE / 72 * max(map(len, lines)) + 0.15)
    cell_height = cell + 0.18 * title_lines
    fig = new_figure(columns * cell_width, rows * cell_height + (0.4 if suptitle else 0.0))
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


def _prediction_titles(
    predicted: np.ndarray,
    confidence: np.ndarray,
    true: np.ndarray,
    class_names: Sequence[str] | None,
) -> list[str]:
    """``"pred P (conf%) / true T"`` per image; all on two lines when any would be too long."""
    titles = [
        f"pred {class_name(class_names, p)} ({c:.0%}) / true {class_name(class_names, t)}"
        for p, c, t in zip(predicted, confidence, true, strict=True)
    ]
    if any(len(title) > _WRAP_TITLES_LONGER_THAN for title in titles):
        titles = [title.replace(" / ", " /\n") for title in titles]
    return titles


def _entropy(probabilities: np.ndarray) -> np.ndarray:
    """Predictive entropy (nats) of each row of ``probabilities``."""
    p = np.clip(probabilities, 1e-12, 1.0)
    return -(probabilities * np.log(p)).sum(axis=-1)


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
    num = check_lengths(images=images, labels=labels)
    chosen = np.sort(np.random.default_rng(seed).choice(num, size=min(n, num), replace=False))
    titles = [class_name(class_names, label) for label in labels[chosen]]
    fig, _ = image_grid(images[chosen], titles, suptitle=title)
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
        num = check_lengths(images=images, labels=labels)
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
    fig, _ = image_grid(scored.images[:n], titles, title_colors=colors, suptitle=suptitle)
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
        return message_figure(f"No mistakes among {num:,} images.", title)
    chosen = wrong[np.argsort(-confidence[wrong], kind="stable")][:n]
    titles = _prediction_titles(
        predicted[chosen], confidence[chosen], labels[chosen], scored.class_names
    )
    suptitle = f"{title} ({len(chosen)} of {len(wrong):,} errors in {num:,} images)"
    colors = [WRONG_COLOR] * len(chosen)
    fig, _ = image_grid(scored.images[chosen], titles, title_colors=colors, suptitle=suptitle)
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
            f"{class_name(names, first)} {p[first]:.0%} · "
            f"{class_name(names, second)} {p[second]:.0%}\n"
            f"true {class_name(names, labels[index])}"
        )
        colors.append(CORRECT_COLOR if first == labels[index] else WRONG_COLOR)
    suptitle = "Most ambiguous images (highest predictive entropy): top-2 classes"
    fig, _ = image_grid(scored.images[chosen], titles, title_colors=colors, suptitle=suptitle)
    return fig
