"""Inside a convolutional model: its first-layer kernels and the feature maps of an image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from flaxmnist.evaluation.figures.common import new_figure
from flaxmnist.evaluation.figures.image_grids import as_display_images, image_grid


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
    fig, drawn = image_grid(
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
    picture = as_display_images(np.asarray(image)[None])[0]
    rows = 1 + len(activations)
    columns = max([1] + [min(max_channels, np.asarray(a).shape[-1]) for _, a in activations])
    cell = 1.1
    fig = new_figure(max(4.0, columns * cell), rows * (cell + 0.35))
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
