import jax
import numpy as np
import pytest

from flaxmnist.data import datasets, grain_pipeline, input_pipeline


def _split(n: int) -> datasets.ArraySplit:
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1).repeat(4, axis=1)
    return datasets.ArraySplit(images, np.arange(n, dtype=np.int32))


def test_pad_to_batches_pads_last_batch_and_masks_it():
    batches = input_pipeline.pad_to_batches(_split(10), batch_size=4)
    assert batches["image"].shape == (3, 4, 4, 1, 1)
    np.testing.assert_array_equal(batches["label"].reshape(-1)[:10], np.arange(10))
    np.testing.assert_array_equal(batches["mask"].reshape(-1), [1] * 10 + [0] * 2)


def _order(seed: int, epoch: int, num_examples: int = 10, batch_size: int = 3) -> np.ndarray:
    rng = jax.random.key(seed)
    order = input_pipeline.epoch_order(rng, epoch, num_examples=num_examples, batch_size=batch_size)
    return np.asarray(order)


def test_the_epoch_order_is_a_seeded_permutation_per_epoch():
    first, again, second, other_seed = _order(0, 1), _order(0, 1), _order(0, 2), _order(1, 1)
    assert first.shape == (3, 3)
    assert len(set(first.ravel())) == 9 and set(first.ravel()) <= set(range(10))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, np.asarray(other_seed))


@pytest.fixture(params=[pytest.param("tfds", marks=pytest.mark.slow), "grain"])
def streamed(request) -> tuple[str, datasets.ArraySplit]:
    """A streaming pipeline (tfds imports TensorFlow: slow) and 37 mnist-shaped examples."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 28, 28, 1), dtype=np.uint8)
    return request.param, datasets.ArraySplit(images, rng.integers(0, 10, 37).astype(np.int32))


def train_batches(pipeline: str, split, batch_size: int, **order) -> list[dict]:
    plan = input_pipeline.TrainEpoch(batch_size, **order)
    if pipeline == "grain":
        return list(grain_pipeline.train_batches(split, plan))
    return list(input_pipeline.tf_train_dataset(split, plan).as_numpy_iterator())


def eval_batches(pipeline: str, split, batch_size: int, rows: slice | None = None) -> list[dict]:
    if pipeline == "grain":
        return list(grain_pipeline.eval_batches(split, batch_size, rows))
    return list(input_pipeline.tf_eval_dataset(split, batch_size, rows).as_numpy_iterator())


def _labels(batches: list[dict]) -> list[np.ndarray]:
    return [batch["label"] for batch in batches]


def test_eval_batches_are_in_order_and_mask_the_padded_last_batch(streamed):
    pipeline, split = streamed
    batches = eval_batches(pipeline, split, 16)
    assert [b["image"].shape for b in batches] == [(16, 28, 28, 1)] * 3
    assert batches[0]["image"].dtype == np.uint8 and batches[0]["label"].dtype == np.int32
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in batches]), [1] * 37 + [0] * 11)
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels[:37], split.labels)
    rows = eval_batches(pipeline, split, 16, rows=slice(8, 16))
    np.testing.assert_array_equal(rows[1]["label"], batches[1]["label"][8:])


def test_train_batches_follow_the_epoch_order(streamed):
    pipeline, split = streamed
    batches = train_batches(pipeline, split, 8, rng=jax.random.key(3), epoch=2)
    order = _order(3, 2, num_examples=37, batch_size=8)
    assert [len(b["label"]) for b in batches] == [8] * 4  # 5 left over are skipped
    assert batches[0]["image"].dtype == np.uint8 and batches[0]["label"].dtype == np.int32
    for batch, indices in zip(batches, order, strict=True):
        np.testing.assert_array_equal(batch["image"], split.images[indices])
        np.testing.assert_array_equal(batch["label"], split.labels[indices])


KEY = jax.random.key(0)


def test_resumed_epoch_reads_the_remaining_batches_and_rows_keep_a_slice(streamed):
    pipeline, split = streamed
    whole = _labels(train_batches(pipeline, split, 8, rng=KEY, epoch=1))
    resumed = _labels(train_batches(pipeline, split, 8, rng=KEY, epoch=1, start_step=3))
    np.testing.assert_array_equal(np.stack(resumed), np.stack(whole[3:]))
    rows = _labels(train_batches(pipeline, split, 8, rng=KEY, epoch=1, rows=slice(0, 4)))
    np.testing.assert_array_equal(np.stack(rows), np.stack(whole)[:, :4])
    stacked = _labels(train_batches(pipeline, split, 8, rng=KEY, epoch=1, steps_per_element=3))
    assert [s.shape for s in stacked] == [(3, 8), (1, 8)]
    np.testing.assert_array_equal(np.concatenate(stacked), np.stack(whole))
    both = _labels(
        train_batches(pipeline, split, 8, rng=KEY, epoch=1, start_step=1, steps_per_element=2)
    )
    assert [s.shape for s in both] == [(2, 8), (1, 8)]
    np.testing.assert_array_equal(np.concatenate(both), np.stack(whole[1:]))


def test_prefetch_to_device_places_two_batches_ahead_in_order():
    from flaxmnist.training import feeders

    placed = []

    def put(batch):
        placed.append(batch)
        return batch * 10

    prefetched = feeders.prefetch_to_device(iter(range(5)), put)
    assert next(prefetched) == 0 and placed == [0, 1]  # 1 is placed before 0 is handed over
    assert list(prefetched) == [10, 20, 30, 40] and placed == list(range(5))
