"""Input pipelines: the tfds (tf.data) streaming pipeline, and what every pipeline shares.

Every pipeline gives batches of ``{"image": uint8 [B, H, W, C], "label": int32 [B]}`` (plus
``"mask"`` for evaluation, the last batch padded and masked), trains epoch ``e`` in the order
:func:`epoch_order` of the run's data key and ``e``, and holds the run's splits as host arrays
taken at their positions in the stored splits (``datasets.take_splits``): one seed, the same
batches on every pipeline. How and why: ``docs/data.md``. The ``grain`` pipeline is
:mod:`flaxmnist.data.grain_pipeline`; the device-resident one is ``training/feeders.py``'s.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from flaxmnist.data import tfds_prepare
from flaxmnist.data.datasets import ArraySplit, import_tensorflow, read_tfds_split, take_splits

if TYPE_CHECKING:
    import tensorflow as tf

PREFETCH_BATCHES = 2


def pad_to_batches(
    split: ArraySplit, batch_size: int, rows: slice | None = None
) -> dict[str, np.ndarray]:
    """Stacks ``split`` into ``[num_batches, batch_size, ...]`` arrays: the evaluation batches.

    The last batch is zero-padded; ``mask`` is 1 for real examples and 0 for padding. ``rows``
    keeps this process's rows of each padded global batch (None: all).
    """
    num_batches = -(-len(split) // batch_size)
    pad = num_batches * batch_size - len(split)

    def stack(array: np.ndarray) -> np.ndarray:
        padded = np.concatenate([array, np.zeros((pad, *array.shape[1:]), array.dtype)])
        return padded.reshape(num_batches, batch_size, *array.shape[1:])

    arrays = {"image": split.images, "label": split.labels, "mask": np.ones(len(split), np.float32)}
    return {key: stack(array)[:, rows or slice(None)] for key, array in arrays.items()}


@functools.partial(jax.jit, static_argnames=("num_examples", "batch_size"))
def epoch_order(rng: jax.Array, epoch: int, *, num_examples: int, batch_size: int) -> jax.Array:
    """The random order of ``epoch`` as ``[steps, batch_size]`` example indices: every pipeline's.

    The ``num_examples % batch_size`` examples left over are skipped this epoch (a different
    random subset each epoch), so every training batch has the same shape.

    Args:
      rng: the run's data key.
      epoch: the epoch (from 1).
      num_examples: the training split's size.
      batch_size: the global batch size.

    Returns:
      The indices, on the default device (the streaming pipelines copy them to the host).
    """
    steps = num_examples // batch_size
    order = jax.random.permutation(jax.random.fold_in(rng, epoch), num_examples)
    return order[: steps * batch_size].reshape(steps, batch_size)


@dataclasses.dataclass(frozen=True)
class TrainEpoch:
    """Which batches of a training epoch a streaming pipeline gives, and how it groups them.

    Attributes:
      batch_size: the global batch size.
      rng: the run's data key (:func:`epoch_order`'s).
      epoch: the epoch.
      start_step: batches of the epoch already trained (a resumed run): they are not read.
      rows: this process's rows of each global batch (None: all).
      steps_per_element: batches stacked per element into ``[steps, rows, ...]`` arrays (the
        last element holds the batches left over); None: one batch per element.
    """

    batch_size: int
    rng: jax.Array
    epoch: int
    start_step: int = 0
    rows: slice | None = None
    steps_per_element: int | None = None

    def batch_indices(self, num_examples: int) -> np.ndarray:
        """The example indices of the batches to give, ``[steps, rows]``, in :func:`epoch_order`.

        Args:
          num_examples: the training split's size.

        Returns:
          The full batches from ``start_step`` on, each cut to ``rows``.
        """
        order = epoch_order(
            self.rng, self.epoch, num_examples=num_examples, batch_size=self.batch_size
        )
        order = np.asarray(order)[self.start_step :]
        return order if self.rows is None else order[:, self.rows]


@dataclasses.dataclass(frozen=True)
class StreamingSource:
    """How a streaming pipeline reads a dataset: what ``feeders.StreamingFeeder`` is given.

    Attributes:
      find_builder: (name, data_dir) -> the run's tfds builder, prepared when it is not yet.
      read_split: (builder, stored split's name) -> that split as host arrays.
      train_batches: (split, plan) -> a training epoch's host batches, those ``plan`` names.
      eval_batches: (split, batch_size, rows) -> an evaluation's host batches, padded and masked.
    """

    find_builder: Callable[[str, str | None], Any]
    read_split: Callable[[Any, str], ArraySplit]
    train_batches: Callable[[ArraySplit, TrainEpoch], Iterable[Any]]
    eval_batches: Callable[[ArraySplit, int, slice | None], Iterable[Any]]

    def open_splits(self, builder: Any, positions: dict[str, np.ndarray]) -> dict[str, ArraySplit]:
        """The run's splits at their ``positions`` in ``builder``'s files (``take_splits``)."""
        return take_splits(positions, functools.partial(self.read_split, builder))


# --------------------------------------------------------------------------- tfds streaming


def tf_train_dataset(split: ArraySplit, plan: TrainEpoch) -> tf.data.Dataset:
    """One training epoch: each element one ``tf.gather`` of the batches ``plan`` names, prefetched.

    Args:
      split: the training split, as host arrays.
      plan: which batches, cut to which rows, stacked how.

    Returns:
      A dataset of ``{"image", "label"}`` batches of ``rows`` (or all ``batch_size``) examples.
    """
    tf = import_tensorflow()
    images, labels = tf.convert_to_tensor(split.images), tf.convert_to_tensor(split.labels)
    indices = tf.data.Dataset.from_tensor_slices(plan.batch_indices(len(split)))
    if plan.steps_per_element is not None:
        indices = indices.batch(plan.steps_per_element)
    return prefetched(
        indices.map(lambda i: {"image": tf.gather(images, i), "label": tf.gather(labels, i)})
    )


def tf_eval_dataset(
    split: ArraySplit, batch_size: int, rows: slice | None = None
) -> tf.data.Dataset:
    """The evaluation batches of :func:`pad_to_batches` as a prefetched ``tf.data.Dataset``."""
    tf = import_tensorflow()
    return prefetched(tf.data.Dataset.from_tensor_slices(pad_to_batches(split, batch_size, rows)))


def prefetched(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` read ahead on a private one-thread pool: the cores stay with XLA's steps."""
    tf = import_tensorflow()
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options).prefetch(PREFETCH_BATCHES)


SOURCE = StreamingSource(  # the tfds pipeline: TFRecord files through tf.data
    find_builder=tfds_prepare.streaming_builder,
    read_split=read_tfds_split,
    train_batches=lambda split, plan: tf_train_dataset(split, plan).as_numpy_iterator(),
    eval_batches=lambda split, size, rows: tf_eval_dataset(split, size, rows).as_numpy_iterator(),
)
