"""What every figure shares: colours and sizes, figure creation, class names, the atomic save.

The one place that makes a :class:`~matplotlib.figure.Figure` (:func:`new_figure`, object API, no
pyplot) and the one place that writes one to disk (:func:`save_figure`, atomically).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from flaxmnist.storage import files

CORRECT_COLOR = "tab:green"  # title colour of a correct prediction
WRONG_COLOR = "tab:red"  # title colour of a wrong prediction
TRAIN_COLOR = "tab:blue"
VAL_COLOR = "tab:orange"
DEFAULT_DPI = 120

MAX_FIGURE_WIDTH = 18.0  # inches


def new_figure(width: float, height: float) -> Figure:
    """A new pyplot-free figure with constrained (tight) layout, at most 18 inches wide."""
    return Figure(figsize=(min(width, MAX_FIGURE_WIDTH), height), layout="constrained")


def message_figure(message: str, title: str) -> Figure:
    """A small figure that says ``message`` (e.g. when there is nothing to plot)."""
    fig = new_figure(5, 2)
    ax = fig.subplots()
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, transform=ax.transAxes)
    fig.suptitle(title, fontsize=12)
    return fig


def class_name(class_names: Sequence[str] | None, index: int) -> str:
    """The name of class ``index``, or the index itself when no name is known."""
    index = int(index)
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    return str(index)


def check_lengths(**arrays: Any) -> int:
    """The common leading length of the named arrays; ``ValueError`` when they disagree."""
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"length mismatch: {lengths}")
    return next(iter(lengths.values()))


def rotate_tick_labels(ax: Axes, names: Sequence[str]) -> None:
    """Slants the x tick labels when class names are long or many."""
    if len(names) > 20:
        ax.tick_params(axis="x", labelrotation=90)
    elif max((len(str(name)) for name in names), default=0) > 3:
        ax.tick_params(axis="x", labelrotation=35)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")


def accuracy_floor(values: np.ndarray) -> float:
    """A lower axis limit for accuracies that keeps differences near 100 % visible.

    Twice the worst error rate below the worst value (so 97 % starts the axis near 91 %), and 0
    as soon as the worst value is below about two thirds.
    """
    finite = values[np.isfinite(values)]
    worst = float(finite.min()) if finite.size else 0.0
    return max(0.0, worst - 2 * (1 - worst) - 0.01)


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
