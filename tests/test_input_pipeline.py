import numpy as np
import pytest

from flaxmnist.data import datasets, input_pipeline


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


def _labels(dataset) -> list[np.ndarray]:
    return [batch["label"] for batch in dataset.as_numpy_iterator()]


@pytest.mark.slow
def test_tf_train_dataset_is_seeded_full_batches_and_reshuffles_per_epoch():
    split = _split(50)
    epoch1 = _labels(input_pipeline.tf_train_dataset(split, 8, seed=0, epoch=1))
    again = _labels(input_pipeline.tf_train_dataset(split, 8, seed=0, epoch=1))
    epoch2 = _labels(input_pipeline.tf_train_dataset(split, 8, seed=0, epoch=2))
    assert [len(b) for b in epoch1] == [8] * 6  # 2 left over are dropped
    assert len(set(np.concatenate(epoch1))) == 48
    np.testing.assert_array_equal(np.concatenate(epoch1), np.concatenate(again))
    assert not np.array_equal(np.concatenate(epoch1), np.concatenate(epoch2))


def test_tf_eval_dataset_keeps_order_and_masks_padding():
    batches = list(input_pipeline.tf_eval_dataset(_split(10), 4).as_numpy_iterator())
    assert [b["image"].shape for b in batches] == [(4, 4, 1, 1)] * 3
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:10], range(10))
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in batches]), [1] * 10 + [0] * 2)


def test_tf_pipeline_on_tfds_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=37):
        ds = datasets.load_dataset("mnist_corrupted", str(tmp_path))
    batches = list(input_pipeline.tf_eval_dataset(ds.test, 16).as_numpy_iterator())
    assert sum(b["mask"].sum() for b in batches) == 37
    assert batches[0]["image"].dtype == np.uint8 and batches[0]["image"].shape == (16, 28, 28, 1)
    train = list(input_pipeline.tf_train_dataset(ds.train, 16, seed=1, epoch=1))
    assert len(train) == 2


# (1, 0) and (0, 1) would collide under seed + epoch; (2, 3) and (3, 2) under any symmetric mix.
PAIRS = [(0, 0), (0, 1), (1, 0), (0, 2), (2, 3), (3, 2), (5, 3)]


def test_epoch_seed_depends_on_seed_and_epoch():
    seeds = [input_pipeline.epoch_seed(seed, epoch) for seed, epoch in PAIRS]
    assert len(set(seeds)) == len(PAIRS)  # every (seed, epoch) its own shuffle seed
    assert all(isinstance(s, int) and 0 <= s < 2**31 - 1 for s in seeds)
    # Computed again (as a resumed run does, in a new process): the same seeds.
    again = [input_pipeline.epoch_seed(seed, epoch) for seed, epoch in reversed(PAIRS)]
    assert again[::-1] == seeds


def test_tf_training_order_differs_between_seed_epoch_pairs_and_repeats_for_equal_ones():
    split = _split(40)

    def order(seed, epoch):
        return np.concatenate(
            _labels(input_pipeline.tf_train_dataset(split, 40, seed=seed, epoch=epoch))
        )

    orders = {pair: order(*pair) for pair in PAIRS}
    for pair, labels in orders.items():
        assert sorted(labels) == list(range(40))  # a permutation of the whole split
        np.testing.assert_array_equal(order(*pair), labels)  # the same pair: the same order
    assert len({tuple(labels) for labels in orders.values()}) == len(PAIRS)
