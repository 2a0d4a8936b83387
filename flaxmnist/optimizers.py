"""Optax optimizers and learning-rate schedules built from the config.

Schedules are functions of the step; epochs in the config are converted with ``steps_per_epoch``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from flaxmnist import config_schema
from flaxmnist.registry import Registry

MAX_SKIPPED_STEPS = 1000  # nan_policy=skip_step gives up after this many bad steps in a row
Schedule = Callable[..., optax.Schedule]
SCHEDULES: Registry[Schedule] = Registry("schedule")
OPTIMIZERS: Registry[Callable[..., optax.GradientTransformation]] = Registry("optimizer")


@SCHEDULES.register("constant")
def constant(config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int):
    """The learning rate, unchanged."""
    return optax.constant_schedule(config.learning_rate)


@SCHEDULES.register("cosine")
def cosine(config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int):
    """Cosine decay from the learning rate to 0 over the whole run."""
    return optax.cosine_decay_schedule(config.learning_rate, max(total_steps, 1))


@SCHEDULES.register("warmup_cosine")
def warmup_cosine(config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int):
    """Linear warm-up from 0 over ``warmup_epochs``, then cosine decay to 0."""
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    return optax.warmup_cosine_decay_schedule(
        0.0, config.learning_rate, warmup_steps, max(total_steps, warmup_steps + 1)
    )


@SCHEDULES.register("exponential")
def exponential(config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int):
    """Smooth decay: the rate is multiplied by ``lr_decay_rate`` every ``lr_decay_epochs``."""
    return optax.exponential_decay(
        config.learning_rate, int(config.lr_decay_epochs * steps_per_epoch), config.lr_decay_rate
    )


@SCHEDULES.register("step")
def step(config: ml_collections.ConfigDict, total_steps: int, steps_per_epoch: int):
    """Staircase decay: the rate drops by ``lr_decay_rate`` after each ``lr_decay_epochs``."""
    return optax.exponential_decay(
        config.learning_rate,
        int(config.lr_decay_epochs * steps_per_epoch),
        config.lr_decay_rate,
        staircase=True,
    )


@OPTIMIZERS.register("adam")
def adam(lr: optax.Schedule, config: ml_collections.ConfigDict):
    """Adam with Keras's epsilon (1e-7) and betas ``adam_b1`` / ``adam_b2``."""
    return optax.adam(lr, b1=config.adam_b1, b2=config.adam_b2, eps=1e-7)


@OPTIMIZERS.register("adamw")
def adamw(lr: optax.Schedule, config: ml_collections.ConfigDict):
    """Adam with decoupled weight decay ``weight_decay``."""
    return optax.adamw(
        lr, b1=config.adam_b1, b2=config.adam_b2, eps=1e-7, weight_decay=config.weight_decay
    )


@OPTIMIZERS.register("sgd")
def sgd(lr: optax.Schedule, config: ml_collections.ConfigDict):
    """SGD with optional ``momentum`` and ``nesterov``."""
    return optax.sgd(lr, momentum=config.momentum or None, nesterov=config.nesterov)


@OPTIMIZERS.register("rmsprop")
def rmsprop(lr: optax.Schedule, config: ml_collections.ConfigDict):
    """RMSprop with Keras's defaults (decay 0.9, epsilon 1e-7) and optional ``momentum``."""
    return optax.rmsprop(lr, decay=0.9, eps=1e-7, momentum=config.momentum or None)


@OPTIMIZERS.register("adadelta")
def adadelta(lr: optax.Schedule, config: ml_collections.ConfigDict):
    """Adadelta (rho 0.95, epsilon 1e-7 as in Keras)."""
    return optax.adadelta(lr, rho=0.95, eps=1e-7)


def create_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The learning-rate schedule named ``config.schedule`` for a run of ``num_epochs``."""
    config_schema.check("learning_rate", config.learning_rate)
    factory = SCHEDULES.get(config.schedule)
    return factory(config, config.num_epochs * steps_per_epoch, steps_per_epoch)


def schedule_differs(
    config: ml_collections.ConfigDict, other_epochs: int, steps_per_epoch: int, steps: int
) -> bool:
    """Whether ``config``'s schedule with ``num_epochs=other_epochs`` differs in steps [0, steps).

    A resumed run whose ``num_epochs`` changed trains on as a run of the new length would only
    if the learning rates of the steps already taken are the same under both lengths (true of
    ``constant``, ``exponential`` and ``step``; not of the cosine schedules, which span the run).
    """
    other = ml_collections.ConfigDict(config.to_dict())
    other.num_epochs = other_epochs
    taken = jnp.arange(steps)
    rates = [
        np.asarray(jax.vmap(create_schedule(c, steps_per_epoch))(taken)) for c in (config, other)
    ]
    return not np.array_equal(*rates)


def create_optimizer(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
    """The optimizer named ``config.optimizer``, driven by the configured schedule."""
    factory = OPTIMIZERS.get(config.optimizer)
    tx = factory(create_schedule(config, steps_per_epoch), config)
    if config.nan_policy == "skip_step":
        # Skip updates whose gradients are not finite (up to many in a row).
        tx = optax.apply_if_finite(tx, max_consecutive_errors=MAX_SKIPPED_STEPS)
    return tx
