"""The training state: Flax's TrainState plus BatchNorm statistics."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from flaxmnist import models

# XLA options for the programs a run executes once or once an epoch (the state's initialisation,
# an epoch's order): LLVM's cheapest level compiles them several times faster, to the same bits
# (tests/test_feeders.py), where only compile time counts. The steps keep XLA's defaults.
QUICK_COMPILE = {"xla_backend_optimization_level": 0}


class TrainState(train_state.TrainState):
    """Flax's TrainState plus ``batch_stats`` and ``ema_params``.

    ``batch_stats`` is an empty dict for models without BatchNorm; ``ema_params`` (an exponential
    moving average of the parameters) is None unless ``ema_decay`` is set.
    """

    batch_stats: Any = None
    ema_params: Any = None
    ema_decay: float = struct.field(pytree_node=False, default=0.0)

    def variables(self) -> dict:
        """The variables for inference: the EMA parameters when kept, and batch_stats if any."""
        params = self.params if self.ema_params is None else self.ema_params
        if self.batch_stats:
            return {"params": params, "batch_stats": self.batch_stats}
        return {"params": params}

    def update_ema(self) -> TrainState:
        """``ema = decay * ema + (1 - decay) * params`` (no-op without an EMA)."""
        if self.ema_params is None:
            return self
        ema = optax.incremental_update(self.params, self.ema_params, 1.0 - self.ema_decay)
        return self.replace(ema_params=ema)


def initial_state(
    model: nn.Module,
    image_shape: tuple[int, ...],
    tx: optax.GradientTransformation,
    rng: jax.Array,
    ema_decay: float = 0.0,
) -> TrainState:
    """The state :func:`create_train_state` returns, as a traceable function.

    ``jax.eval_shape`` of it gives the shapes ``load_run`` sizes and restores into.
    """
    variables = models.init_variables(model, image_shape, rng)
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        ema_decay=ema_decay,
    )
    # A strong int32 step, as a restored checkpoint has (Flax's weak-typed 0 would make a
    # resumed run compile its steps again).
    state = state.replace(step=jnp.zeros((), jnp.int32))
    return state.replace(ema_params=state.params) if ema_decay else state


def create_train_state(
    model: nn.Module,
    image_shape: tuple[int, ...],
    tx: optax.GradientTransformation,
    rng: jax.Array,
    ema_decay: float = 0.0,
) -> TrainState:
    """Initialises the model's variables from ``rng`` and the optimizer state for them.

    With ``ema_decay > 0`` the state also keeps an EMA of the parameters, used for evaluation.
    """
    # One jitted program (a compilation-cache hit on reruns) instead of one dispatch per optimizer
    # leaf, each of which would add to start-up.
    create = functools.partial(initial_state, model, image_shape, tx, ema_decay=ema_decay)
    state = jax.jit(create, compiler_options=QUICK_COMPILE)(rng)
    if not ema_decay:
        return state
    # A copy made outside jit: donating the state must not see the same buffer twice.
    return state.replace(ema_params=jax.tree_util.tree_map(jnp.copy, state.params))
