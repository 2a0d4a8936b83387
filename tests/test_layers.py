import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxmnist import cpu
from flaxmnist.models import layers


def _reference_conv(x, kernel, padding):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.mark.parametrize("kernel_size", [3, 1])
@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.parametrize("shape", [(2, 7, 9, 3), (1, 5, 5, 1), (2, 3, 3, 4)])
# 0: every forward pass is patches @ kernel; 64: every one here is a sum of shifted copies.
@pytest.mark.slow
@pytest.mark.parametrize("shifted_sum_max_taps", [0, 64])
def test_im2col_conv_matches_lax_conv_values_and_gradients(
    padding, shape, kernel_size, shifted_sum_max_taps, monkeypatch
):
    monkeypatch.setattr(layers, "SHIFTED_SUM_MAX_TAPS", shifted_sum_max_taps)
    monkeypatch.setattr(layers, "SHIFTED_SUM_MIN_OUTPUT_BYTES", 0)
    kx, kk = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, shape)
    kernel = jax.random.normal(kk, (kernel_size, kernel_size, shape[-1], 4))

    def loss(conv_fn):
        return lambda x, k: jnp.sum(jnp.sin(conv_fn(x, k)))

    im2col = lambda x, k: layers.conv2d(x, k, padding=padding, impl="im2col")  # noqa: E731
    reference = lambda x, k: _reference_conv(x, k, padding)  # noqa: E731
    # The path under test is the one taken: only patches @ kernel gathers the patches.
    uses_patches = "gather" in str(jax.make_jaxpr(im2col)(x, kernel))
    assert uses_patches == (shifted_sum_max_taps == 0)
    chex.assert_trees_all_close(
        jax.jit(im2col)(x, kernel), jax.jit(reference)(x, kernel), atol=1e-5
    )
    chex.assert_trees_all_close(
        jax.jit(jax.grad(loss(im2col), argnums=(0, 1)))(x, kernel),
        jax.jit(jax.grad(loss(reference), argnums=(0, 1)))(x, kernel),
        atol=1e-4,
    )


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(2, 6, 6, 3), (2, 7, 5, 2), (1, 3, 3, 1)])
def test_fast_max_pool_matches_reduce_window(shape):
    x = jax.random.normal(jax.random.key(1), shape)
    weights = jax.random.normal(jax.random.key(2), layers.max_pool(x, impl="xla").shape)
    fast = lambda x: jnp.sum(layers.max_pool(x, impl="fast") * weights)  # noqa: E731
    slow = lambda x: jnp.sum(layers.max_pool(x, impl="xla") * weights)  # noqa: E731
    chex.assert_trees_all_close(layers.max_pool(x, impl="fast"), layers.max_pool(x, impl="xla"))
    chex.assert_trees_all_close(jax.jit(jax.grad(fast))(x), jax.jit(jax.grad(slow))(x))


def test_fast_max_pool_sends_gradient_to_first_maximum_of_a_tie():
    x = jnp.array([[1.0, 3.0], [3.0, 0.0]]).reshape(1, 2, 2, 1)
    grad = jax.grad(lambda x: layers.max_pool(x, impl="fast").sum())(x)
    chex.assert_trees_all_equal(grad.reshape(2, 2), jnp.array([[0.0, 1.0], [0.0, 0.0]]))
    chex.assert_trees_all_equal(grad, jax.grad(lambda x: layers.max_pool(x, impl="xla").sum())(x))


def test_max_pool_drops_trailing_row_and_column():
    x = jnp.arange(25.0).reshape(1, 5, 5, 1)
    out = layers.max_pool(x, impl="fast")
    chex.assert_shape(out, (1, 2, 2, 1))
    chex.assert_trees_all_equal(out[0, :, :, 0], jnp.array([[6.0, 8.0], [16.0, 18.0]]))


@pytest.mark.slow
def test_conv_module_has_flax_conv_parameters():
    x = jnp.ones((1, 8, 8, 3))
    ours = layers.Conv(5).init(jax.random.key(0), x)
    theirs = nn.Conv(5, (3, 3), padding="VALID").init(jax.random.key(0), x)
    chex.assert_trees_all_equal_shapes(ours, theirs)
    params = ours["params"]
    out = layers.Conv(5, impl="im2col").apply(ours, x)
    expected = _reference_conv(x, params["kernel"], "VALID") + params["bias"]
    chex.assert_trees_all_close(out, expected, atol=1e-5)


def test_auto_resolves_to_cpu_friendly_implementations_on_cpu():
    assert jax.default_backend() == "cpu"
    assert layers.resolve_impl("auto", layers.CONV_IMPLS, "im2col") == "im2col"
    assert layers.resolve_impl("xla", layers.CONV_IMPLS, "im2col") == "xla"
    with pytest.raises(ValueError, match="valid: auto, xla, im2col"):
        layers.resolve_impl("winograd", layers.CONV_IMPLS, "im2col")
    assert layers.resolve_impl("auto", layers.POOL_IMPLS, "fused") == "fused"


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_auto_resolves_to_xla_s_own_convolution_and_pooling_off_the_cpu(backend, monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert layers.resolve_impl("auto", layers.CONV_IMPLS, "im2col") == "xla"
    assert layers.resolve_impl("auto", layers.POOL_IMPLS, "fused") == "xla"


@pytest.mark.slow
def test_bfloat16_conv_is_close_to_float32():
    x = jax.random.uniform(jax.random.key(3), (2, 10, 10, 4))
    kernel = jax.random.normal(jax.random.key(4), (3, 3, 4, 8)) * 0.1
    conv = jax.jit(lambda x, k: layers.conv2d(x, k, impl="im2col"))
    low = conv(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float32), conv(x, kernel), atol=5e-2)


@pytest.mark.slow
def test_chunked_im2col_matches_unchunked(monkeypatch):
    x = jax.random.normal(jax.random.key(5), (7, 9, 9, 2))
    kernel = jax.random.normal(jax.random.key(6), (3, 3, 2, 4))
    loss = lambda x, k: jnp.sum(jnp.cos(layers.conv2d(x, k, impl="im2col")))  # noqa: E731

    def value_and_grads():  # a new function each time: jax caches traces per function
        fn = jax.value_and_grad(loss, argnums=(0, 1))
        return jax.jit(fn)(x, kernel), "scan" in str(jax.make_jaxpr(fn)(x, kernel))

    expected, looped = value_and_grads()
    assert not looped
    per_image = 7 * 7 * 9 * 2 * 4
    monkeypatch.setattr(layers, "CHUNK_BYTES", 3 * per_image)  # chunks of 3: 3 + 3 + 1 left over
    monkeypatch.setattr(layers, "UNCHUNKED_MAX_BYTES", 7 * per_image)  # fused layers only
    chunked, looped = value_and_grads()
    assert looped  # the chunk loop (lax.map) ran
    chex.assert_trees_all_close(chunked, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("batch", "limit", "expected"), [(128, 200, 128), (128, 40, 32), (128, 23, 16), (37, 10, 10)]
)
def test_batch_chunk(batch, limit, expected):
    assert layers.batch_chunk(batch, per_image_bytes=100, chunk_bytes=100 * limit) == expected


def _reference_conv_max_pool(x, kernel, padding):
    return layers.max_pool(_reference_conv(x, kernel, padding), 2, impl="xla")


def _takes_fused_path(fn, *args) -> bool:
    return "_conv_max_pool_forward" in str(jax.make_jaxpr(fn)(*args))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("shape", "kernel_shape", "padding"),
    [
        ((2, 8, 8, 1), (3, 3, 1, 4), "VALID"),  # 6×6 -> 3×3: every output pixel pooled
        ((2, 13, 13, 3), (3, 3, 3, 5), "VALID"),  # 11×11 -> 5×5: the last row and column unused
        ((1, 7, 9, 2), (2, 3, 2, 3), "VALID"),  # uneven kernel and image
        ((2, 7, 7, 2), (3, 3, 2, 3), "SAME"),
    ],
)
# 0: every forward pass is patches @ kernel; 64: every one here is a sum of shifted copies.
@pytest.mark.parametrize("shifted_sum_max_taps", [0, 64])
def test_fused_conv_max_pool_matches_conv_then_pool_values_and_gradients(
    shape, kernel_shape, padding, shifted_sum_max_taps, monkeypatch
):
    monkeypatch.setattr(layers, "SHIFTED_SUM_MAX_TAPS", shifted_sum_max_taps)
    monkeypatch.setattr(layers, "SHIFTED_SUM_MIN_OUTPUT_BYTES", 0)
    x = jax.random.normal(jax.random.key(7), shape)
    kernel = jax.random.normal(jax.random.key(8), kernel_shape)

    def fused(x, k):
        return layers.conv2d_max_pool(x, k, 2, padding=padding, impl="im2col", pool_impl="fused")

    def loss(fn):
        return lambda x, k: jnp.sum(jnp.sin(fn(x, k)))

    reference = lambda x, k: _reference_conv_max_pool(x, k, padding)  # noqa: E731
    assert _takes_fused_path(fused, x, kernel)
    chex.assert_trees_all_close(jax.jit(fused)(x, kernel), reference(x, kernel), atol=1e-5)
    chex.assert_trees_all_close(
        jax.jit(jax.grad(loss(fused), argnums=(0, 1)))(x, kernel),
        jax.jit(jax.grad(loss(reference), argnums=(0, 1)))(x, kernel),
        atol=1e-4,
    )


def test_fused_conv_max_pool_sends_gradient_to_first_maximum_of_a_tie():
    # A 1×1 kernel of 1: the conv is the identity, so the pool sees x itself.
    x = jnp.array([[1.0, 3.0], [3.0, 0.0]]).reshape(1, 2, 2, 1)
    kernel = jnp.ones((1, 1, 1, 1))
    fused = lambda x: layers.conv2d_max_pool(x, kernel, 2, pool_impl="fused").sum()  # noqa: E731
    chex.assert_trees_all_equal(
        jax.grad(fused)(x).reshape(2, 2), jnp.array([[0.0, 1.0], [0.0, 0.0]])
    )


def test_pool_patch_indices_group_output_pixels_by_position_in_the_window():
    # A 1×1 kernel on a 4×4 image: position (0, 0) of each 2×2 window is pixels 0, 2, 8, 10...
    indices = layers._pool_patch_indices(4, 4, 1, 1, 2).reshape(4, 4)
    expected = [[0, 2, 8, 10], [1, 3, 9, 11], [4, 6, 12, 14], [5, 7, 13, 15]]
    np.testing.assert_array_equal(indices, expected)
    # A 2×2 kernel on a 3×3 image: one pooled pixel, one window position, taps 0, 1, 3, 4.
    np.testing.assert_array_equal(layers._pool_patch_indices(3, 3, 2, 2, 2)[:4], [0, 1, 3, 4])


@pytest.mark.slow
def test_chunked_fused_conv_max_pool_matches_unchunked(monkeypatch):
    x = jax.random.normal(jax.random.key(9), (7, 9, 9, 2))
    kernel = jax.random.normal(jax.random.key(10), (3, 3, 2, 4))

    def loss(x, k):
        return jnp.sum(jnp.cos(layers.conv2d_max_pool(x, k, 2, pool_impl="fused")))

    def value_and_grads():  # a new function each time: jax caches traces per function
        fn = jax.value_and_grad(loss, argnums=(0, 1))
        return jax.jit(fn)(x, kernel), "scan" in str(jax.make_jaxpr(fn)(x, kernel))

    expected, looped = value_and_grads()
    assert not looped
    per_image = 7 * 7 * 9 * 2 * 4  # every output pixel's patch: the pool reads 3×3 of 7×7
    monkeypatch.setattr(layers, "CHUNK_BYTES", 3 * per_image)  # chunks of 3, 3 and 1
    monkeypatch.setattr(layers, "UNCHUNKED_MAX_BYTES", 7 * per_image)  # all 7 images' patches
    assert value_and_grads()[1] is False  # small enough to skip the loop
    monkeypatch.setattr(layers, "UNCHUNKED_MAX_BYTES", 7 * per_image - 1)
    chunked, looped = value_and_grads()
    assert looped
    chex.assert_trees_all_close(chunked, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("impl", "pool_impl"), [("im2col", "fast"), ("xla", "fused")])
def test_conv_max_pool_is_two_layers_unless_im2col_and_fused(impl, pool_impl):
    x, kernel = jnp.ones((1, 6, 6, 1)), jnp.ones((3, 3, 1, 2))
    fn = lambda x, k: layers.conv2d_max_pool(x, k, 2, impl=impl, pool_impl=pool_impl)  # noqa: E731
    assert not _takes_fused_path(fn, x, kernel)
    chex.assert_trees_all_close(fn(x, kernel), _reference_conv_max_pool(x, kernel, "VALID"))


@pytest.mark.parametrize(
    ("flags", "fused"),
    [({"avx2", "avx512f"}, True), ({"avx2"}, False), (set(), False)],
)
def test_auto_fuses_the_pool_only_on_a_cpu_with_avx512(monkeypatch, flags, fused):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(flags))
    x, kernel = jnp.ones((1, 6, 6, 1)), jnp.ones((3, 3, 1, 2))
    fn = lambda x, k: layers.conv2d_max_pool(x, k, 2)  # noqa: E731
    assert _takes_fused_path(fn, x, kernel) == fused


@pytest.mark.slow
def test_conv_module_with_pool_window_pools_before_the_bias():
    x = jax.random.normal(jax.random.key(11), (2, 8, 8, 3))
    variables = layers.Conv(5, pool_window=2).init(jax.random.key(0), x)
    params = variables["params"]
    out = layers.Conv(5, pool_window=2).apply(variables, x)
    conv = _reference_conv(x, params["kernel"], "VALID") + params["bias"]
    chex.assert_trees_all_close(out, layers.max_pool(conv, 2, impl="xla"), atol=1e-5)
