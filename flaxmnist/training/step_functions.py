"""Pure train / eval / predict steps, and the device-resident loops built from them.

``train_step`` is the explicit mirror of a ``tf.GradientTape`` loop: preprocess, forward pass,
per-example loss, ``jax.value_and_grad``, optimizer update. Every input path (tf.data streaming,
device-resident ``lax.scan``, multi-device) runs this same function. Metrics are sums
(``loss``, ``correct``, ``count``) so they merge across batches and devices; divide at the end.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from flaxmnist.losses import BoundLoss
from flaxmnist.training.train_state import TrainState

Batch = dict[str, jax.Array]  # image uint8 [B, H, W, C], label int32 [B], optional mask [B]
Metrics = dict[str, jax.Array]  # loss / correct / count sums
METRIC_NAMES = ("loss", "correct", "count")
PreprocessFn = Callable[[jax.Array], jax.Array]
AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]  # (images, key) -> images


def normalize_images(images: jax.Array, *, mean: float = 0.0, std: float = 1.0) -> jax.Array:
    """uint8 pixels → float32 ``(x / 255 - mean) / std`` (mean 0, std 1 gives the [0, 1] scale)."""
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def metric_sums(
    logits: jax.Array,
    labels: jax.Array,
    per_example_loss: jax.Array,
    mask: jax.Array | None = None,
) -> Metrics:
    """Sums of loss and correct predictions over the (unmasked) examples, and their count."""
    if mask is None:
        mask = jnp.ones(labels.shape, jnp.float32)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return {
        "loss": jnp.sum(per_example_loss * mask),
        "correct": jnp.sum(correct * mask),
        "count": jnp.sum(mask),
    }


def train_step(
    state: TrainState,
    batch: Batch,
    rng: jax.Array,
    *,
    loss_fn: BoundLoss,
    preprocess: PreprocessFn,
    augment: AugmentFn | None = None,
) -> tuple[TrainState, Metrics]:
    """One optimisation step on ``batch``; the dropout key is ``fold_in(rng, state.step)``.

    ``loss_fn`` (as :func:`flaxmnist.losses.get_loss` returns it) gets ``step=state.step``, the
    step before this update. ``augment`` (optional) transforms the preprocessed images with a key
    derived from the dropout key.
    """
    images = preprocess(batch["image"])
    dropout_rng = jax.random.fold_in(rng, state.step)
    if augment is not None:
        images = augment(images, jax.random.fold_in(dropout_rng, 1))

    def loss_and_outputs(params):
        variables = {**state.variables(), "params": params}  # train the live params, not the EMA
        logits, updates = state.apply_fn(
            variables, images, train=True, rngs={"dropout": dropout_rng}, mutable=["batch_stats"]
        )
        per_example_loss = loss_fn(logits, batch["label"], step=state.step)
        return per_example_loss.mean(), (logits, per_example_loss, updates)

    grad_fn = jax.value_and_grad(loss_and_outputs, has_aux=True)
    (_, (logits, per_example_loss, updates)), grads = grad_fn(state.params)
    state = state.apply_gradients(
        grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats)
    ).update_ema()
    return state, metric_sums(logits, batch["label"], per_example_loss)


def shifted_views(images: jax.Array, shift: int) -> jax.Array:
    """``images`` [N, H, W, C] and its copies moved ``shift`` pixels down, up, right and left.

    Returns [5, N, H, W, C]; pixels moved in from outside the image are 0 (black).
    """
    h, w = images.shape[1:3]
    padded = jnp.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
    offsets = ((0, 0), (shift, 0), (-shift, 0), (0, shift), (0, -shift))
    return jnp.stack(
        [padded[:, shift - dy : shift - dy + h, shift - dx : shift - dx + w] for dy, dx in offsets]
    )


def predict_step(
    state: TrainState, images: jax.Array, *, preprocess: PreprocessFn, tta_shift: int = 0
) -> jax.Array:
    """Inference-mode logits for uint8 ``images``.

    With ``tta_shift > 0`` (test-time augmentation) it returns the log of the softmax averaged
    over the image and its four copies shifted by ``tta_shift`` pixels (see :func:`shifted_views`):
    log-probabilities, which argmax and cross-entropy treat like logits.
    """
    if not tta_shift:
        return state.apply_fn(state.variables(), preprocess(images), train=False)
    views = shifted_views(images, tta_shift)
    flat = views.reshape(-1, *images.shape[1:])
    logits = state.apply_fn(state.variables(), preprocess(flat), train=False)
    # images.shape[0], not len(images): a batch of unknown size (an export) has no len.
    log_probs = jax.nn.log_softmax(logits.reshape(len(views), images.shape[0], -1))
    return jax.nn.logsumexp(log_probs, axis=0) - jnp.log(len(views))


def eval_step(
    state: TrainState,
    batch: Batch,
    *,
    loss_fn: BoundLoss,
    preprocess: PreprocessFn,
    tta_shift: int = 0,
) -> Metrics:
    """Metric sums on ``batch``; padded examples (``mask`` 0) do not count.

    The loss gets ``step=state.step``, as in :func:`train_step`.
    """
    logits = predict_step(state, batch["image"], preprocess=preprocess, tta_shift=tta_shift)
    per_example_loss = loss_fn(logits, batch["label"], step=state.step)
    return metric_sums(logits, batch["label"], per_example_loss, batch.get("mask"))


def train_on_indices(
    state: TrainState,
    images: jax.Array,
    labels: jax.Array,
    batch_indices: jax.Array,
    rng: jax.Array,
    *,
    step_fn: Callable,
) -> tuple[TrainState, Metrics]:
    """Runs ``step_fn`` over device-resident data, one batch per row of ``batch_indices``.

    Returns the final state and the per-step metrics stacked along a leading axis.
    """

    def body(state, indices):
        batch = {"image": images[indices], "label": labels[indices]}
        return step_fn(state, batch, rng)

    return jax.lax.scan(body, state, batch_indices)


def train_on_batches(
    state: TrainState, batches: Batch, rng: jax.Array, *, step_fn: Callable
) -> tuple[TrainState, Metrics]:
    """Runs ``step_fn`` over streamed batches stacked along a leading axis ([steps, B, ...]).

    Returns the final state and the per-step metrics stacked along a leading axis.
    """
    return jax.lax.scan(lambda carry, batch: step_fn(carry, batch, rng), state, batches)


def evaluate_batches(state: TrainState, batches: Batch, *, step_fn: Callable) -> Metrics:
    """Sums ``step_fn`` metrics over stacked, padded batches ([num_batches, B, ...] arrays)."""

    def body(totals, batch):
        metrics = step_fn(state, batch)
        return jax.tree_util.tree_map(jnp.add, totals, metrics), None

    zeros = {name: jnp.float32(0) for name in METRIC_NAMES}
    totals, _ = jax.lax.scan(body, zeros, batches)
    return totals


@dataclasses.dataclass(frozen=True)
class StepFunctions:
    """The jitted steps for one loss and preprocessing; train functions donate the state."""

    train_step: Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]
    eval_step: Callable[[TrainState, Batch], Metrics]
    predict_step: Callable[[TrainState, jax.Array], jax.Array]
    train_on_indices: Callable[..., tuple[TrainState, Metrics]]
    train_on_batches: Callable[..., tuple[TrainState, Metrics]]
    evaluate_batches: Callable[[TrainState, Batch], Metrics]


def make_step_functions(
    loss_fn: BoundLoss,
    preprocess: PreprocessFn,
    augment: AugmentFn | None = None,
    tta_shift: int = 0,
) -> StepFunctions:
    """Binds the loss, preprocessing and augmentation into the steps and jit-compiles them.

    Args:
      loss_fn: a per-example loss as :func:`flaxmnist.losses.get_loss` returns it.
      preprocess: maps uint8 images [N, H, W, C] to the model's float input
        (e.g. :func:`normalize_images`).
      augment: ``fn(images, key) -> images`` applied to training batches only, or None.
      tta_shift: > 0 averages predictions over the image shifted by up to this many pixels in
        every evaluation and prediction (test-time augmentation).

    Returns:
      :class:`StepFunctions`: ``train_step(state, batch, key) -> (state, metrics)`` (donates
      ``state``), ``eval_step(state, batch) -> metric sums``, ``predict_step(state, images) ->
      logits``, and the ``lax.scan`` loops ``train_on_indices`` (device-resident data),
      ``train_on_batches`` (streamed, stacked batches) and ``evaluate_batches``.
      A batch is a dict of ``image`` uint8 [B, H, W, C], ``label`` int32 [B] and ``mask``
      bool [B] (padding examples are masked out of the sums).

    Example:
      >>> from flaxmnist import losses
      >>> from flaxmnist.training import step_functions
      >>> fns = step_functions.make_step_functions(
      ...     losses.get_loss("cross_entropy"), step_functions.normalize_images
      ... )
      >>> sorted(vars(fns))
      ['eval_step', 'evaluate_batches', 'predict_step', 'train_on_batches', 'train_on_indices',
       'train_step']
    """
    train = functools.partial(train_step, loss_fn=loss_fn, preprocess=preprocess, augment=augment)
    evaluate = functools.partial(
        eval_step, loss_fn=loss_fn, preprocess=preprocess, tta_shift=tta_shift
    )
    predict = functools.partial(predict_step, preprocess=preprocess, tta_shift=tta_shift)
    return StepFunctions(
        train_step=jax.jit(train, donate_argnums=0),
        eval_step=jax.jit(evaluate),
        predict_step=jax.jit(predict),
        train_on_indices=jax.jit(
            functools.partial(train_on_indices, step_fn=train), donate_argnums=0
        ),
        train_on_batches=jax.jit(
            functools.partial(train_on_batches, step_fn=train), donate_argnums=0
        ),
        evaluate_batches=jax.jit(functools.partial(evaluate_batches, step_fn=evaluate)),
    )
