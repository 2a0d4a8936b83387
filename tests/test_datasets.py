import gzip
import subprocess
import sys
import time

import numpy as np
import pytest

from flaxmnist.data import datasets
from flaxmnist.errors import DataError
from flaxmnist.testing import idx_bytes, synthetic_split, write_idx_dataset


def test_parse_idx_roundtrip():
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(datasets.parse_idx(idx_bytes(array)), array)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x00\x00", "truncated IDX file"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00", "not a uint8 IDX file"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated IDX header"),
        (idx_bytes(np.zeros((4, 2), np.uint8))[:-3], "truncated or corrupt"),
    ],
)
def test_parse_idx_rejects_bad_bytes(raw, message):
    with pytest.raises(DataError, match=message):
        datasets.parse_idx(raw)


@pytest.mark.parametrize("compress", [True, False])
def test_loads_synthetic_dataset_from_gz_or_raw_files(tmp_path, compress):
    write_idx_dataset(tmp_path / "mnist", num_train=30, num_test=7, compress=compress)
    ds = datasets.load_dataset("mnist", str(tmp_path))
    assert ds.train.images.shape == (30, 28, 28, 1) and ds.train.images.dtype == np.uint8
    assert ds.test.labels.shape == (7,) and ds.test.labels.dtype == np.int32
    assert ds.num_classes == 10 and ds.image_shape == (28, 28, 1)
    # The very pixels and labels that were written, in order (train seed 1, test seed 2).
    for split, (images, labels) in (
        (ds.train, synthetic_split(30, 1)),
        (ds.test, synthetic_split(7, 2)),
    ):
        np.testing.assert_array_equal(split.images[..., 0], images)
        np.testing.assert_array_equal(split.labels, labels)


def test_the_idx_files_may_lie_directly_in_the_data_dir(tmp_path):
    write_idx_dataset(tmp_path, num_train=12, num_test=5)  # no mnist/ folder
    ds = datasets.load_dataset("mnist", str(tmp_path))
    assert (len(ds.train), len(ds.test)) == (12, 5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no fashion_mnist IDX files in .*fashion_mnist or"):
        datasets.load_dataset("fashion_mnist", str(tmp_path / "empty"))


def test_fashion_mnist_has_class_names(tmp_path):
    write_idx_dataset(tmp_path / "fashion_mnist", num_train=10, num_test=10)
    ds = datasets.load_dataset("fashion_mnist", str(tmp_path))
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"


def test_data_dir_comes_from_the_environment(tmp_path, monkeypatch):
    write_idx_dataset(tmp_path / "mnist", num_train=12, num_test=5)
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    assert len(datasets.load_dataset("mnist").train) == 12


def test_missing_file_is_reported(tmp_path):
    folder = write_idx_dataset(tmp_path / "mnist", num_train=10, num_test=10)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing IDX file t10k-labels-idx1-ubyte"):
        datasets.load_dataset("mnist", str(tmp_path))


def test_checksum_mismatch_is_reported(tmp_path):
    folder = write_idx_dataset(tmp_path / "mnist", num_train=10, num_test=10)
    images = np.full((10, 28, 28), 7, np.uint8)  # valid IDX, wrong content
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    with pytest.raises(DataError, match="checksum mismatch"):
        datasets.load_dataset("mnist", str(tmp_path))


def test_truncated_gzip_is_reported(tmp_path):
    folder = write_idx_dataset(tmp_path / "mnist", num_train=10, num_test=10)
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="cannot read"):
        datasets.load_dataset("mnist", str(tmp_path))


def test_corrupt_gzip_payload_is_reported(tmp_path):
    folder = write_idx_dataset(tmp_path / "mnist", num_train=10, num_test=10, checksums=False)
    path = folder / "train-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[20:40] = b"\xff" * 20  # a damaged deflate stream behind a valid gzip header
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="cannot read"):
        datasets.load_dataset("mnist", str(tmp_path))


def test_truncated_file_without_checksums_is_reported(tmp_path):
    folder = write_idx_dataset(tmp_path / "mnist", 10, 10, compress=False, checksums=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match="truncated or corrupt"):
        datasets.load_dataset("mnist", str(tmp_path))


def test_run_positions_hold_out_a_seeded_disjoint_validation_split():
    sizes = {"train": 100, "test": 7}
    positions = datasets.run_positions(sizes, 0.1, seed=3)
    again = datasets.run_positions(sizes, 0.1, seed=3)
    other = datasets.run_positions(sizes, 0.1, seed=4)
    train, validation = positions["train"], positions["validation"]
    assert (len(train), len(validation)) == (90, 10)
    np.testing.assert_array_equal(np.sort(np.r_[train, validation]), np.arange(100))
    assert list(train) == sorted(train) and list(validation) == sorted(validation)
    np.testing.assert_array_equal(validation, again["validation"])
    assert set(validation) != set(other["validation"])
    np.testing.assert_array_equal(positions["test"], np.arange(7))
    assert sorted(datasets.run_positions(sizes, 0.0, seed=3)) == ["test", "train"]


def _split(n: int) -> datasets.ArraySplit:
    return datasets.ArraySplit(np.zeros((n, 1, 1, 1), np.uint8), np.arange(n, dtype=np.int32))


def test_take_splits_reads_each_stored_split_once_and_takes_the_positions():
    stored = {"train": _split(6), "test": _split(3)}
    reads = []

    def read(name: str) -> datasets.ArraySplit:
        reads.append(name)
        return stored[name]

    positions = {"train": np.array([0, 2, 5]), "validation": np.array([1, 3, 4]), "test": [0, 1, 2]}
    taken = datasets.take_splits(positions, read)
    assert sorted(reads) == ["test", "train"]
    labels = {name: split.labels.tolist() for name, split in taken.items()}
    assert labels == {"train": [0, 2, 5], "validation": [1, 3, 4], "test": [0, 1, 2]}
    assert taken["test"] is stored["test"]  # all of it, in order: not taken again


def test_take_splits_refuses_a_stored_split_of_another_size():
    positions = {"train": np.array([0, 2]), "validation": np.array([1])}
    with pytest.raises(DataError, match=r"stored train split holds 6 examples .* has 3"):
        datasets.take_splits(positions, lambda name: _split(6))


@pytest.mark.slow
def test_unknown_tfds_name_is_reported():
    with pytest.raises(DataError, match="unknown dataset 'no_such_dataset'"):
        datasets.load_dataset("no_such_dataset")


def test_tfds_fails_fast_offline(tmp_path, monkeypatch):
    # Point the probe at a closed local port: the same path as a machine without internet.
    monkeypatch.setattr(datasets, "TFDS_DOWNLOAD_HOST", ("127.0.0.1", 9))
    start = time.monotonic()
    with pytest.raises(DataError, match="network is unreachable: run `tfds build kmnist`"):
        datasets.load_dataset("kmnist", str(tmp_path))
    assert time.monotonic() - start < 10


@pytest.mark.slow
def test_tfds_datasets_load_through_tfds(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        ds = datasets.load_dataset("kmnist", str(tmp_path))
    assert ds.train.images.shape == (12, 28, 28, 1) and ds.train.images.dtype == np.uint8
    assert len(ds.test) == 12 and ds.num_classes == 10


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_vendored_data_matches_published_facts(name):
    ds = datasets.load_dataset(name)
    assert (len(ds.train), len(ds.test)) == (60_000, 10_000)
    if name == "mnist":
        np.testing.assert_array_equal(
            np.bincount(ds.train.labels),
            [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
        )
        mean, std = ds.pixel_stats()
        assert mean == pytest.approx(0.1307, abs=1e-4) and std == pytest.approx(0.3081, abs=1e-4)
    else:
        assert set(np.bincount(ds.train.labels)) == {6000}
        assert set(np.bincount(ds.test.labels)) == {1000}


@pytest.mark.slow
def test_tensorflow_is_imported_with_one_thread_per_pool_and_no_accelerator():
    code = (
        "from flaxmnist.data import datasets; tf = datasets.import_tensorflow(); "
        "t = tf.config.threading; print(t.get_inter_op_parallelism_threads(), "
        "t.get_intra_op_parallelism_threads(), tf.config.get_visible_devices('GPU'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "1 1 []"
