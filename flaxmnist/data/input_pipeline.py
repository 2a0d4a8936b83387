"""Input pipelines: tfds streaming and the device-resident fast path.

Both produce batches of ``{"image": uint8 [B, H, W, C], "label": int32 [B]}`` (plus ``"mask"`` for
evaluation, where the last batch is padded to full size and masked so every example counts once).
The training order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees the same
batches as an uninterrupted one.

* tfds (``input_pipeline="tfds"``): each tfds split is read once through ``builder.as_dataset``,
  decoded, and cached by tf.data as one element holding the whole split; the examples of the run's
  train, validation and test splits are found in it by their (label, image bytes). An epoch then
  gathers batches from the cache in a seeded random order, on TensorFlow's threads, ahead of
  ``train_step``: only per-batch work, no per-example Python.
* device-resident (``input_pipeline="device"``): the whole split is copied to the device once; each
  epoch draws an on-device permutation and ``lax.scan`` runs ``train_step`` over it in chunks.

The ``grain`` pipeline (:mod:`flaxmnist.data.grain_pipeline`, no TensorFlow) reads the same tfds
dataset's ArrayRecord files and shares :func:`match_splits`, :func:`epoch_order` and
:func:`pad_to_batches` with the tfds pipeline: both give the same batches.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import jax
import numpy as np

from flaxmnist import config_validation
from flaxmnist.data.datasets import ArraySplit, import_tensorflow, import_tfds
from flaxmnist.errors import DataError

if TYPE_CHECKING:
    import tensorflow as tf
    import tensorflow_datasets as tfds

PIPELINES = config_validation.INPUT_PIPELINES
TFDS_SPLITS = {"train": "train", "validation": "train", "test": "test"}  # run split -> tfds split
PREFETCH_BATCHES = 2
_HASH_CHUNK = 8192  # examples hashed or compared at a time
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)
_MIX = (
    (np.uint64(30), np.uint64(0xBF58476D1CE4E5B9)),
    (np.uint64(27), np.uint64(0x94D049BB133111EB)),
)
Held = TypeVar("Held")  # a split as a pipeline holds it (CachedSplit, ArraySplit)


def epoch_seed(seed: int, epoch: int) -> int:
    """A 31-bit shuffle seed for ``epoch`` derived from the run's ``seed``.

    Args:
      seed: the run's seed.
      epoch: the epoch (from 1).

    Returns:
      A seed that differs between ``(seed, epoch)`` pairs and repeats for equal ones.
    """
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


def stored_split(builder: tfds.core.DatasetBuilder, split: str) -> tuple[CachedSplit, ArraySplit]:
    """Reads tfds split ``split`` once, in tfds's stored order, decoded and cached.

    Args:
      builder: a prepared tfds builder with ``image`` and ``label`` features.
      split: the tfds split's name.

    Returns:
      The split (its cache filled by this call's pass) and that pass's examples as arrays.

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
    arrays = read_examples(whole)
    return CachedSplit(whole, len(arrays)), arrays


def read_examples(dataset: tf.data.Dataset) -> ArraySplit:
    """The examples of a one-element split dataset as numpy arrays (a full pass: fills caches).

    Args:
      dataset: a ``CachedSplit.dataset``.

    Returns:
      Its images and labels, in its order.
    """
    (whole,) = list(dataset.as_numpy_iterator())
    return ArraySplit(whole["image"], whole["label"])


def example_keys(split: ArraySplit) -> np.ndarray:
    """One comparable key per example: its label's and image's bytes, as a numpy void scalar.

    Args:
      split: the examples.

    Returns:
      A [N] array of void keys; equal keys mean equal (label, image) pairs.
    """
    labels = split.labels.astype("<i4").view(np.uint8).reshape(len(split), 4)
    rows = np.concatenate([labels, split.images.reshape(len(split), -1)], axis=1)
    return np.ascontiguousarray(rows).view(f"V{rows.shape[1]}").ravel()


def example_hashes(split: ArraySplit) -> np.ndarray:
    """A 64-bit hash per example of its label and image bytes, vectorised over the examples.

    FNV-1a over the image's 64-bit words (each step a bijection of the running hash, so examples
    that differ in one word never collide), then splitmix64's finaliser. A few MB at a time,
    where :func:`example_keys` copies every image.

    Args:
      split: the examples.

    Returns:
      A [N] uint64 array; equal examples have equal hashes.
    """
    rows = split.images.reshape(len(split), -1)
    width = -(-rows.shape[1] // 8) * 8  # bytes, padded to whole words
    hashes = np.full(len(split), _FNV_OFFSET, np.uint64) ^ split.labels.astype(np.uint64)
    for start in range(0, len(split), _HASH_CHUNK):
        block = np.zeros((len(rows[start : start + _HASH_CHUNK]), width), np.uint8)
        block[:, : rows.shape[1]] = rows[start : start + _HASH_CHUNK]
        chunk = hashes[start : start + _HASH_CHUNK]
        for word in block.view(np.uint64).T:
            chunk ^= word
            chunk *= _FNV_PRIME
    for shift, factor in _MIX:
        hashes ^= hashes >> shift
        hashes *= factor
    return hashes ^ (hashes >> np.uint64(31))


def example_positions(stored: ArraySplit, wanted: ArraySplit) -> np.ndarray:
    """Where ``wanted``'s examples are in ``stored``: each stored example used at most once.

    Examples are matched by :func:`example_hashes`, and the matched pairs compared in full; only
    if they differ (a hash collision, or an example ``stored`` lacks) are they matched again by
    their whole bytes (:func:`example_keys`).

    Args:
      stored: a split in tfds's order.
      wanted: examples of it (a subset, in any order; equal examples as often as stored holds).

    Returns:
      Sorted positions ``p`` such that ``stored.take(p)`` holds the examples of ``wanted``.

    Raises:
      DataError: ``wanted`` holds an example (or copies of one) that ``stored`` does not.
    """
    positions, found = _match_keys(example_hashes(stored), example_hashes(wanted))
    if found.all() and _same_examples(stored, positions, wanted):
        return np.sort(positions)
    positions, found = _match_keys(example_keys(stored), example_keys(wanted))
    if not found.all():
        raise DataError(
            f"{np.count_nonzero(~found)} of {len(wanted)} examples are not in the tfds split "
            "(the tfds dataset and the IDX files differ)"
        )
    return np.sort(positions)


def _match_keys(stored_keys: np.ndarray, wanted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each wanted key, a position in ``stored_keys`` holding it, each position used once.

    Returns:
      The positions (meaningful where found) and whether each wanted key was found.
    """
    order = np.argsort(stored_keys, kind="stable")
    wanted_order = np.argsort(wanted_keys, kind="stable")
    sorted_wanted = wanted_keys[wanted_order]
    # Equal wanted keys take consecutive stored copies: their rank within their run of equals.
    starts = np.flatnonzero(np.r_[True, sorted_wanted[1:] != sorted_wanted[:-1]])
    rank = np.arange(len(sorted_wanted)) - np.repeat(
        starts, np.diff(np.r_[starts, len(sorted_wanted)])
    )
    slots = np.searchsorted(stored_keys, sorted_wanted, sorter=order) + rank
    found = slots < len(order)
    found[found] = stored_keys[order[slots[found]]] == sorted_wanted[found]
    positions = np.zeros(len(wanted_keys), np.int64)
    positions[wanted_order[found]] = order[slots[found]]
    in_wanted_order = np.zeros(len(wanted_keys), bool)
    in_wanted_order[wanted_order] = found
    return positions, in_wanted_order


def _same_examples(stored: ArraySplit, positions: np.ndarray, wanted: ArraySplit) -> bool:
    """Whether the examples of ``stored`` at ``positions`` are those of ``wanted``, in chunks."""
    for start in range(0, len(wanted), _HASH_CHUNK):
        taken = positions[start : start + _HASH_CHUNK]
        end = start + len(taken)
        if not np.array_equal(stored.labels[taken], wanted.labels[start:end]):
            return False
        if not np.array_equal(stored.images[taken], wanted.images[start:end]):
            return False
    return True


def select(split: CachedSplit, positions: np.ndarray) -> CachedSplit:
    """The examples of ``split`` at ``positions``, gathered in the tf.data graph and cached.

    Args:
      split: a cached split.
      positions: example positions in it.

    Returns:
      ``split`` itself when ``positions`` are all of it in order, else a new cached split.
    """
    if np.array_equal(positions, np.arange(split.size)):
        return split
    tf = import_tensorflow()
    indices = tf.constant(positions, tf.int32)
    taken = split.dataset.map(lambda whole: {k: tf.gather(v, indices) for k, v in whole.items()})
    return CachedSplit(taken.cache(), len(positions))


def open_splits(
    builder: tfds.core.DatasetBuilder, wanted: dict[str, ArraySplit]
) -> dict[str, CachedSplit]:
    """The run's splits, read from tfds: the same examples as ``wanted``'s arrays.

    Args:
      builder: the prepared tfds builder of the run's dataset.
      wanted: the run's splits by name (``train``, ``validation``, ``test``), as arrays.

    Returns:
      Each split's examples from tfds's files, in tfds's order, cached by tf.data.
    """

    def select_and_fill(split: CachedSplit, positions: np.ndarray) -> CachedSplit:
        selected = select(split, positions)
        if selected is not split:  # a new selection: fill its cache now, not in epoch 1
            read_examples(selected.dataset)
        return selected

    return match_splits(wanted, functools.partial(stored_split, builder), select_and_fill)


def match_splits(
    wanted: dict[str, ArraySplit],
    read: Callable[[str], tuple[Held, ArraySplit]],
    select: Callable[[Held, np.ndarray], Held],
) -> dict[str, Held]:
    """The run's splits found by their examples in the tfds splits they come from.

    tfds stores examples in its own order, and the validation split is a seeded subset of the
    training split: each run split's examples are located in its tfds split
    (:data:`TFDS_SPLITS`) with :func:`example_positions` and taken from it.

    Args:
      wanted: the run's splits by name (``train``, ``validation``, ``test``), as arrays.
      read: a tfds split's name -> that split as the pipeline holds it, and its examples as
        arrays in that order; called once per tfds split.
      select: (a held split, sorted positions) -> its examples at those positions.

    Returns:
      Each run split as ``select`` gives it: the examples of ``wanted``, in tfds's order.

    Raises:
      DataError: a run split holds an example its tfds split does not.
    """
    stored = {name: read(name) for name in {TFDS_SPLITS[w] for w in wanted}}
    opened = {}
    for name, arrays in wanted.items():
        held, held_arrays = stored[TFDS_SPLITS[name]]
        opened[name] = select(held, example_positions(held_arrays, arrays))
    return opened


def epoch_order(num_examples: int, batch_size: int, *, seed: int, epoch: int) -> np.ndarray:
    """A seeded random order for ``epoch`` as ``[steps, batch_size]`` example indices.

    Args:
      num_examples: the split's size.
      batch_size: the global batch size.
      seed: the run's seed.
      epoch: the epoch.

    Returns:
      Indices of full batches; the ``num_examples % batch_size`` left over (a different random
      subset each epoch) are skipped.
    """
    steps = num_examples // batch_size
    order = np.random.default_rng(epoch_seed(seed, epoch)).permutation(num_examples)
    return order[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class TrainEpoch:
    """Which batches of a training epoch a streaming pipeline gives, and how it groups them.

    Attributes:
      batch_size: the global batch size.
      seed: the run's seed.
      epoch: the epoch.
      start_step: batches of the epoch already trained (a resumed run): they are not read.
      rows: this process's rows of each global batch (None: all).
      steps_per_element: batches stacked per element into ``[steps, rows, ...]`` arrays (the
        last element holds the batches left over); None: one batch per element.
    """

    batch_size: int
    seed: int
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
        order = epoch_order(num_examples, self.batch_size, seed=self.seed, epoch=self.epoch)
        order = order[self.start_step :]
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
    """``dataset`` on one TensorFlow thread: the cores stay with XLA, which runs the steps.

    Args:
      dataset: a tf.data pipeline of per-batch work.

    Returns:
      The same pipeline with a private one-thread pool.
    """
    tf = import_tensorflow()
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)
