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
