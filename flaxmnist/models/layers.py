"""Convolution and max-pooling layers that are fast on XLA:CPU.

XLA:CPU lowers the gradient of ``reduce_window`` max-pooling to ``select_and_scatter``, which is
slow, and runs ``conv_general_dilated`` well below matmul speed for the small MNIST shapes. This
module provides drop-in replacements:

* :func:`max_pool` — non-overlapping max-pooling with a custom VJP that routes the gradient to the
  first maximum of each window (the same subgradient ``select_and_scatter`` picks);
* :func:`conv2d` — a 2-D convolution computed either by ``lax.conv_general_dilated`` (``"xla"``) or
  as im2col + matmul (``"im2col"``): patches from one gather, a custom VJP whose weight gradient is
  one matmul, and a loop over batch chunks so large layers keep their temporaries small;
* :func:`conv2d_max_pool` — a convolution followed by a max-pool in one pass: only the output
  pixels the pool reads are computed, their maximum taken as they are produced, one custom VJP;
* :class:`Conv` — a Linen module with the same parameters as ``flax.linen.Conv`` (``kernel`` HWIO
  and ``bias``) whose implementation is a config switch; ``"auto"`` picks im2col on CPU (with the
  fused pool where the CPU has AVX-512: :func:`flaxmnist.cpu.fused_pool_pays`) and the native ops
  on GPU/TPU.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxmnist import config_schema, cpu

# The implementations of each layer, by the names the config fields conv_impl and pool_impl take.
CONV_IMPLS = config_schema.choices("conv_impl")
POOL_IMPLS = config_schema.choices("pool_impl")


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


def _first_max(values: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """The elementwise maximum of ``values`` and the index (int8) of the first that holds it."""
    best, index = values[0], jnp.zeros(values[0].shape, jnp.int8)
    for i, value in enumerate(values[1:], start=1):
        better = value > best
        best, index = jnp.where(better, value, best), jnp.where(better, jnp.int8(i), index)
    return best, index


def _route_to_first_max(
    g: jax.Array, index: jax.Array, window: int, out_hw: tuple[int, int]
) -> tuple[jax.Array, jax.Array]:
    """A max-pool's gradient: ``g`` sent to the first maximum of each window (``index``).

    This is the subgradient ``select_and_scatter`` picks. Returns the gradient per window position,
    [N, window², H'', W'', C], and the same laid out as the pool's [N, H, W, C] input (``out_hw``),
    zero in the trailing rows/columns the pool dropped.
    """
    n, hp, wp, c = g.shape
    zero = jnp.zeros((), g.dtype)
    routed = jnp.stack([jnp.where(index == p, g, zero) for p in range(window * window)], axis=1)
    dx = routed.reshape(n, window, window, hp, wp, c).transpose(0, 3, 1, 4, 2, 5)
    dx = dx.reshape(n, hp * window, wp * window, c)
    (h, w) = out_hw
    return routed, jnp.pad(dx, ((0, 0), (0, h - hp * window), (0, w - wp * window), (0, 0)))


# ``in_hw`` (x's height and width) is a static argument so that the backward pass knows the shape
# of the gradient it returns without keeping x.
def _max_pool_forward(x: jax.Array, window: int, in_hw: tuple[int, int]) -> jax.Array:
    return functools.reduce(jnp.maximum, _window_slices(x, window))


def _max_pool_fast_fwd(x: jax.Array, window: int, in_hw: tuple[int, int]):
    out, index = _first_max(_window_slices(x, window))
    return out, index


def _max_pool_fast_bwd(window: int, in_hw: tuple[int, int], index: jax.Array, g: jax.Array):
    return (_route_to_first_max(g, index, window, in_hw)[1],)


_max_pool_fast = jax.custom_vjp(_max_pool_forward, nondiff_argnums=(1, 2))
_max_pool_fast.defvjp(_max_pool_fast_fwd, _max_pool_fast_bwd)


def max_pool(x: jax.Array, window: int = 2, *, impl: str = "auto") -> jax.Array:
    """Non-overlapping ``window``×``window`` max-pooling of NHWC ``x`` with 'VALID' padding.

    Trailing rows/columns that do not fill a window are dropped, like Keras ``MaxPooling2D``.
    ``impl="fast"`` uses the custom VJP; ``"xla"`` uses ``flax.linen.max_pool``.
    """
    impl = resolve_impl(impl, POOL_IMPLS, cpu_choice="fast")
    if impl in ("fast", "fused"):
        return _max_pool_fast(x, window, x.shape[1:3])
    return nn.max_pool(x, window_shape=(window, window), strides=(window, window), padding="VALID")


# Bytes of patch matrix per batch chunk: on small CPUs, touching fresh memory is slow, so large
# layers run as a loop over batch chunks whose temporaries stay a few MiB and are reused.
CHUNK_BYTES = 4 * 1024 * 1024
# A fused conv + max-pool whose patches take up to this much is not chunked at all: a loop of
# only two or three chunks costs more than its smaller temporaries save (`fast`'s second layer,
# 7.4 MB of patches at batch 128, steps faster unchunked). The plain im2col layers keep chunking,
# which pays for them (`cnn_deep`).
UNCHUNKED_MAX_BYTES = 12 * 1024 * 1024
# Outputs this small (per image) get dx by col2im; larger ones by a transposed convolution.
COL2IM_MAX_PIXELS = 16


def _patch_indices(h: int, w: int, kh: int, kw: int) -> np.ndarray:
    """Flat spatial indices [H'*W'*kh*kw] of every (output pixel, kernel tap) pair."""
    rows = np.arange(h - kh + 1)[:, None, None, None] + np.arange(kh)[None, None, :, None]
    cols = np.arange(w - kw + 1)[None, :, None, None] + np.arange(kw)[None, None, None, :]
    return (rows * w + cols).reshape(-1).astype(np.int32)


def _patches(x: jax.Array, kh: int, kw: int) -> jax.Array:
    """im2col of NHWC ``x`` ('VALID', stride 1) as [N, H', W', kh*kw*C], in HWIO tap order.

    One gather over the flattened spatial axis: XLA:CPU runs it faster than a concatenate of the
    kh*kw shifted slices.
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
# layer's bias and activation. That wins for MNIST's first layer at batch 128 ([128, 28, 28, 1]
# -> 32 channels, 10.6 MiB of output); with a small output (batch 32: 2.6 MiB) the matmul is as
# fast and its training step faster, hence the output-size bound. Just above it the matmul can
# still win (`cnn_simple` at batch 64; docs/results.md, throughput vs batch size).
SHIFTED_SUM_MAX_TAPS = 16
SHIFTED_SUM_MIN_OUTPUT_BYTES = CHUNK_BYTES


def _strided(
    x: jax.Array, offset: tuple[int, int], stride: int, out_hw: tuple[int, int]
) -> jax.Array:
    """The pixels ``offset + stride * (i, j)`` of NHWC ``x`` for i, j < ``out_hw``."""
    (di, dj), (ho, wo) = offset, out_hw
    return x[:, di : di + stride * (ho - 1) + 1 : stride, dj : dj + stride * (wo - 1) + 1 : stride]


def _shifted_sum(
    x: jax.Array, kernel: jax.Array, offset: tuple[int, int], stride: int, out_hw: tuple[int, int]
) -> jax.Array:
    """The convolution at output pixels ``offset + stride * (i, j)`` as a sum of shifted copies."""
    kh, kw = kernel.shape[:2]
    di, dj = offset
    taps = (
        (_strided(x, (di + i, dj + j), stride, out_hw)[..., None] * kernel[i, j]).sum(axis=-2)
        for i in range(kh)
        for j in range(kw)
    )
    return functools.reduce(jnp.add, taps).astype(x.dtype)


def _use_shifted_sum(x: jax.Array, kernel: jax.Array) -> bool:
    kh, kw, cin, cout = kernel.shape
    n, h, w, _ = x.shape
    output_bytes = n * (h - kh + 1) * (w - kw + 1) * cout * x.dtype.itemsize
    return kh * kw * cin <= SHIFTED_SUM_MAX_TAPS and output_bytes > SHIFTED_SUM_MIN_OUTPUT_BYTES


def _conv_valid_forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
    kh, kw, cin, cout = kernel.shape
    out_hw = (x.shape[1] - kh + 1, x.shape[2] - kw + 1)
    if _use_shifted_sum(x, kernel):
        return _shifted_sum(x, kernel, (0, 0), 1, out_hw)
    return _matmul(_patches(x, kh, kw), kernel.reshape(kh * kw * cin, cout), x.dtype)


def _conv_valid_fwd(x: jax.Array, kernel: jax.Array):
    # Keep x, not the patches: recomputing them in the backward pass is cheaper than storing.
    return _conv_valid_forward(x, kernel), (x, kernel)


def _conv_input_grad(g: jax.Array, kernel: jax.Array) -> jax.Array:
    """The gradient of a 'VALID' convolution's input from its output gradient ``g``."""
    kh, kw, cin, cout = kernel.shape
    n, ho, wo, _ = g.shape
    if ho * wo <= COL2IM_MAX_PIXELS:  # col2im: dpatches = dy @ W^T, then add the taps back
        dp = _matmul(g, kernel.reshape(kh * kw * cin, cout).T, jnp.float32)
        dp = dp.reshape(n, ho, wo, kh, kw, cin)
        return sum(
            jnp.pad(dp[:, :, :, i, j, :], ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j), (0, 0)))
            for i in range(kh)
            for j in range(kw)
        )
    # transposed convolution: 'full' correlation of dy with the flipped kernel
    flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)
    return jax.lax.conv_general_dilated(
        g,
        flipped,
        (1, 1),
        ((kh - 1, kh - 1), (kw - 1, kw - 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=jnp.float32,
    )


def _kernel_grad(patches: jax.Array, g: jax.Array, kernel: jax.Array) -> jax.Array:
    """The kernel gradient (dy^T @ patches)^T in one matmul, not a slow weight-gradient conv.

    Both operands are flattened to 2-D first: XLA:CPU runs a dot that contracts the leading axes
    of 4-D operands slower than the same dot on [N*H'*W', K] matrices.
    """
    patches = patches.reshape(-1, patches.shape[-1])
    dw = _matmul(g.reshape(-1, kernel.shape[-1]).T, patches, jnp.float32).T
    return dw.reshape(kernel.shape).astype(kernel.dtype)


def _conv_valid_bwd(residuals, g: jax.Array):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    dw = _kernel_grad(_patches(x, kh, kw), g, kernel)
    return _conv_input_grad(g, kernel).astype(x.dtype), dw


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


def _map_batch_chunks(
    fn, x: jax.Array, per_image_bytes: int, unchunked_max_bytes: int = 0
) -> jax.Array:
    """``fn(x)``, looping over batch chunks when the patches are large.

    Large: more than ``unchunked_max_bytes`` and more than one chunk (``CHUNK_BYTES``).
    """
    n = x.shape[0]
    chunk = batch_chunk(n, per_image_bytes, CHUNK_BYTES)
    if chunk == n or n * per_image_bytes <= unchunked_max_bytes:
        return fn(x)
    full = n - n % chunk
    y = jax.lax.map(fn, x[:full].reshape(full // chunk, chunk, *x.shape[1:]))
    y = y.reshape(full, *y.shape[2:])
    if full < n:  # the images left over after the full chunks
        y = jnp.concatenate([y, fn(x[full:])])
    return y


def _patch_bytes_per_image(x: jax.Array, kernel: jax.Array) -> int:
    """Bytes of one image's im2col patches for a 'VALID' convolution of ``x`` with ``kernel``."""
    kh, kw, cin, _ = kernel.shape
    _, h, w, _ = x.shape
    return (h - kh + 1) * (w - kw + 1) * kh * kw * cin * x.dtype.itemsize


def _conv_im2col(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'VALID' im2col convolution, looping over batch chunks when the patches are large."""
    per_image = _patch_bytes_per_image(x, kernel)
    return _map_batch_chunks(lambda xc: _conv_valid(xc, kernel), x, per_image)


def _pool_patch_indices(h: int, w: int, kh: int, kw: int, window: int) -> np.ndarray:
    """Flat spatial indices [window², H'', W'', kh*kw] of the patches a following max-pool reads.

    The output pixels are grouped by their position inside the pooling window.
    """
    hp, wp = (h - kh + 1) // window, (w - kw + 1) // window
    di, dj = np.divmod(np.arange(window * window), window)
    rows = (
        di[:, None, None, None, None]
        + window * np.arange(hp)[None, :, None, None, None]
        + np.arange(kh)[None, None, None, :, None]
    )
    cols = (
        dj[:, None, None, None, None]
        + window * np.arange(wp)[None, None, :, None, None]
        + np.arange(kw)[None, None, None, None, :]
    )
    return (rows * w + cols).reshape(-1).astype(np.int32)


def _pool_patches(x: jax.Array, kh: int, kw: int, window: int) -> jax.Array:
    """im2col of the pooled output pixels: [N, window², H'', W'', kh*kw*C], in HWIO tap order.

    One gather per pooling position: XLA:CPU runs them faster than a single gather.
    """
    n, h, w, c = x.shape
    hp, wp = (h - kh + 1) // window, (w - kw + 1) // window
    flat = x.reshape(n, h * w, c)
    indices = _pool_patch_indices(h, w, kh, kw, window).reshape(window * window, -1)
    per_position = [flat.at[:, i].get(mode="promise_in_bounds") for i in indices]
    return jnp.stack(per_position, axis=1).reshape(n, window * window, hp, wp, kh * kw * c)


def _conv_max_pool_outputs(x: jax.Array, kernel: jax.Array, window: int) -> list[jax.Array]:
    """The convolution at each position inside the pooling windows: window² × [N, H'', W'', O]."""
    kh, kw, cin, cout = kernel.shape
    hp, wp = (x.shape[1] - kh + 1) // window, (x.shape[2] - kw + 1) // window
    positions = range(window * window)
    if _use_shifted_sum(x, kernel):
        return [_shifted_sum(x, kernel, divmod(p, window), window, (hp, wp)) for p in positions]
    patches = _pool_patches(x, kh, kw, window)
    y = _matmul(patches, kernel.reshape(kh * kw * cin, cout), x.dtype)
    return [y[:, p] for p in positions]


def _conv_max_pool_forward(x: jax.Array, kernel: jax.Array, window: int) -> jax.Array:
    return _first_max(_conv_max_pool_outputs(x, kernel, window))[0]


def _conv_max_pool_fwd(x: jax.Array, kernel: jax.Array, window: int):
    out, index = _first_max(_conv_max_pool_outputs(x, kernel, window))
    return out, (x, kernel, index)


def _conv_max_pool_bwd(window: int, residuals, g: jax.Array):
    x, kernel, index = residuals
    kh, kw = kernel.shape[:2]
    conv_hw = (x.shape[1] - kh + 1, x.shape[2] - kw + 1)
    routed, dy = _route_to_first_max(g, index, window, conv_hw)
    dw = _kernel_grad(_pool_patches(x, kh, kw, window), routed, kernel)
    return _conv_input_grad(dy, kernel).astype(x.dtype), dw


_conv_max_pool = jax.custom_vjp(_conv_max_pool_forward, nondiff_argnums=(2,))
_conv_max_pool.defvjp(_conv_max_pool_fwd, _conv_max_pool_bwd)


def conv2d(
    x: jax.Array, kernel: jax.Array, *, padding: str = "VALID", impl: str = "auto"
) -> jax.Array:
    """Stride-1 2-D convolution of NHWC ``x`` with an HWIO ``kernel`` (no bias).

    ``impl="im2col"`` gathers patches and runs matmuls (with a custom VJP whose weight gradient
    is one matmul); ``"xla"`` uses ``lax.conv_general_dilated``. Both give the same values and
    gradients up to float rounding.
    """
    impl = resolve_impl(impl, CONV_IMPLS, cpu_choice="im2col")
    _check_padding(padding)
    if impl == "xla":
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(1, 1),
            padding=padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    x = _pad_same(x, kernel) if padding == "SAME" else x
    return _conv_im2col(x, kernel)


def _check_padding(padding: str) -> None:
    if padding not in ("VALID", "SAME"):
        raise ValueError(f"padding must be 'VALID' or 'SAME', got {padding!r}")


def _pad_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Zero-pads NHWC ``x`` so that a 'VALID' convolution with ``kernel`` gives 'SAME' output."""
    kh, kw = kernel.shape[:2]
    return jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))


def conv2d_max_pool(
    x: jax.Array,
    kernel: jax.Array,
    window: int = 2,
    *,
    padding: str = "VALID",
    impl: str = "auto",
    pool_impl: str = "auto",
) -> jax.Array:
    """``max_pool(conv2d(x, kernel), window)``, computed in one pass where ``pool_impl`` is fused.

    With ``pool_impl="fused"`` (what ``"auto"`` picks on a CPU with AVX-512) and the im2col
    convolution, only the output pixels the pool reads are computed (a 'VALID' 11×11 output pooled
    to 5×5 loses its last row and column), the maximum is taken as they are produced, and the
    backward pass is one custom VJP: the gradient goes to the first maximum of each window, as
    ``select_and_scatter`` routes it. Otherwise this is the two layers one after the other.
    """
    impl = resolve_impl(impl, CONV_IMPLS, cpu_choice="im2col")
    pool_impl = resolve_impl(
        pool_impl, POOL_IMPLS, cpu_choice="fused" if cpu.fused_pool_pays() else "fast"
    )
    _check_padding(padding)
    if impl != "im2col" or pool_impl != "fused":
        return max_pool(conv2d(x, kernel, padding=padding, impl=impl), window, impl=pool_impl)
    x = _pad_same(x, kernel) if padding == "SAME" else x
    per_image = _patch_bytes_per_image(x, kernel)
    return _map_batch_chunks(
        lambda xc: _conv_max_pool(xc, kernel, window), x, per_image, UNCHUNKED_MAX_BYTES
    )


class Conv(nn.Module):
    """Stride-1 convolution with ``flax.linen.Conv``'s parameters and a selectable backend.

    ``pool_window`` > 1 max-pools the convolution before the bias is added (the same values as
    pooling after it) through :func:`conv2d_max_pool`.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    padding: str = "VALID"
    impl: str = "auto"
    pool_window: int = 1
    pool_impl: str = "auto"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the convolution (and the max-pool), then adds the bias."""
        kh, kw = self.kernel_size
        kernel = self.param(
            "kernel", nn.initializers.glorot_uniform(), (kh, kw, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        if self.pool_window > 1:
            y = conv2d_max_pool(
                x,
                kernel,
                self.pool_window,
                padding=self.padding,
                impl=self.impl,
                pool_impl=self.pool_impl,
            )
        else:
            y = conv2d(x, kernel, padding=self.padding, impl=self.impl)
        return y + bias
