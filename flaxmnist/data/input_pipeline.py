"""Input pipelines: the tfds (tf.data) streaming pipeline, and what every pipeline shares.

Every pipeline gives batches of ``{"image": uint8 [B, H, W, C], "label": int32 [B]}`` (plus
``"mask"`` for evaluation, the last batch padded and masked), trains epoch ``e`` in the order
:func:`epoch_order` of the run's data key and ``e``, and takes the run's splits at their
positions in the stored splits (:func:`take_splits`): one seed, the same batches on every
pipeline. How and why: ``docs/data.md``. The ``grain`` pipeline is
:mod:`flaxmnist.data.grain_pipeline`; the device-resident one is ``training/feeders.py``'s.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import jax
import numpy as np

from flaxmnist.data import tfds_prepare
from flaxmnist.data.datasets import STORED_SPLITS, ArraySplit, import_tensorflow, import_tfds
from flaxmnist.errors import DataError

if TYPE_CHECKING:
    import tensorflow as tf
    import tensorflow_datasets as tfds

PREFETCH_BATCHES = 2
Held = TypeVar("Held")  # a split as a pipeline holds it (CachedSplit, ArraySplit)


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


# --------------------------------------------------------------------------- tfds streaming


@dataclasses.dataclass(frozen=True)
class CachedSplit:
    """A split held by tf.data as one cached element: ``{"image": [N, ...], "label": [N]}``.

    Attributes:
      dataset: the one-element ``tf.data.Dataset``; its cache fills on the first full pass.
      size: N, the number of examples.
    """

    dataset: tf.data.Dataset
    size: int

    def __len__(self) -> int:
        return self.size


def stored_split(builder: tfds.core.DatasetBuilder, split: str) -> CachedSplit:
    """Reads tfds split ``split`` once, in its stored order, decoded and cached.

    Args:
      builder: a prepared tfds builder with ``image`` and ``label`` features.
      split: the tfds split's name.

    Returns:
      The split, its cache filled by this call's pass.

    Raises:
      DataError: the split is not prepared in the builder's data dir.
    """
    tfds = import_tfds(needs_tensorflow="the tfds input pipeline")
    tf = import_tensorflow()

    def cast(example: dict) -> dict:
        image = example["image"]
        image = image[..., None] if len(image.shape) == 2 else image
        return {"image": tf.cast(image, tf.uint8), "label": tf.cast(example["label"], tf.int32)}

    # tfds would cache a small split itself (autocache); it is cached decoded, once, below.
    read_config = tfds.ReadConfig(try_autocache=False)
    try:
        examples = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
    except AssertionError:  # tfds's way of saying "not downloaded and prepared yet"
        raise DataError(
            f"tfds dataset {builder.name!r} is not prepared in {builder.data_dir}: "
            f"run `tfds build {builder.name}` and pass its data dir as --config.data_dir"
        ) from None
    size = int(examples.cardinality())  # tfds knows it; batch would allocate a larger guess
    whole = examples.map(cast, num_parallel_calls=tf.data.AUTOTUNE).batch(size).cache()
    fill(whole)
    return CachedSplit(whole, size)


def fill(dataset: tf.data.Dataset) -> None:
    """Reads a ``CachedSplit.dataset`` once, which fills its caches (not in epoch 1)."""
    for _ in dataset:
        pass


def select(split: CachedSplit, positions: np.ndarray) -> CachedSplit:
    """The examples of ``split`` at ``positions``, gathered in the tf.data graph and cached.

    Args:
      split: a cached split.
      positions: example positions in it.

    Returns:
      A new cached split, its cache filled.
    """
    tf = import_tensorflow()
    indices = tf.constant(positions, tf.int32)
    taken = split.dataset.map(lambda whole: {k: tf.gather(v, indices) for k, v in whole.items()})
    selected = CachedSplit(taken.cache(), len(positions))
    fill(selected.dataset)
    return selected


def take_splits(
    positions: dict[str, np.ndarray],
    read: Callable[[str], Held],
    take: Callable[[Held, np.ndarray], Held],
) -> dict[str, Held]:
    """The run's splits, taken at their positions from the stored splits they come from.

    Args:
      positions: each run split's positions in its stored split (:data:`STORED_SPLITS`).
      read: a stored split's name -> that split as the pipeline holds it; called once each.
      take: (a held split, positions) -> its examples at those positions.

    Returns:
      Each run split as ``take`` gives it, or the stored split itself where the positions are
      all of it, in order.

    Raises:
      DataError: a stored split's size is not the sum of its run splits' (the run's splits
        come from other files than the ones read here).
    """
    opened = {}
    for stored in dict.fromkeys(STORED_SPLITS[name] for name in positions):
        held = read(stored)
        mine = {name: p for name, p in positions.items() if STORED_SPLITS[name] == stored}
        expected = sum(len(p) for p in mine.values())
        if len(held) != expected:
            raise DataError(
                f"the stored {stored} split holds {len(held)} examples where the run's data has "
                f"{expected}: the tfds files and the IDX files differ"
            )
        for name, p in mine.items():
            opened[name] = held if np.array_equal(p, np.arange(len(held))) else take(held, p)
    return opened


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


def tf_train_dataset(split: CachedSplit, plan: TrainEpoch) -> tf.data.Dataset:
    """One training epoch: full batches in the order of :func:`epoch_order`, prefetched.

    Args:
      split: the cached training split.
      plan: which batches, cut to which rows, stacked how.

    Returns:
      A dataset of ``{"image", "label"}`` batches of ``rows`` (or all ``batch_size``) examples.
    """
    tf = import_tensorflow()
    indices = tf.data.Dataset.from_tensor_slices(plan.batch_indices(split.size))

    def gather(whole: dict, batch_indices: tf.Tensor) -> dict:
        return {key: tf.gather(value, batch_indices) for key, value in whole.items()}

    batches = tf.data.Dataset.zip(split.dataset.repeat(), indices).map(gather)
    if plan.steps_per_element is not None:
        batches = batches.batch(plan.steps_per_element)
    return lean(batches).prefetch(PREFETCH_BATCHES)


def tf_eval_dataset(
    split: CachedSplit, batch_size: int, rows: slice | None = None
) -> tf.data.Dataset:
    """The evaluation batches: in order, the last one padded to ``batch_size`` and masked.

    Args:
      split: a cached evaluation split.
      batch_size: the global evaluation batch size.
      rows: this process's rows of each padded global batch (None: all).

    Returns:
      A dataset of ``{"image", "label", "mask"}`` batches; ``mask`` is 0 on padding.
    """
    tf = import_tensorflow()
    num_batches = -(-split.size // batch_size)
    pad = num_batches * batch_size - split.size

    def to_batches(whole: dict) -> dict:
        whole = {**whole, "mask": tf.ones([split.size], tf.float32)}
        batches = {}
        for key, value in whole.items():
            padded = tf.pad(value, [[0, pad]] + [[0, 0]] * (len(value.shape) - 1))
            batched = tf.reshape(padded, [num_batches, batch_size, *value.shape[1:]])
            batches[key] = batched if rows is None else batched[:, rows]
        return batches

    return lean(split.dataset.map(to_batches).unbatch()).prefetch(PREFETCH_BATCHES)


def lean(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` with a private one-thread pool: the cores stay with XLA, which runs the steps."""
    tf = import_tensorflow()
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


@dataclasses.dataclass(frozen=True)
class StreamingSource:
    """How a streaming pipeline reads a dataset: what ``feeders.StreamingFeeder`` is given.

    Attributes:
      find_builder: (name, data_dir) -> the run's tfds builder, prepared when it is not yet.
      read_split: (builder, stored split's name) -> that split as the pipeline holds it.
      take: (a held split, positions) -> its examples at those positions.
      train_batches: (split, plan) -> a training epoch's host batches, those ``plan`` names.
      eval_batches: (split, batch_size, rows) -> an evaluation's host batches, padded and masked.
    """

    find_builder: Callable[[str, str | None], Any]
    read_split: Callable[[Any, str], Any]
    take: Callable[[Any, np.ndarray], Any]
    train_batches: Callable[[Any, TrainEpoch], Iterable[Any]]
    eval_batches: Callable[[Any, int, slice | None], Iterable[Any]]

    def open_splits(self, builder: Any, positions: dict[str, np.ndarray]) -> dict[str, Any]:
        """The run's splits at their ``positions`` in ``builder``'s files (:func:`take_splits`)."""
        return take_splits(positions, functools.partial(self.read_split, builder), self.take)


SOURCE = StreamingSource(  # the tfds pipeline: TFRecord files through tf.data
    find_builder=tfds_prepare.streaming_builder,
    read_split=stored_split,
    take=select,
    train_batches=lambda split, plan: tf_train_dataset(split, plan).as_numpy_iterator(),
    eval_batches=lambda split, size, rows: tf_eval_dataset(split, size, rows).as_numpy_iterator(),
)
