"""The training state: Flax's TrainState plus BatchNorm statistics."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import optax
from flax.training import train_state

from flaxmnist import models


class TrainState(train_state.TrainState):
    """``step``, ``params``, ``opt_state`` and ``apply_fn``/``tx``, plus ``batch_stats``.

    ``batch_stats`` is an empty dict for models without BatchNorm.
    """

    batch_stats: Any = None

    def variables(self) -> dict:
        """The variables ``apply_fn`` expects: params, and batch_stats when the model has them."""
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}


def create_train_state(
    model: nn.Module,
    image_shape: tuple[int, ...],
    tx: optax.GradientTransformation,
    rng: jax.Array,
) -> TrainState:
    """Initialises the model's variables from ``rng`` and the optimizer state for them."""
    variables = models.init_variables(model, image_shape, rng)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
    )
