import numpy as np
import pytest

from flaxmnist.data import datasets, grain_pipeline, input_pipeline
from flaxmnist.errors import DataError


def _split(n: int) -> datasets.ArraySplit:
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1).repeat(4, axis=1)
    return datasets.ArraySplit(images, np.arange(n, dtype=np.int32))


def test_pad_to_batches_pads_last_batch_and_masks_it():
    batches = input_pipeline.pad_to_batches(_split(10), batch_size=4)
    assert batches["image"].shape == (3, 4, 4, 1, 1)
    np.testing.assert_array_equal(batches["label"].reshape(-1)[:10], np.arange(10))
    np.testing.assert_array_equal(batches["mask"].reshape(-1), [1] * 10 + [0] * 2)


def test_epoch_batch_indices_are_a_seeded_permutation():
    import jax

    rng = jax.random.key(0)
    first = np.asarray(input_pipeline.epoch_batch_indices(rng, 1, num_examples=10, batch_size=3))
    again = np.asarray(input_pipeline.epoch_batch_indices(rng, 1, num_examples=10, batch_size=3))
    second = np.asarray(input_pipeline.epoch_batch_indices(rng, 2, num_examples=10, batch_size=3))
    other_seed = input_pipeline.epoch_batch_indices(
        jax.random.key(1), 1, num_examples=10, batch_size=3
    )
    assert first.shape == (3, 3)
    assert len(set(first.ravel())) == 9 and set(first.ravel()) <= set(range(10))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)
    assert not np.array_equal(first, np.asarray(other_seed))


@pytest.fixture(scope="module")
def mock_train():
    """A 37-example mnist train split from ``tfds.testing.mock_data``, read as the pipeline does."""
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=37):
        return input_pipeline.stored_split(tfds.builder("mnist"), "train")


@pytest.fixture(params=[pytest.param("tfds", marks=pytest.mark.slow), "grain"])
def streamed(request) -> tuple[str, object, datasets.ArraySplit]:
    """A streaming pipeline, 37 mnist-shaped examples as it holds them, and them as arrays.

    The tfds pipeline holds a tf.data cache (it imports TensorFlow: slow), grain the arrays.
    """
    if request.param == "tfds":
        return "tfds", *request.getfixturevalue("mock_train")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 28, 28, 1), dtype=np.uint8)
    arrays = datasets.ArraySplit(images, rng.integers(0, 10, 37).astype(np.int32))
    return "grain", arrays, arrays


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


@pytest.mark.slow  # imports TensorFlow
def test_stored_split_reads_the_whole_split_decoded(mock_train):
    split, arrays = mock_train
    assert split.size == len(arrays) == 37
    assert arrays.images.dtype == np.uint8 and arrays.images.shape == (37, 28, 28, 1)
    assert arrays.labels.dtype == np.int32 and set(arrays.labels) <= set(range(10))
    again = input_pipeline.read_examples(split.dataset)  # from the cache
    np.testing.assert_array_equal(again.images, arrays.images)


def test_eval_batches_are_in_order_and_mask_the_padded_last_batch(streamed):
    pipeline, split, arrays = streamed
    batches = eval_batches(pipeline, split, 16)
    assert [b["image"].shape for b in batches] == [(16, 28, 28, 1)] * 3
    assert batches[0]["image"].dtype == np.uint8 and batches[0]["label"].dtype == np.int32
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in batches]), [1] * 37 + [0] * 11)
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels[:37], arrays.labels)
    rows = eval_batches(pipeline, split, 16, rows=slice(8, 16))
    np.testing.assert_array_equal(rows[1]["label"], batches[1]["label"][8:])


def test_train_batches_follow_the_epoch_order(streamed):
    pipeline, split, arrays = streamed
    batches = train_batches(pipeline, split, 8, seed=3, epoch=2)
    order = input_pipeline.epoch_order(37, 8, seed=3, epoch=2)
    assert [len(b["label"]) for b in batches] == [8] * 4  # 5 left over are skipped
    assert batches[0]["image"].dtype == np.uint8 and batches[0]["label"].dtype == np.int32
    for batch, indices in zip(batches, order, strict=True):
        np.testing.assert_array_equal(batch["image"], arrays.images[indices])
        np.testing.assert_array_equal(batch["label"], arrays.labels[indices])


def test_resumed_epoch_reads_the_remaining_batches_and_rows_keep_a_slice(streamed):
    pipeline, split, _ = streamed
    whole = _labels(train_batches(pipeline, split, 8, seed=0, epoch=1))
    resumed = _labels(train_batches(pipeline, split, 8, seed=0, epoch=1, start_step=3))
    np.testing.assert_array_equal(np.stack(resumed), np.stack(whole[3:]))
    rows = _labels(train_batches(pipeline, split, 8, seed=0, epoch=1, rows=slice(0, 4)))
    np.testing.assert_array_equal(np.stack(rows), np.stack(whole)[:, :4])
    stacked = _labels(train_batches(pipeline, split, 8, seed=0, epoch=1, steps_per_element=3))
    assert [s.shape for s in stacked] == [(3, 8), (1, 8)]
    np.testing.assert_array_equal(np.concatenate(stacked), np.stack(whole))
    both = _labels(
        train_batches(pipeline, split, 8, seed=0, epoch=1, start_step=1, steps_per_element=2)
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


def test_epoch_order_is_seeded_per_seed_and_epoch():
    first = input_pipeline.epoch_order(10, 3, seed=0, epoch=1)
    assert first.shape == (3, 3) and len(set(first.ravel())) == 9
    assert set(first.ravel()) <= set(range(10))
    np.testing.assert_array_equal(first, input_pipeline.epoch_order(10, 3, seed=0, epoch=1))
    assert not np.array_equal(first, input_pipeline.epoch_order(10, 3, seed=0, epoch=2))
    assert not np.array_equal(first, input_pipeline.epoch_order(10, 3, seed=1, epoch=1))


def test_example_positions_find_a_subset_with_its_duplicates():
    images = np.array([5, 7, 5, 9, 5, 7], np.uint8).reshape(6, 1, 1, 1)
    stored = datasets.ArraySplit(images, np.array([1, 1, 1, 2, 3, 1], np.int32))
    wanted = stored.take(np.array([5, 2, 3, 1]))  # (7, 1) twice, (5, 1), (9, 2)
    positions = input_pipeline.example_positions(stored, wanted)
    assert list(positions) == sorted(positions) and len(set(positions)) == 4
    taken = stored.take(positions)
    assert sorted(zip(taken.labels, taken.images.ravel(), strict=True)) == sorted(
        zip(wanted.labels, wanted.images.ravel(), strict=True)
    )
    assert list(input_pipeline.example_positions(stored, stored)) == list(range(6))


def test_example_hashes_tell_examples_apart():
    rng = np.random.default_rng(0)
    split = datasets.ArraySplit(
        rng.integers(0, 256, (500, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 500)
    )
    hashes = input_pipeline.example_hashes(split)
    assert hashes.dtype == np.uint64 and len(set(hashes.tolist())) == 500
    np.testing.assert_array_equal(
        input_pipeline.example_hashes(split.take(np.arange(9, 0, -1))), hashes[9:0:-1]
    )
    flipped = split.images.copy()
    flipped[3, 27, 27, 0] ^= 0x80  # the last byte's top bit
    relabelled = split.labels.copy()
    relabelled[4] += 1
    changed = input_pipeline.example_hashes(datasets.ArraySplit(flipped, relabelled))
    assert list(np.flatnonzero(changed != hashes)) == [3, 4]
    odd = datasets.ArraySplit(np.arange(30, dtype=np.uint8).reshape(3, 5, 2, 1), np.zeros(3))
    assert len(set(input_pipeline.example_hashes(odd).tolist())) == 3  # rows not whole words


def test_example_positions_survive_colliding_hashes(monkeypatch):
    images = np.array([5, 7, 5, 9, 5, 7], np.uint8).reshape(6, 1, 1, 1)
    stored = datasets.ArraySplit(images, np.array([1, 1, 1, 2, 3, 1], np.int32))
    wanted = stored.take(np.array([5, 2, 3, 1]))
    expected = input_pipeline.example_positions(stored, wanted)
    monkeypatch.setattr(
        input_pipeline, "example_hashes", lambda split: np.zeros(len(split), np.uint64)
    )
    np.testing.assert_array_equal(input_pipeline.example_positions(stored, wanted), expected)
    with pytest.raises(DataError, match="1 of 2"):
        input_pipeline.example_positions(stored, stored.take(np.array([3, 3])))


def test_example_positions_reject_examples_the_split_lacks():
    stored = _split(4)
    extra = datasets.ArraySplit(np.concatenate([stored.images, stored.images[:1]]), np.arange(5))
    with pytest.raises(DataError, match="1 of 5 examples are not in the tfds split"):
        input_pipeline.example_positions(stored, extra)
    twice = stored.take(np.array([0, 0]))  # one stored copy cannot serve two
    with pytest.raises(DataError, match="1 of 2"):
        input_pipeline.example_positions(stored, twice)


# (1, 0) and (0, 1) would collide under seed + epoch; (2, 3) and (3, 2) under any symmetric mix.
PAIRS = [(0, 0), (0, 1), (1, 0), (0, 2), (2, 3), (3, 2), (5, 3)]


def test_epoch_seed_depends_on_seed_and_epoch():
    seeds = [input_pipeline.epoch_seed(seed, epoch) for seed, epoch in PAIRS]
    assert len(set(seeds)) == len(PAIRS)  # every (seed, epoch) its own shuffle seed
    assert all(isinstance(s, int) and 0 <= s < 2**31 - 1 for s in seeds)
    # Computed again (as a resumed run does, in a new process): the same seeds.
    again = [input_pipeline.epoch_seed(seed, epoch) for seed, epoch in reversed(PAIRS)]
    assert again[::-1] == seeds
