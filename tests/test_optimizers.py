import math

import chex
import jax
import jax.numpy as jnp
import optax
import pytest

from flaxmnist import optimizers
from flaxmnist.configs import default
from flaxmnist.errors import ConfigError


def _config(**overrides):
    config = default.get_config()
    config.update(overrides)
    return config


@pytest.mark.parametrize("name", optimizers.OPTIMIZERS.names())
def test_every_optimizer_decreases_a_quadratic(name):
    lr = 1.0 if name == "adadelta" else 0.05
    tx = optimizers.create_optimizer(
        _config(optimizer=name, learning_rate=lr, momentum=0.9), steps_per_epoch=10
    )
    params = jnp.array([3.0, -2.0])
    loss = lambda p: jnp.sum(p**2)  # noqa: E731
    state = tx.init(params)
    for _ in range(50):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    assert loss(params) < 13.0 - 0.05  # adadelta starts slowly (eps 1e-7), the others fast


def test_warmup_cosine_schedule_values():
    schedule = optimizers.create_schedule(
        _config(schedule="warmup_cosine", learning_rate=0.1, warmup_epochs=1.0, num_epochs=3),
        steps_per_epoch=10,
    )
    assert schedule(0) == pytest.approx(0.0)
    assert schedule(5) == pytest.approx(0.05)
    assert schedule(10) == pytest.approx(0.1)
    assert schedule(20) == pytest.approx(0.05)  # halfway through the cosine part
    assert schedule(30) == pytest.approx(0.0, abs=1e-7)


def test_step_schedule_drops_once_per_period():
    schedule = optimizers.create_schedule(
        _config(schedule="step", learning_rate=0.1, lr_decay_rate=0.5, lr_decay_epochs=2.0),
        steps_per_epoch=10,
    )
    assert [float(schedule(s)) for s in (0, 19, 20, 39, 40)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025]
    )


def test_exponential_and_cosine_schedules():
    config = _config(
        schedule="exponential",
        learning_rate=0.1,
        lr_decay_rate=0.5,
        lr_decay_epochs=1.0,
        num_epochs=2,
    )
    assert optimizers.create_schedule(config, 10)(5) == pytest.approx(0.1 * 0.5**0.5)
    config.schedule = "cosine"
    assert optimizers.create_schedule(config, 10)(10) == pytest.approx(0.05)
    config.schedule = "constant"
    assert optimizers.create_schedule(config, 10)(17) == pytest.approx(0.1)


def test_unknown_names_and_bad_learning_rate():
    with pytest.raises(ConfigError, match="unknown optimizer 'lamb'; valid: adadelta, adam"):
        optimizers.create_optimizer(_config(optimizer="lamb"), 10)
    with pytest.raises(ConfigError, match="unknown schedule"):
        optimizers.create_schedule(_config(schedule="onecycle"), 10)
    with pytest.raises(ConfigError, match="learning_rate must be positive"):
        optimizers.create_schedule(_config(learning_rate=0.0), 10)


GRADS = (jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0]))  # two steps' gradients
PARAMS = jnp.array([1.0, -2.0])


def _updates(config, grads=GRADS, params=PARAMS, steps_per_epoch=10):
    """The optimizer's update for each gradient in turn (params follow the updates)."""
    tx = optimizers.create_optimizer(config, steps_per_epoch)
    state, out = tx.init(params), []
    for g in grads:
        update, state = tx.update(g, state, params)
        params = optax.apply_updates(params, update)
        out.append(update)
    return out


@pytest.mark.parametrize(
    ("momentum", "nesterov", "expected"),
    [
        # Plain SGD: -lr * g.
        (0.0, False, [[-0.1, -0.2], [-0.05, 0.1]]),
        # Heavy ball: t = g + m * t; update -lr * t. t1 = [1, 2]; t2 = [0.5 + 0.9, -1 + 1.8].
        (0.9, False, [[-0.1, -0.2], [-0.14, -0.08]]),
        # Nesterov: update -lr * (g + m * t). Step 1: g + 0.9 g = [1.9, 3.8];
        # step 2: [0.5, -1] + 0.9 * [1.4, 0.8] = [1.76, -0.28].
        (0.9, True, [[-0.19, -0.38], [-0.176, 0.028]]),
    ],
)
def test_sgd_updates_match_the_momentum_and_nesterov_formulas(momentum, nesterov, expected):
    config = _config(optimizer="sgd", learning_rate=0.1, momentum=momentum, nesterov=nesterov)
    chex.assert_trees_all_close(_updates(config), [jnp.array(e) for e in expected], atol=1e-6)


def test_rmsprop_updates_match_the_formula_with_and_without_momentum():
    # nu = 0.9 nu + 0.1 g^2 from 0; update -lr * g / sqrt(nu + eps) (+ momentum 0.5 * previous).
    grads = (jnp.array([1.0, -1.0]),) * 2
    plain = -0.01 * jnp.array([1.0, -1.0]) / jnp.array([[math.sqrt(0.1)], [math.sqrt(0.19)]])
    with_momentum = plain.at[1].add(0.5 * plain[0])
    for momentum, expected in ((0.0, plain), (0.5, with_momentum)):
        config = _config(optimizer="rmsprop", learning_rate=0.01, momentum=momentum)
        chex.assert_trees_all_close(_updates(config, grads), list(expected), rtol=1e-5)


@pytest.mark.parametrize("weight_decay", [0.01, 0.5])
def test_adamw_decays_the_weights_on_a_zero_gradient(weight_decay):
    # Adam's part of the update is 0 for a zero gradient; the decoupled decay is -lr * wd * p.
    config = _config(optimizer="adamw", learning_rate=0.1, weight_decay=weight_decay)
    (update,) = _updates(config, (jnp.zeros(2),))
    chex.assert_trees_all_close(update, -0.1 * weight_decay * PARAMS, rtol=1e-6)
    (update,) = _updates(_config(optimizer="adam", learning_rate=0.1), (jnp.zeros(2),))
    chex.assert_trees_all_equal(update, jnp.zeros(2))  # plain adam: no decay


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_uses_the_keras_epsilon(name):
    # First step: mu_hat = g, nu_hat = g^2, update -lr * g / (|g| + eps); for g = eps = 1e-7
    # that is -lr / 2 (optax's default eps 1e-8 would give -lr / 1.1).
    config = _config(optimizer=name, learning_rate=0.1, weight_decay=0.0)
    (update,) = _updates(config, (jnp.array([1e-7, -1e-7]),))
    chex.assert_trees_all_close(update, jnp.array([-0.05, 0.05]), rtol=1e-4)


def test_the_schedule_drives_the_optimizer_step_size():
    # step schedule, 2 steps per epoch: lr 0.1 for steps 0-1, 0.05 for 2-3, 0.025 for step 4.
    config = _config(
        optimizer="sgd", learning_rate=0.1, schedule="step", lr_decay_rate=0.5, lr_decay_epochs=1.0
    )
    grads = (jnp.array([1.0, 1.0]),) * 5
    got = [float(u[0]) for u in _updates(config, grads, steps_per_epoch=2)]
    assert got == pytest.approx([-0.1, -0.1, -0.05, -0.05, -0.025])


def test_skip_step_policy_drops_non_finite_updates_and_keeps_going():
    nan_grads = (jnp.array([jnp.nan, 1.0]), jnp.array([1.0, 1.0]))
    skip = _config(optimizer="sgd", learning_rate=0.1, nan_policy="skip_step")
    first, second = _updates(skip, nan_grads)
    chex.assert_trees_all_equal(first, jnp.zeros(2))  # the non-finite step is skipped
    chex.assert_trees_all_close(second, jnp.array([-0.1, -0.1]))
    first, _ = _updates(_config(optimizer="sgd", learning_rate=0.1), nan_grads)
    assert bool(jnp.isnan(first[0]))  # nan_policy=stop passes it on (the loop stops the run)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_betas_come_from_the_config(name):
    # After one step from zero state: m = (1 - b1) g, v = (1 - b2) g², bias-corrected to g and g²
    # whatever the betas; the second step tells them apart: m2 = b1 (1 - b1) g1 + (1 - b1) g2.
    config = _config(optimizer=name, learning_rate=0.1, adam_b1=0.5, adam_b2=0.75, weight_decay=0)
    tx = optimizers.create_optimizer(config, steps_per_epoch=10)
    params = jnp.zeros(1)
    state = tx.init(params)
    for gradient in (1.0, 3.0):
        updates, state = tx.update(jnp.array([gradient]), state, params)
    m = (0.5 * 0.5 * 1.0 + 0.5 * 3.0) / (1 - 0.5**2)
    v = (0.75 * 0.25 * 1.0 + 0.25 * 9.0) / (1 - 0.75**2)
    chex.assert_trees_all_close(updates, -0.1 * jnp.array([m / (math.sqrt(v) + 1e-7)]), rtol=1e-5)
