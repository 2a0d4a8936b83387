"""How an epoch's batches reach ``train_step``: device-resident, or streamed (tfds or grain).

A feeder's ``train_chunks`` is a generator: it yields ``(state, per_step_metrics)`` after every
chunk of steps, so the outer loop can update the progress bar, check for non-finite losses and
honour Ctrl-C between chunks. ``start_step`` resumes an epoch part-way through.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from flaxmnist.data import grain_pipeline, input_pipeline
from flaxmnist.data.datasets import ArraySplit
from flaxmnist.training import parallel, step_functions
from flaxmnist.training.train_state import QUICK_COMPILE, TrainState

Chunk = tuple[TrainState, dict[str, np.ndarray]]


def chunk_steps(steps: int, chunks: int) -> int:
    """Steps per chunk for an epoch of ``steps`` in about ``chunks`` chunks.

    The smallest length from ``ceil(steps / chunks)`` up to twice that which divides ``steps``,
    so that every chunk has one shape and the epoch runs one compiled program (468 steps in
    20 chunks: 18 of 26, not 19 of 24 and one of 12); ``ceil(steps / chunks)`` when none does.
    """
    target = max(1, math.ceil(steps / chunks))
    for length in range(target, min(2 * target, steps) + 1):
        if steps % length == 0:
            return length
    return target


@dataclasses.dataclass(frozen=True)
class FeederInputs:
    """What a feeder is built from: the jitted steps, the config, the splits and the mesh.

    ``positions`` says where each split's examples are in the stored split it comes from
    (``datasets.run_positions``): the streaming feeders take them from the dataset's files.
    """

    fns: step_functions.StepFunctions
    config: Any
    train: ArraySplit
    eval_splits: dict[str, ArraySplit]
    positions: dict[str, np.ndarray]
    data_rng: jax.Array  # every pipeline's epoch order (input_pipeline.epoch_order)
    mesh: Mesh


class Feeder(abc.ABC):
    """Feeds an epoch's batches to the jitted steps; holds the steps, config and mesh at hand."""

    def __init__(self, inputs: FeederInputs):
        self.inputs = inputs
        self.fns, self.config, self.mesh = inputs.fns, inputs.config, inputs.mesh

    @abc.abstractmethod
    def train_chunks(
        self, state: TrainState, epoch: int, rng: jax.Array, start_step: int = 0
    ) -> Iterator[Chunk]:
        """Trains epoch ``epoch`` from its step ``start_step``, yielding after every chunk."""

    @abc.abstractmethod
    def evaluate(self, state: TrainState, split_name: str) -> dict[str, np.ndarray]:
        """Metric sums (``loss``, ``correct``, ``count``) over a whole evaluation split."""


class DeviceFeeder(Feeder):
    """The fast path: data lives on the device; an epoch is a few ``lax.scan`` calls."""

    def __init__(self, inputs: FeederInputs):
        super().__init__(inputs)
        self.num_train = len(inputs.train)
        # Every device holds the whole (uint8) training set and gathers its share of each batch.
        self.images, self.labels = parallel.put_replicated(
            (inputs.train.images, inputs.train.labels), self.mesh
        )
        self.eval_batches = {
            name: parallel.put_batch(
                input_pipeline.pad_to_batches(split, self.config.eval_batch_size),
                self.mesh,
                leading_axes=1,
            )
            for name, split in inputs.eval_splits.items()
        }
        self.batch_indices = jax.jit(
            functools.partial(
                input_pipeline.epoch_order,
                num_examples=self.num_train,
                batch_size=self.config.batch_size,
            ),
            compiler_options=QUICK_COMPILE,
        )

    def train_chunks(
        self, state: TrainState, epoch: int, rng: jax.Array, start_step: int = 0
    ) -> Iterator[Chunk]:
        """Trains epoch ``epoch`` from its step ``start_step``, one ``lax.scan`` per chunk."""
        indices = self.batch_indices(self.inputs.data_rng, epoch)
        indices = jax.device_put(indices, parallel.batch_sharding(self.mesh, leading_axes=1))
        chunk = chunk_steps(len(indices), self.config.chunks_per_epoch)
        for start in range(start_step, len(indices), chunk):
            state, metrics = self.fns.train_on_indices(
                state, self.images, self.labels, indices[start : start + chunk], rng
            )
            yield state, jax.device_get(metrics)

    def evaluate(self, state: TrainState, split_name: str) -> dict[str, np.ndarray]:
        """Metric sums over a whole split, with one host sync."""
        return jax.device_get(self.fns.evaluate_batches(state, self.eval_batches[split_name]))


class StreamingFeeder(Feeder):
    """Batches stream from the host, each chunk placed on the device ahead of its step.

    The run's splits are taken from the dataset's tfds files (prepared on first use for ``mnist``
    and ``fashion_mnist``) at their positions: the same examples, in the same order, as the
    arrays the device path trains on. ``source`` says how: ``input_pipeline.SOURCE`` (tfds's
    TFRecord files through tf.data) or ``grain_pipeline.SOURCE`` (ArrayRecord files, no TF).
    """

    def __init__(self, inputs: FeederInputs, source: input_pipeline.StreamingSource):
        super().__init__(inputs)
        self.source = source
        builder = source.find_builder(self.config.dataset, self.config.data_dir or None)
        self.splits = source.open_splits(builder, inputs.positions)

    def train_chunks(
        self, state: TrainState, epoch: int, rng: jax.Array, start_step: int = 0
    ) -> Iterator[Chunk]:
        """Trains epoch ``epoch`` from its step ``start_step``, one ``lax.scan`` per chunk.

        A chunk is as many steps as the device path's (:func:`chunk_steps`):
        its batches arrive stacked, and ``train_step`` runs over them in one call.
        """
        steps = len(self.inputs.train) // self.config.batch_size
        plan = input_pipeline.TrainEpoch(
            self.config.batch_size,
            rng=self.inputs.data_rng,
            epoch=epoch,
            start_step=start_step,
            rows=parallel.process_rows(self.mesh, self.config.batch_size),
            steps_per_element=chunk_steps(steps, self.config.chunks_per_epoch),
        )
        batches = self.source.train_batches(self.splits["train"], plan)
        for chunk in self.on_device(batches, leading_axes=1):
            state, metrics = self.fns.train_on_batches(state, chunk, rng)
            yield state, jax.device_get(metrics)

    def evaluate(self, state: TrainState, split_name: str) -> dict[str, np.ndarray]:
        """Metric sums over a whole split (padded, masked last batch)."""
        batch_size = self.config.eval_batch_size
        batches = self.source.eval_batches(
            self.splits[split_name], batch_size, parallel.process_rows(self.mesh, batch_size)
        )
        totals = None
        for batch in self.on_device(batches, leading_axes=0):
            metrics = self.fns.eval_step(state, batch)
            totals = metrics if totals is None else jax.tree_util.tree_map(jnp.add, totals, metrics)
        return jax.device_get(totals)

    def on_device(self, batches: Iterable[Any], leading_axes: int) -> Iterator[Any]:
        """``batches`` as global device arrays, each placed two batches ahead."""
        put = functools.partial(parallel.put_local_batch, mesh=self.mesh, leading_axes=leading_axes)
        return prefetch_to_device(iter(batches), put)


def prefetch_to_device(
    batches: Iterator[Any], put: Callable[[Any], Any], size: int = 2
) -> Iterator[Any]:
    """Yields ``put(batch)`` for each batch, with ``size`` batches already placed ahead.

    As flax's ``jax_utils.prefetch_to_device``: the transfer of the next batches overlaps the
    step running on the current one.

    Args:
      batches: host batches.
      put: places one batch on the device(s), asynchronously.
      size: how many placed batches to keep ready.

    Returns:
      An iterator over the placed batches, in order.
    """
    queue = collections.deque()

    def enqueue(count: int) -> None:
        for batch in itertools.islice(batches, count):
            queue.append(put(batch))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)


# By config.input_pipeline.
FEEDERS = {
    "device": DeviceFeeder,
    "tfds": functools.partial(StreamingFeeder, source=input_pipeline.SOURCE),
    "grain": functools.partial(StreamingFeeder, source=grain_pipeline.SOURCE),
}
