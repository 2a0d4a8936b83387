"""Example of user-side losses: registered here, used from the command line, no package edits.

python -m flaxmnist.train --config.import_modules=experiments/custom_losses.py \
        --config.loss=focal --config.loss_options=gamma=2.0
python -m flaxmnist.train --config.import_modules=experiments/custom_losses.py \
        --config.loss=scheduled_smoothing --config.loss_options=start=0.2,end=0.0,steps=2000

``scheduled_smoothing`` shows a loss that changes during training: it declares the keyword-only
``step`` parameter and receives the optimizer step (see :mod:`flaxmnist.losses`).
"""

import jax
import jax.numpy as jnp

from flaxmnist import losses
from flaxmnist.errors import ConfigError


@losses.register("focal")
def focal_loss(logits: jax.Array, labels: jax.Array, *, gamma: float = 2.0) -> jax.Array:
    """Focal loss (Lin et al., 2017): cross-entropy scaled by (1 - p_true) ** gamma.

    gamma = 0 gives plain cross-entropy; larger gamma down-weights easy, confident examples.
    """
    log_p = jax.nn.log_softmax(logits)
    log_p_true = jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
    return -((1.0 - jnp.exp(log_p_true)) ** gamma) * log_p_true


@losses.register("hinge")
def multiclass_hinge(logits: jax.Array, labels: jax.Array, *, margin: float = 1.0) -> jax.Array:
    """Crammer-Singer multi-class hinge (Keras ``categorical_hinge``).

    max(0, margin + max_{j != y} z_j - z_y): zero once the true logit leads every other by
    ``margin``.
    """
    true_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    return jnp.maximum(0.0, margin + others.max(axis=-1) - true_logit)


@losses.register("scheduled_smoothing")
def scheduled_smoothing(
    logits: jax.Array,
    labels: jax.Array,
    *,
    step: jax.Array | int,
    start: float = 0.2,
    end: float = 0.0,
    steps: int = 2000,
) -> jax.Array:
    """Label-smoothed cross-entropy with the smoothing annealed linearly over training.

    smoothing = start + (end - start) * min(step / steps, 1): ``start`` at optimizer step 0,
    ``end`` from step ``steps`` on. The default starts with strong smoothing (0.2) and ends with
    plain cross-entropy.

    Raises:
      ConfigError: if ``steps`` is not positive.
    """
    if steps <= 0:
        raise ConfigError(f"scheduled_smoothing: steps must be positive, got {steps}")
    smoothing = start + (end - start) * jnp.minimum(step / steps, 1.0)
    return losses.categorical_cross_entropy(logits, labels, label_smoothing=smoothing)
