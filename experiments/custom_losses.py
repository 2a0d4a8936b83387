"""Example of user-side losses: registered here, used from the command line, no package edits.

python -m flaxmnist.train --config.import_modules=experiments/custom_losses.py \
        --config.loss=focal --config.loss_options=gamma=2.0
"""

import jax
import jax.numpy as jnp

from flaxmnist import losses


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
