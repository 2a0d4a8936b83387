import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from flaxmnist import models
from flaxmnist.configs import default
from flaxmnist.errors import ConfigError


def _conv(cin, cout, k=3):
    return k * k * cin * cout + cout  # kernel and bias


def _dense(cin, cout):
    return cin * cout + cout


def _bn(c):
    return 2 * c  # scale and bias; the running statistics are batch_stats, not params


def _resnet(widths, blocks_per_stage):
    total, cin = _conv(1, widths[0]) + _bn(widths[0]), widths[0]  # the stem
    for width in widths:
        for _ in range(blocks_per_stage):
            total += _conv(cin, width) + _bn(width) + _conv(width, width) + _bn(width)
            if cin != width:
                total += _conv(cin, width, k=1) + _bn(width)  # the projection shortcut
            cin = width
    return total + _dense(widths[-1], 10)


# Keras parameter counts of the reference models (docs/models.md); the others are summed
# from their layer lists on 28x28x1 inputs ('VALID' 3x3 convs shrink by 2, max-pools halve).
EXPECTED_PARAMS = {
    "dense": 101_770,
    "mlp_dropout": 109_386,
    "mlp": 109_386,
    "cnn_simple": 54_410,
    "convnet": 34_826,
    "cnn3": 438_026,
    # 28 -conv-> 26 -pool-> 13 -conv-> 11 -pool-> 5.
    "convnet_bn": _conv(1, 32) + _bn(32) + _conv(32, 64) + _bn(64) + _dense(5 * 5 * 64, 10),
    "convnet_small": _conv(1, 16) + _bn(16) + _conv(16, 32) + _bn(32) + _dense(5 * 5 * 32, 10),
    "convnet_fast": _conv(1, 16)
    + _bn(16)
    + _conv(16, 32)
    + _bn(32)
    + _dense(5 * 5 * 32, 128)
    + _bn(128)
    + _dense(128, 10),
    "cnn_basic": _conv(1, 32) + _conv(32, 64) + _dense(5 * 5 * 64, 128) + _dense(128, 10),
    # 28 -> 26 -> 24 -pool-> 12 -> 10 -> 8 -pool-> 4.
    "cnn_deep": _conv(1, 32)
    + _conv(32, 32)
    + _conv(32, 64)
    + _conv(64, 64)
    + _bn(32) * 2
    + _bn(64) * 2
    + _dense(4 * 4 * 64, 256)
    + _bn(256)
    + _dense(256, 10),
    # 28 -> 26 -> 24 -pool-> 12.
    "cnn_dropout": _conv(1, 32) + _conv(32, 64) + _dense(12 * 12 * 64, 128) + _dense(128, 10),
    "resnet": _resnet((32, 64, 128), 1),
    "resnet_small": _resnet((16, 32, 64), 1),
    "resnet_wide": _resnet((64, 128, 256), 2),
}
BATCH_NORM_MODELS = {
    "cnn_deep",
    "convnet_bn",
    "convnet_small",
    "convnet_fast",
    "resnet",
    "resnet_small",
    "resnet_wide",
}


def _config(**overrides) -> ml_collections.ConfigDict:
    config = default.get_config()
    config.update(overrides)
    return config


def _init(name, **overrides):
    model = models.create_model(_config(model=name, **overrides), num_classes=10)
    return model, models.init_variables(model, (28, 28, 1), jax.random.key(0))


def _abstract(name, **overrides):
    """Model and variable shapes, without computing anything."""
    model = models.create_model(_config(model=name, **overrides), num_classes=10)
    init = functools.partial(models.init_variables, model, (28, 28, 1))
    variables = jax.eval_shape(init, jax.random.key(0))
    return model, variables


def test_every_registered_model_has_a_documented_parameter_count():
    assert set(models.MODELS.names()) == set(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_count_and_output_shape(name):
    model, variables = _abstract(name)
    assert models.count_params(variables["params"]) == EXPECTED_PARAMS[name]
    logits = jax.eval_shape(model.apply, variables, jnp.zeros((3, 28, 28, 1)))
    chex.assert_shape(logits, (3, 10))
    assert logits.dtype == jnp.float32


def test_only_batch_norm_models_have_batch_stats():
    for name in EXPECTED_PARAMS:
        assert ("batch_stats" in _abstract(name)[1]) == (name in BATCH_NORM_MODELS), name


# The "(+N)" of docs/models.md: a mean and a variance per BatchNorm channel.
EXPECTED_BATCH_STATS = {
    "convnet_bn": 2 * (32 + 64),
    "convnet_small": 2 * (16 + 32),
    "convnet_fast": 2 * (16 + 32 + 128),
    "resnet": 1_344,
    "resnet_small": 672,
    "resnet_wide": 4_480,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_BATCH_STATS))
def test_batch_norm_statistics_count_as_documented(name):
    stats = _abstract(name)[1]["batch_stats"]
    assert sum(leaf.size for leaf in jax.tree_util.tree_leaves(stats)) == EXPECTED_BATCH_STATS[name]


@pytest.mark.slow
def test_dropout_is_random_in_training_and_off_in_inference():
    model, variables = _init("mlp_dropout")
    no_dropout = models.create_model(
        _config(model="mlp"), num_classes=10
    )  # same layers, no Dropout
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    train = lambda seed: model.apply(  # noqa: E731
        variables, x, train=True, rngs={"dropout": jax.random.key(seed)}
    )
    assert not jnp.allclose(train(0), train(1))
    without = no_dropout.apply(variables, x)
    assert not jnp.allclose(train(0), without)
    chex.assert_trees_all_close(model.apply(variables, x), without)  # inference: no dropout


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn_deep", "resnet"])
def test_batch_norm_updates_statistics_only_in_training(name):
    model, variables = _init(name)
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))

    def statistics_after(train):
        _, updates = apply(
            variables, x, train=train, rngs={"dropout": jax.random.key(0)}, mutable=("batch_stats",)
        )
        return updates["batch_stats"]

    changed = jax.tree_util.tree_map(
        lambda a, b: bool(jnp.any(a != b)), statistics_after(True), variables["batch_stats"]
    )
    assert all(jax.tree_util.tree_leaves(changed))
    chex.assert_trees_all_equal(statistics_after(False), variables["batch_stats"])


def _conv_activation_pool_reference(params, x, activation):
    """The Keras order, one op after another: conv + bias -> activation -> max-pool, then head."""
    for name in ("Conv_0", "Conv_1"):
        conv = jax.lax.conv_general_dilated(
            x, params[name]["kernel"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        x = nn.max_pool(activation(conv + params[name]["bias"]), (2, 2), strides=(2, 2))
    return x.reshape(x.shape[0], -1) @ params["head"]["kernel"] + params["head"]["bias"]


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_cnn_without_batch_norm_is_conv_activation_pool(activation):
    # The pool runs inside the conv, before the activation, where the two commute (relu, tanh);
    # gelu is not monotonic, so there it stays after the activation.
    x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    act = models.ACTIVATIONS[activation]
    model = models.CNN(num_classes=10, blocks=((4,), (8,)), activation=act)
    variables = model.init(jax.random.key(0), x)
    fused = "_conv_max_pool_forward" in str(jax.make_jaxpr(model.apply)(variables, x))
    assert fused == (activation != "gelu")

    def loss_and_grads(apply):
        return jax.jit(jax.value_and_grad(lambda v: jnp.sum(apply(v) ** 2)))(variables)

    reference = lambda v: _conv_activation_pool_reference(v["params"], x, act)  # noqa: E731
    chex.assert_trees_all_close(
        loss_and_grads(lambda v: model.apply(v, x)),
        loss_and_grads(reference),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.slow
def test_pooling_first_normalises_the_pooled_values():
    # convnet_small's first BatchNorm sees relu(max_pool(conv(x))): 13×13, not 26×26, values.
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    model, variables = _init("convnet_small")
    _, updates = model.apply(variables, x, train=True, mutable=("batch_stats",))
    conv_out = models.layers.Conv(16).apply({"params": variables["params"]["Conv_0"]}, x)
    pooled = jax.nn.relu(models.layers.max_pool(conv_out, 2, impl="xla"))
    chex.assert_shape(pooled, (2, 13, 13, 16))
    # Running means start at 0 and move (1 - momentum) of the way to the batch mean.
    expected = (1 - models.BATCH_NORM_MOMENTUM) * pooled.mean(axis=(0, 1, 2))
    chex.assert_trees_all_close(
        updates["batch_stats"]["BatchNorm_0"]["mean"], expected, rtol=1e-4, atol=1e-7
    )


@pytest.mark.slow
def test_activation_is_configurable():
    x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    relu_model, variables = _init("dense")
    tanh_model, _ = _init("dense", activation="tanh")
    params = variables["params"]
    hidden = jnp.tanh(x.reshape(2, -1) @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    expected = hidden @ params["head"]["kernel"] + params["head"]["bias"]
    chex.assert_trees_all_close(tanh_model.apply(variables, x), expected, atol=1e-5)
    assert not jnp.allclose(relu_model.apply(variables, x), expected)


@pytest.mark.parametrize("name", ["convnet", "resnet"])
def test_bfloat16_compute_keeps_float32_params(name):
    model, variables = _abstract(name, dtype="bfloat16")
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
    logits = jax.eval_shape(model.apply, variables, jnp.zeros((1, 28, 28, 1)))
    assert logits.dtype == jnp.float32


@pytest.mark.slow
def test_resnet_in_bfloat16_trains_and_predicts_close_to_float32():
    x = jax.random.uniform(jax.random.key(1), (4, 28, 28, 1))
    model, variables = _init("resnet")
    low_model, low_variables = _init("resnet", dtype="bfloat16")
    chex.assert_trees_all_equal_dtypes(low_variables, variables)  # parameters stay float32
    logits, updates = jax.jit(
        functools.partial(low_model.apply, train=True, mutable=("batch_stats",))
    )(variables, x)
    assert logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    chex.assert_trees_all_equal_dtypes(updates["batch_stats"], variables["batch_stats"])
    chex.assert_trees_all_close(
        jax.jit(low_model.apply)(variables, x), jax.jit(model.apply)(variables, x), atol=1e-2
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("model", "resnet9000", "unknown model 'resnet9000'; valid: cnn3"),
        ("activation", "cube", "unknown activation 'cube'"),
        ("dtype", "float8", "unknown dtype"),
        ("conv_impl", "fft", "unknown conv_impl"),
    ],
)
def test_bad_names_list_the_valid_ones(field, value, message):
    with pytest.raises(ConfigError, match=message):
        models.create_model(_config(**{field: value}), num_classes=10)
