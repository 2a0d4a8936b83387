"""Input pipelines: tf.data streaming and the device-resident fast path.

Both produce batches of ``{"image": uint8 [B, H, W, C], "label": int32 [B]}`` (plus ``"mask"`` for
evaluation, where the last batch is padded to full size and masked so every example counts once).
The training order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees the same
batches as an uninterrupted one.

* tf.data (``input_pipeline="tfds"``): ``from_tensor_slices`` → seeded shuffle → batch →
  prefetch, streamed to the jitted ``train_step`` one batch at a time.
* device-resident (``input_pipeline="device"``): the whole split is copied to the device once; each
  epoch draws an on-device permutation and ``lax.scan`` runs ``train_step`` over it in chunks.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from flaxmnist import config_validation
from flaxmnist.data.datasets import ArraySplit

PIPELINES = config_validation.INPUT_PIPELINES


def import_tensorflow():
    """Imports TensorFlow with accelerators hidden, so it never takes device memory from JAX."""
    import tensorflow as tf

    for kind in ("GPU", "TPU"):
        tf.config.set_visible_devices([], kind)
    return tf


def epoch_seed(seed: int, epoch: int) -> int:
    """A 31-bit shuffle seed for ``epoch`` derived from the run's ``seed``."""
    return int(np.random.default_rng([seed, epoch]).integers(2**31 - 1))


def pad_to_batches(split: ArraySplit, batch_size: int) -> dict[str, np.ndarray]:
    """Stacks ``split`` into ``[num_batches, batch_size, ...]`` arrays.

    The last batch is zero-padded; ``mask`` is 1 for real examples and 0 for padding.
    """
    num_batches = -(-len(split) // batch_size)
    pad = num_batches * batch_size - len(split)

    def stack(array: np.ndarray) -> np.ndarray:
        padded = np.concatenate([array, np.zeros((pad, *array.shape[1:]), array.dtype)])
        return padded.reshape(num_batches, batch_size, *array.shape[1:])

    mask = np.ones(len(split), np.float32)
    return {"image": stack(split.images), "label": stack(split.labels), "mask": stack(mask)}


@functools.partial(jax.jit, static_argnames=("num_examples", "batch_size"))
def epoch_batch_indices(
    rng: jax.Array, epoch: int, *, num_examples: int, batch_size: int
) -> jax.Array:
    """An on-device random order for ``epoch`` as ``[steps, batch_size]`` example indices.

    The ``num_examples % batch_size`` examples left over are skipped this epoch (a different
    random subset each epoch), so every training batch has the same shape.
    """
    steps = num_examples // batch_size
    order = jax.random.permutation(jax.random.fold_in(rng, epoch), num_examples)
    return order[: steps * batch_size].reshape(steps, batch_size)


def keep_rows(ds, rows: slice | None):
    """``ds`` with each batch cut to ``rows`` (this process's share of a global batch)."""
    if rows is None:
        return ds
    return ds.map(lambda batch: {key: value[rows] for key, value in batch.items()})


def tf_train_dataset(
    split: ArraySplit, batch_size: int, *, seed: int, epoch: int, rows: slice | None = None
):
    """The tf.data pipeline for one training epoch: seeded shuffle, full batches, prefetch.

    ``batch_size`` is the global batch; with ``rows`` each batch keeps only those rows, so every
    process of a multi-process run reads its own slice of the same global order.
    """
    tf = import_tensorflow()
    ds = tf.data.Dataset.from_tensor_slices({"image": split.images, "label": split.labels})
    ds = ds.shuffle(len(split), seed=epoch_seed(seed, epoch), reshuffle_each_iteration=False)
    ds = keep_rows(ds.batch(batch_size, drop_remainder=True), rows)
    return ds.prefetch(tf.data.AUTOTUNE)


def tf_eval_dataset(split: ArraySplit, batch_size: int, rows: slice | None = None):
    """The tf.data evaluation pipeline: in order, last batch padded to ``batch_size`` and masked.

    ``rows`` keeps a slice of each padded batch, as in :func:`tf_train_dataset`.
    """
    tf = import_tensorflow()
    ds = tf.data.Dataset.from_tensor_slices(
        {"image": split.images, "label": split.labels, "mask": np.ones(len(split), np.float32)}
    )

    def pad_batch(batch):
        missing = batch_size - tf.shape(batch["label"])[0]
        return {
            key: tf.pad(value, [[0, missing]] + [[0, 0]] * (len(value.shape) - 1))
            for key, value in batch.items()
        }

    return keep_rows(ds.batch(batch_size).map(pad_batch), rows).prefetch(tf.data.AUTOTUNE)
