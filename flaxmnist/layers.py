"""Convolution and max-pooling layers that are fast on XLA:CPU.

XLA:CPU lowers the gradient of ``reduce_window`` max-pooling to ``select_and_scatter``, which is
slow, and runs ``conv_general_dilated`` well below matmul speed for the small MNIST shapes. This
module provides drop-in replacements:

* :func:`max_pool` — non-overlapping max-pooling with a custom VJP that routes the gradient to the
  first maximum of each window (the same subgradient ``select_and_scatter`` picks);
* :func:`conv2d` — a 2-D convolution computed either by ``lax.conv_general_dilated`` (``"xla"``) or
  as im2col + one matmul (``"im2col"``);
* :class:`Conv` — a Linen module with the same parameters as ``flax.linen.Conv`` (``kernel`` HWIO
  and ``bias``) whose implementation is a config switch; ``"auto"`` picks im2col on CPU and the
  native convolution on GPU/TPU.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

CONV_IMPLS = ("auto", "xla", "im2col")
POOL_IMPLS = ("auto", "xla", "fast")


def resolve_impl(impl: str, valid: Sequence[str], cpu_choice: str) -> str:
    """Turns ``"auto"`` into a concrete implementation for the default backend."""
    if impl not in valid:
        raise ValueError(f"unknown implementation {impl!r}; valid: {', '.join(valid)}")
    if impl != "auto":
        return impl
    return cpu_choice if jax.default_backend() == "cpu" else "xla"


def _window_slices(x: jax.Array, window: int) -> list[jax.Array]:
    """The ``window**2`` strided views of NHWC ``x``, one per position inside a pooling window.

    Each view has the pooled shape; trailing rows/columns that do not fill a window are dropped.
    """
    ho, wo = x.shape[1] // window, x.shape[2] // window
    return [
        x[:, di : di + ho * window : window, dj : dj + wo * window : window, :]
        for di in range(window)
        for dj in range(window)
    ]


def _max_pool_forward(x: jax.Array, window: int) -> jax.Array:
    return functools.reduce(jnp.maximum, _window_slices(x, window))


def _max_pool_fast_fwd(x: jax.Array, window: int):
    out = _max_pool_forward(x, window)
    return out, (x, out)


def _max_pool_fast_bwd(window: int, residuals, g: jax.Array):
    x, out = residuals
    n, h, w, c = x.shape
    ho, wo = out.shape[1], out.shape[2]
    zero = jnp.zeros((), g.dtype)
    taken = jnp.zeros(out.shape, bool)
    grads = []
    # Route the gradient to the first maximum of each window, as select_and_scatter does.
    for view in _window_slices(x, window):
        is_first_max = (view == out) & ~taken
        taken = taken | is_first_max
        grads.append(jnp.where(is_first_max, g, zero))
    dx = jnp.stack(grads, axis=-1).reshape(n, ho, wo, c, window, window)
    dx = dx.transpose(0, 1, 4, 2, 5, 3).reshape(n, ho * window, wo * window, c)
    dx = jnp.pad(dx, ((0, 0), (0, h - ho * window), (0, w - wo * window), (0, 0)))
    return (dx,)


_max_pool_fast = jax.custom_vjp(_max_pool_forward, nondiff_argnums=(1,))
_max_pool_fast.defvjp(_max_pool_fast_fwd, _max_pool_fast_bwd)


def max_pool(x: jax.Array, window: int = 2, *, impl: str = "auto") -> jax.Array:
    """Non-overlapping ``window``×``window`` max-pooling of NHWC ``x`` with 'VALID' padding.

    Trailing rows/columns that do not fill a window are dropped, like Keras ``MaxPooling2D``.
    ``impl="fast"`` uses the custom VJP; ``"xla"`` uses ``flax.linen.max_pool``.
    """
    impl = resolve_impl(impl, POOL_IMPLS, cpu_choice="fast")
    if impl == "fast":
        return _max_pool_fast(x, window)
    return nn.max_pool(x, (window, window), strides=(window, window), padding="VALID")


def _im2col(x: jax.Array, kh: int, kw: int, padding: str) -> jax.Array:
    """Returns the (kh, kw, C) patches of NHWC ``x`` as [N, H', W', kh*kw*C] (stride 1)."""
    if padding == "SAME":
        ph, pw = kh - 1, kw - 1
        x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    _n, h, w, _c = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    patches = [x[:, i : i + ho, j : j + wo, :] for i in range(kh) for j in range(kw)]
    return jnp.concatenate(patches, axis=-1)


def conv2d(
    x: jax.Array, kernel: jax.Array, *, padding: str = "VALID", impl: str = "auto"
) -> jax.Array:
    """Stride-1 2-D convolution of NHWC ``x`` with an HWIO ``kernel`` (no bias).

    ``impl="im2col"`` gathers patches and runs one matmul; ``"xla"`` uses
    ``lax.conv_general_dilated``. Both give the same values and gradients.
    """
    impl = resolve_impl(impl, CONV_IMPLS, cpu_choice="im2col")
    if padding not in ("VALID", "SAME"):
        raise ValueError(f"padding must be 'VALID' or 'SAME', got {padding!r}")
    if impl == "xla":
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(1, 1),
            padding=padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    kh, kw, cin, cout = kernel.shape
    patches = _im2col(x, kh, kw, padding)
    return patches @ kernel.reshape(kh * kw * cin, cout)


class Conv(nn.Module):
    """Stride-1 convolution with ``flax.linen.Conv``'s parameters and a selectable backend."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    padding: str = "VALID"
    impl: str = "auto"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the convolution and adds the bias."""
        kh, kw = self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.glorot_uniform(), (kh, kw, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return conv2d(x, kernel, padding=self.padding, impl=self.impl) + bias
