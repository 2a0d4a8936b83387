"""Convolution and max-pooling layers that are fast on XLA:CPU.

XLA:CPU lowers the gradient of ``reduce_window`` max-pooling to ``select_and_scatter``, which is
slow, and runs ``conv_general_dilated`` well below matmul speed for the small MNIST shapes. This
module provides drop-in replacements:

* :func:`max_pool` — non-overlapping max-pooling with a custom VJP that routes the gradient to the
  first maximum of each window (the same subgradient ``select_and_scatter`` picks);
* :func:`conv2d` — a 2-D convolution computed either by ``lax.conv_general_dilated`` (``"xla"``) or
  as im2col + matmul (``"im2col"``): patches from one gather, a custom VJP whose weight gradient is
  one matmul, and a loop over batch chunks so large layers keep their temporaries small;
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
import numpy as np

from flaxmnist import config_validation

CONV_IMPLS = config_validation.CONV_IMPLS
POOL_IMPLS = config_validation.POOL_IMPLS


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
    return nn.max_pool(x, window_shape=(window, window), strides=(window, window), padding="VALID")


# Bytes of patch matrix per batch chunk: on small CPUs, touching fresh memory is slow, so large
# layers run as a loop over batch chunks whose temporaries stay a few MiB and are reused.
CHUNK_BYTES = 4 * 1024 * 1024
# Outputs this small (per image) get dx by col2im; larger ones by a transposed convolution.
COL2IM_MAX_PIXELS = 16


def _patch_indices(h: int, w: int, kh: int, kw: int) -> np.ndarray:
    """Flat spatial indices [H'*W'*kh*kw] of every (output pixel, kernel tap) pair."""
    rows = np.arange(h - kh + 1)[:, None, None, None] + np.arange(kh)[None, None, :, None]
    cols = np.arange(w - kw + 1)[None, :, None, None] + np.arange(kw)[None, None, None, :]
    return (rows * w + cols).reshape(-1).astype(np.int32)


def _patches(x: jax.Array, kh: int, kw: int) -> jax.Array:
    """im2col of NHWC ``x`` ('VALID', stride 1) as [N, H', W', kh*kw*C], in HWIO tap order.

    One gather over the flattened spatial axis: XLA:CPU runs it several times faster than a
    concatenate of the kh*kw shifted slices.
    """
    n, h, w, c = x.shape
    flat = x.reshape(n, h * w, c)
    patches = flat.at[:, _patch_indices(h, w, kh, kw)].get(
        mode="promise_in_bounds", indices_are_sorted=True
    )
    return patches.reshape(n, h - kh + 1, w - kw + 1, kh * kw * c)


def _matmul(a: jax.Array, b: jax.Array, dtype) -> jax.Array:
    """``a @ b`` over the last axis of ``a``, accumulated in float32, cast to ``dtype``."""
    dims = (((a.ndim - 1,), (0,)), ((), ()))
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32).astype(dtype)


# Kernels with at most this many taps × input channels (a first layer on grey images: 3×3×1)
# whose output is larger than the cache-sized chunk run forward as a sum of shifted copies: a
# matmul with so short a contraction is bound by writing its output, and the sum fuses with the
# layer's bias and activation. MNIST's first layer, [128, 28, 28, 1] -> 32 channels: 0.77 ms vs
# 4.99 ms (AMD EPYC); at batch 32 (2.8 MB of output) the matmul is as fast, and its training
# step faster.
SHIFTED_SUM_MAX_TAPS = 16
SHIFTED_SUM_MIN_OUTPUT_BYTES = CHUNK_BYTES


def _conv_valid_forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
    kh, kw, cin, cout = kernel.shape
    n, h, w, _ = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    output_bytes = n * ho * wo * cout * x.dtype.itemsize
    if kh * kw * cin <= SHIFTED_SUM_MAX_TAPS and output_bytes > SHIFTED_SUM_MIN_OUTPUT_BYTES:
        taps = (
            (x[:, i : i + ho, j : j + wo, :, None] * kernel[i, j]).sum(axis=-2)
            for i in range(kh)
            for j in range(kw)
        )
        return functools.reduce(jnp.add, taps).astype(x.dtype)
    return _matmul(_patches(x, kh, kw), kernel.reshape(kh * kw * cin, cout), x.dtype)


def _conv_valid_fwd(x: jax.Array, kernel: jax.Array):
    # Keep x, not the patches: recomputing them in the backward pass is cheaper than storing.
    return _conv_valid_forward(x, kernel), (x, kernel)


def _conv_valid_bwd(residuals, g: jax.Array):
    x, kernel = residuals
    kh, kw, cin, cout = kernel.shape
    n, ho, wo, _ = g.shape
    # dW = (dy^T @ patches)^T: one matmul (autodiff would emit a slow weight-gradient
    # convolution). Flattened to 2-D first: XLA:CPU runs a dot that contracts the three leading
    # axes of 4-D operands 2-3x slower than the same dot on [N*H'*W', K] matrices.
    patches = _patches(x, kh, kw).reshape(-1, kh * kw * cin)
    dw = _matmul(g.reshape(-1, cout).T, patches, jnp.float32).T
    dw = dw.reshape(kernel.shape).astype(kernel.dtype)
    if ho * wo <= COL2IM_MAX_PIXELS:  # col2im: dpatches = dy @ W^T, then add the taps back
        dp = _matmul(g, kernel.reshape(kh * kw * cin, cout).T, jnp.float32)
        dp = dp.reshape(n, ho, wo, kh, kw, cin)
        dx = sum(
            jnp.pad(dp[:, :, :, i, j, :], ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j), (0, 0)))
            for i in range(kh)
            for j in range(kw)
        )
    else:  # transposed convolution: 'full' correlation of dy with the flipped kernel
        flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)
        dx = jax.lax.conv_general_dilated(
            g,
            flipped,
            (1, 1),
            ((kh - 1, kh - 1), (kw - 1, kw - 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            preferred_element_type=jnp.float32,
        )
    return dx.astype(x.dtype), dw


_conv_valid = jax.custom_vjp(_conv_valid_forward)
_conv_valid.defvjp(_conv_valid_fwd, _conv_valid_bwd)


def batch_chunk(batch: int, per_image_bytes: int, chunk_bytes: int) -> int:
    """Images per chunk so that one chunk's patches fit in ``chunk_bytes``.

    A divisor of ``batch`` is preferred when one at least half the size limit exists.
    """
    limit = max(1, chunk_bytes // max(per_image_bytes, 1))
    if batch <= limit:
        return batch
    divisor = max(d for d in range(1, limit + 1) if batch % d == 0)
    return divisor if 2 * divisor >= limit else limit


def _conv_im2col(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'VALID' im2col convolution, looping over batch chunks when the patches are large."""
    kh, kw, cin, _ = kernel.shape
    n, h, w, _ = x.shape
    per_image = (h - kh + 1) * (w - kw + 1) * kh * kw * cin * x.dtype.itemsize
    chunk = batch_chunk(n, per_image, CHUNK_BYTES)
    if chunk == n:
        return _conv_valid(x, kernel)
    full = n - n % chunk
    chunks = x[:full].reshape(full // chunk, chunk, h, w, cin)
    y = jax.lax.map(lambda xc: _conv_valid(xc, kernel), chunks)
    y = y.reshape(full, *y.shape[2:])
    if full < n:  # the images left over after the full chunks
        y = jnp.concatenate([y, _conv_valid(x[full:], kernel)])
    return y


def conv2d(
    x: jax.Array, kernel: jax.Array, *, padding: str = "VALID", impl: str = "auto"
) -> jax.Array:
    """Stride-1 2-D convolution of NHWC ``x`` with an HWIO ``kernel`` (no bias).

    ``impl="im2col"`` gathers patches and runs matmuls (with a custom VJP whose weight gradient
    is one matmul); ``"xla"`` uses ``lax.conv_general_dilated``. Both give the same values and
    gradients up to float rounding.
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
    if padding == "SAME":
        kh, kw = kernel.shape[:2]
        x = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    return _conv_im2col(x, kernel)


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
