"""The ``grain`` input pipeline: tfds's ArrayRecord files, read without TensorFlow.

It reads the same prepared tfds dataset as the ``tfds`` pipeline, through ``as_data_source`` and
Grain, so TensorFlow is never imported. Each split is decoded once into one uint8 array; an epoch
is a Grain ``MapDataset`` whose elements are numpy gathers of whole batches, in
:func:`flaxmnist.data.input_pipeline.epoch_order` (see ``docs/data.md``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from flaxmnist.data import input_pipeline, tfds_prepare
from flaxmnist.data.datasets import ArraySplit

if TYPE_CHECKING:  # Grain is imported when a pipeline is built: not by every run
    import grain
    import tensorflow_datasets as tfds

READ_CHUNK = 10_000  # examples decoded per data-source call while a split is read
PREFETCH = input_pipeline.PREFETCH_BATCHES


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> ArraySplit:
    """Reads tfds split ``split`` through its ArrayRecord data source, decoded, in stored order.

    Args:
      builder: a builder whose dataset has ArrayRecord files (``tfds.builder_from_directory``).
      split: the tfds split's name.

    Returns:
      Its images (uint8 [N, H, W, C]) and labels (int32 [N]), in the stored order (the
      TFRecord files' order, which the tfds pipeline reads).
    """
    source = builder.as_data_source(split=split)
    images, labels = None, np.zeros(len(source), np.int32)
    with _without_opencv_advice():
        for start in range(0, len(source), READ_CHUNK):
            examples = source.__getitems__(range(start, min(start + READ_CHUNK, len(source))))
            chunk = np.stack([example["image"] for example in examples])
            if images is None:  # filled in place: the split is held once
                images = np.zeros((len(source), *chunk.shape[1:]), np.uint8)
            images[start : start + len(chunk)] = chunk
            labels[start : start + len(chunk)] = [example["label"] for example in examples]
    if images.ndim == 3:
        images = images[..., None]
    return ArraySplit(images, labels)


@contextlib.contextmanager
def _without_opencv_advice() -> Iterator[None]:
    """Silences tfds's advice to install OpenCV (it decodes with Pillow; once per split is fine)."""

    def keep(record: logging.LogRecord) -> bool:
        return "OpenCV is not installed" not in record.getMessage()

    logger = logging.getLogger("absl")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def train_batches(split: ArraySplit, plan: input_pipeline.TrainEpoch) -> grain.IterDataset:
    """One training epoch: the batches ``input_pipeline.tf_train_dataset`` gives, without TF.

    Args:
      split: the training split, as host arrays.
      plan: which batches, cut to which rows, stacked how.

    Returns:
      A Grain dataset of ``{"image", "label"}`` numpy batches, prefetched on one thread.
    """
    import grain

    order, step = plan.batch_indices(len(split)), plan.steps_per_element
    elements = list(order) if step is None else np.split(order, range(step, len(order), step))
    source = grain.MapDataset.source(elements)
    return prefetched(source.map(lambda i: {"image": split.images[i], "label": split.labels[i]}))


def eval_batches(
    split: ArraySplit, batch_size: int, rows: slice | None = None
) -> grain.IterDataset:
    """The evaluation batches of ``input_pipeline.pad_to_batches``, prefetched on one thread."""
    import grain

    batches = input_pipeline.pad_to_batches(split, batch_size, rows)
    source = grain.MapDataset.range(len(batches["label"]))
    return prefetched(source.map(lambda i: {key: value[i] for key, value in batches.items()}))


def prefetched(dataset: grain.MapDataset) -> grain.IterDataset:
    """``dataset`` read ahead :data:`PREFETCH` deep by one Grain thread (cores stay with XLA)."""
    import grain

    return dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=PREFETCH))


SOURCE = input_pipeline.StreamingSource(  # the grain pipeline: ArrayRecord files, no TensorFlow
    find_builder=tfds_prepare.source_builder,
    read_split=read_split,
    train_batches=train_batches,
    eval_batches=eval_batches,
)
