"""``python -m flaxmnist.data prepare``: the vendored IDX files as stock tfds datasets, offline.

Every subprocess runs with the network blocked (a ``sitecustomize`` that refuses connections and
logs each attempt). One data dir, where the CLI prepared the real MNIST once, is shared by the
module's tests; the drills (kills, concurrency, ArrayRecord files added later) run on a small
synthetic IDX dataset, which goes through the same staging, checks, lock and renames.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO_ROOT

from flaxmnist.data import array_record, datasets, grain_pipeline, tfds_prepare
from flaxmnist.errors import DataError
from flaxmnist.testing import write_idx_dataset

SIZES = {"train": 60_000, "test": 10_000}
VERSION = "3.0.1"  # tfds's stock version of both builders
IDX_VERSION = tfds_prepare.IDX_TFDS_VERSION  # of the datasets written from other IDX files
BLOCK_NETWORK = """
import os, socket

def _refuse(*args, **kwargs):
    with open(os.environ["NETWORK_LOG"], "a") as log:
        log.write(f"connection attempt {args!r}\\n")
    raise OSError("network blocked by the test")

socket.socket.connect = socket.socket.connect_ex = socket.create_connection = _refuse
"""
LOAD_OFFLINE = """
import sys, time
start = time.perf_counter()
import tensorflow_datasets as tfds
ds = tfds.load("mnist", split="test", data_dir=sys.argv[1])
count = sum(len(batch["label"]) for batch in tfds.as_numpy(ds.batch(5000)))
print(count, round(time.perf_counter() - start, 1))
"""
READ_SOURCE_OFFLINE = """
import sys, time
start = time.perf_counter()
import tensorflow_datasets as tfds
source = tfds.builder_from_directory(sys.argv[1]).as_data_source(split="test")
image = source[9999]["image"]
print(len(source), image.shape, "tensorflow" in sys.modules, round(time.perf_counter() - start, 1))
"""
LOAD_UNPREPARED = """
import sys
from collections.abc import Callable
from pathlib import Path
from flaxmnist import errors
from flaxmnist.data import datasets
with errors.reported(Path(sys.argv[1])):
    datasets.load_dataset("kmnist", sys.argv[1])
"""
FIND_PREPARED = """
import json, sys
from flaxmnist.data import tfds_prepare
prepared = tfds_prepare.prepare("mnist", sys.argv[1])
print(json.dumps([prepared.state, "tensorflow" in sys.modules]))
"""
PROGRESS_LINE = r"{name}: {state} in {path} \(\d+\.\d s\)"


@pytest.fixture(scope="module")
def offline(tmp_path_factory) -> dict[str, str]:
    """The environment of a subprocess that cannot open a connection (attempts are logged)."""
    folder = tmp_path_factory.mktemp("offline")
    (folder / "sitecustomize.py").write_text(BLOCK_NETWORK)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "NETWORK_LOG": str(folder / "network.log")}
    env.pop("TFDS_DATA_DIR", None)
    return env


def network_attempts(env: dict[str, str]) -> str:
    log = Path(env["NETWORK_LOG"])
    return log.read_text() if log.exists() else ""


def prepare_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "flaxmnist.data", "prepare", *args]


def child_command(idx_root: Path) -> list[str]:
    """What a grain run starts to prepare the IDX files in ``idx_root/mnist`` (both formats)."""
    return prepare_command("--datasets=mnist", f"--idx_dir={idx_root / 'mnist'}")


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, offline) -> tuple[Path, subprocess.CompletedProcess]:
    """A data dir where the CLI prepared the real MNIST, and that run's outcome."""
    data_dir = tmp_path_factory.mktemp("tfds")
    return data_dir, run(prepare_command(f"--data_dir={data_dir}", "--datasets=mnist"), offline)


def read_split(name: str, split: str, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """A prepared split as tfds.load gives it to anyone: images and labels, in tfds's order."""
    import tensorflow_datasets as tfds

    ds = tfds.load(name, split=split, data_dir=str(data_dir), download=False, as_supervised=True)
    batches = list(tfds.as_numpy(ds.batch(10_000)))
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def read_source(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A prepared split as ``as_data_source`` gives it: its ArrayRecord files, in tfds's order."""
    import tensorflow_datasets as tfds

    arrays = grain_pipeline.read_split(tfds.builder_from_directory(str(path)), split)
    return arrays.images, arrays.labels


def examples(images: np.ndarray, labels: np.ndarray) -> collections.Counter:
    """The multiset of (label, image bytes): equal for the same examples in any order."""
    rows = np.ascontiguousarray(images).reshape(len(images), -1)
    return collections.Counter(zip(labels.tolist(), map(bytes, rows), strict=True))


def assert_matches_idx(name: str, split: str, data_dir: Path, reader: str = "tfds.load") -> None:
    if reader == "tfds.load":
        images, labels = read_split(name, split, data_dir)
    else:
        images, labels = read_source(data_dir / name / VERSION, split)
    expected = getattr(datasets.load_idx_dataset(name), split)
    assert images.shape == (SIZES[split], 28, 28, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, expected.images)  # in the IDX files' order
    np.testing.assert_array_equal(labels, expected.labels)


def staging_dirs(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob(".flaxmnist-staging-*"))


# --------------------------------------------------------------------------- fast


def test_data_dir_is_the_flag_then_tfds_data_dir_then_tfds_default(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env"))
    assert tfds_prepare.resolve_tfds_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert tfds_prepare.resolve_tfds_data_dir() == tmp_path / "env"
    monkeypatch.delenv("TFDS_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert tfds_prepare.resolve_tfds_data_dir() == tmp_path / "tensorflow_datasets"


def test_only_the_vendored_datasets_can_be_prepared(tmp_path):
    with pytest.raises(DataError, match="cannot prepare 'kmnist': only mnist, fashion_mnist") as e:
        tfds_prepare.prepare("kmnist", tmp_path)
    assert "tfds build kmnist" in str(e.value) and "\n" not in str(e.value)
    assert not any(tmp_path.iterdir())
    with pytest.raises(DataError, match="cannot prepare 'no_such_set': not a tensorflow-datasets"):
        tfds_prepare.prepare("no_such_set", tmp_path)


def test_an_unwritable_data_dir_is_a_data_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match=r"cannot write the tfds data dir .*file/tfds"):
        tfds_prepare.prepare("mnist", tmp_path / "file" / "tfds")


# --------------------------------------------------------------------------- prepared once


@pytest.mark.slow
def test_prepare_writes_mnist_offline_in_one_line(prepared, offline):
    data_dir, result = prepared
    assert result.returncode == 0, result.stderr
    path = re.escape(str(data_dir / "mnist" / VERSION))
    line = PROGRESS_LINE.format(name="mnist", state="prepared", path=path)
    assert re.fullmatch(line, result.stdout.rstrip("\n"))
    assert network_attempts(offline) == ""
    assert staging_dirs(data_dir) == []


@pytest.mark.slow
# Each reader reads one whole split (prepare itself checks both splits against the IDX files on
# every build: test_the_check_after_building_catches_a_single_changed_pixel).
@pytest.mark.parametrize(("split", "reader"), [("test", "tfds.load"), ("train", "as_data_source")])
def test_prepared_split_holds_exactly_the_idx_examples(prepared, split, reader):
    assert_matches_idx("mnist", split, prepared[0], reader)


@pytest.mark.slow
def test_fashion_mnist_is_prepared_by_default_too_with_its_class_names(tmp_path):
    """The command's default list holds both datasets; fashion_mnist's test split, as tfds.load
    reads it, holds the IDX files' examples with tfds's class names."""
    import tensorflow_datasets as tfds

    assert tuple(tfds_prepare.PREPARABLE) == ("mnist", "fashion_mnist")
    assert tfds_prepare.prepare("fashion_mnist", tmp_path) is not None
    assert_matches_idx("fashion_mnist", "test", tmp_path)
    names = tfds.builder("fashion_mnist", data_dir=str(tmp_path)).info.features["label"].names
    assert tuple(names) == datasets.IDX_CLASS_NAMES["fashion_mnist"]


@pytest.mark.slow
def test_prepared_dataset_is_the_stock_one_in_tfrecord_with_array_record_beside(prepared):
    import tensorflow_datasets as tfds

    info = tfds.builder("mnist", data_dir=str(prepared[0])).info
    assert str(info.version) == VERSION and info.supervised_keys == ("image", "label")
    assert info.features["image"].shape == (28, 28, 1)
    assert info.features["image"].dtype == np.uint8
    assert tuple(info.features["label"].names) == datasets.IDX_CLASS_NAMES["mnist"]
    assert {s: info.splits[s].num_examples for s in info.splits} == SIZES
    assert info.file_format.value == "tfrecord"  # what tfds.load reads
    path = prepared[0] / "mnist" / VERSION
    stored = json.loads((path / "dataset_info.json").read_text())
    assert stored["alternativeFileFormats"] == ["array_record"]
    assert len(list(path.glob("mnist-*.array_record-*"))) == len(
        list(path.glob("mnist-*.tfrecord-*"))
    )


@pytest.mark.slow
def test_the_check_after_building_catches_a_single_changed_pixel_or_order(small):
    import tensorflow_datasets as tfds

    idx = datasets.load_idx_dataset("mnist", str(small))
    images = idx.test.images.copy()
    images[123, 14, 14, 0] ^= 0x80
    changed = dataclasses.replace(idx, test=datasets.ArraySplit(images, idx.test.labels))
    builder = tfds.builder_from_directory(str(version_dir(small)))
    tfds_prepare._verify(builder, idx)
    problem = r"\(test: the examples differ from the IDX files' \(or their order\)\)"
    with pytest.raises(DataError, match=rf"{problem}; nothing was installed"):
        tfds_prepare._verify(builder, changed)
    reversed_test = dataclasses.replace(idx, test=idx.test.take(np.arange(len(idx.test))[::-1]))
    with pytest.raises(DataError, match=problem):
        tfds_prepare._verify(builder, reversed_test)


@pytest.mark.slow
def test_tfds_load_in_a_fresh_offline_process_reads_it_in_seconds(prepared, offline):
    result = run([sys.executable, "-c", LOAD_OFFLINE, str(prepared[0])], offline)
    assert result.returncode == 0, result.stderr
    count, seconds = result.stdout.split()
    assert int(count) == SIZES["test"] and float(seconds) < 60
    assert network_attempts(offline) == ""


@pytest.mark.slow
def test_its_array_record_files_read_offline_without_tensorflow(prepared, offline):
    path = prepared[0] / "mnist" / VERSION
    result = run([sys.executable, "-c", READ_SOURCE_OFFLINE, str(path)], offline)
    assert result.returncode == 0, result.stderr
    count, height, width, channels, tensorflow, seconds = result.stdout.split()
    assert int(count) == SIZES["test"] and (height, width, channels) == ("(28,", "28,", "1)")
    assert tensorflow == "False" and float(seconds) < 60
    assert network_attempts(offline) == ""


@pytest.mark.slow
def test_an_unprepared_tfds_name_fails_fast_with_one_line(offline, tmp_path):
    probing = {**offline, "NETWORK_LOG": str(tmp_path / "network.log")}  # it probes: not offline's
    start = time.monotonic()
    result = run([sys.executable, "-c", LOAD_UNPREPARED, str(tmp_path)], probing)
    assert time.monotonic() - start < 60
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0])
    assert "tfds dataset 'kmnist' is not in" in errors[0] and "network is unreachable" in errors[0]
    assert "storage.googleapis.com" in network_attempts(probing)  # so the block catches attempts


@pytest.mark.slow
def test_preparing_again_is_a_fast_no_op_without_tensorflow(prepared, offline):
    data_dir = prepared[0]
    files = {p: p.stat().st_mtime_ns for p in data_dir.rglob("*") if p.is_file()}
    result = run(prepare_command("--datasets=mnist"), {**offline, "TFDS_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr
    path = re.escape(str(data_dir / "mnist" / VERSION))
    pattern = PROGRESS_LINE.format(name="mnist", state="already prepared", path=path)
    assert re.fullmatch(pattern, result.stdout.rstrip("\n"))
    assert float(result.stdout.rsplit("(", 1)[1].split()[0]) < 5
    found = run([sys.executable, "-c", FIND_PREPARED, str(data_dir)], offline)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout.splitlines()[-1]) == [tfds_prepare.PRESENT, False]
    again = tfds_prepare.prepare("mnist", data_dir)
    assert (
        again.state == tfds_prepare.PRESENT
        and again.builder.info.splits["train"].num_examples == SIZES["train"]
    )
    assert {p: p.stat().st_mtime_ns for p in data_dir.rglob("*") if p.is_file()} == files


# --------------------------------------------------------------------------- a small dataset


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """An IDX root whose synthetic mnist (3,000 + 500 examples) is prepared: both formats."""
    root = tmp_path_factory.mktemp("small")
    write_idx_dataset(root / "mnist", num_train=3000, num_test=500)
    tfds_prepare.prepare_idx("mnist", root / "mnist")
    return root


def version_dir(root: Path) -> Path:
    """The version dir of the dataset prepared from the IDX files in ``root/mnist``."""
    (path,) = root.glob(f"mnist/tfds/*/mnist/{IDX_VERSION}")
    return path


def copy_of(small: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of ``small`` (its IDX files and prepared dataset) and its dataset's version dir."""
    root = Path(shutil.copytree(small, tmp_path / "small"))
    return root, version_dir(root)


def as_written_before_array_record(path: Path, keep_files: bool = False) -> None:
    """Turns a prepared dataset into what the previous version wrote: TFRecord alone.

    ``keep_files``: leave the ArrayRecord files, as a run killed before its commit does.
    """
    info = json.loads((path / "dataset_info.json").read_text())
    del info["alternativeFileFormats"]
    (path / "dataset_info.json").write_text(json.dumps(info, indent=2))
    for file in [] if keep_files else path.glob("*.array_record-*"):
        file.unlink()


def assert_both_formats_hold_the_idx_examples(root: Path, path: Path) -> None:
    import tensorflow_datasets as tfds

    idx = datasets.load_idx_dataset("mnist", str(root))
    builder = tfds.builder_from_directory(str(path))
    for split in ("train", "test"):
        by_tfrecord = datasets.read_tfds_split(builder, split)
        by_array_record = read_source(path, split)
        expected = getattr(idx, split)
        assert examples(by_tfrecord.images, by_tfrecord.labels) == examples(
            expected.images, expected.labels
        )
        for tfrecord, copied in zip(
            (by_tfrecord.images, by_tfrecord.labels), by_array_record, strict=True
        ):
            np.testing.assert_array_equal(copied, tfrecord)  # also the same order


@pytest.mark.slow
def test_a_dataset_written_before_array_record_gets_them_added_once(small, tmp_path):
    root, path = copy_of(small, tmp_path)
    as_written_before_array_record(path)
    tfrecords = {p: p.stat().st_mtime_ns for p in path.glob("*.tfrecord-*")}
    assert tfds_prepare.prepare_idx("mnist", root / "mnist", write=False) is None
    tfds_pipeline = tfds_prepare.streaming_builder("mnist", str(root))  # reads it as it is
    assert tfds_pipeline.data_path == path and not array_record.has_array_record(path)
    assert tfds_prepare.prepare_idx("mnist", root / "mnist").state == tfds_prepare.CONVERTED
    again = tfds_prepare.prepare_idx("mnist", root / "mnist", write=False)
    assert again.state == tfds_prepare.PRESENT
    assert {p: p.stat().st_mtime_ns for p in path.glob("*.tfrecord-*")} == tfrecords
    assert_both_formats_hold_the_idx_examples(root, path)
    assert staging_dirs(path.parents[1]) == []


@pytest.mark.slow
def test_array_record_files_left_by_a_killed_run_are_written_again(small, tmp_path):
    root, path = copy_of(small, tmp_path)
    as_written_before_array_record(path, keep_files=True)
    for file in path.glob("*.array_record-*"):
        file.write_bytes(file.read_bytes()[:100])  # cut short: the killed run's half-written copy
    stale = path.parents[1] / ".flaxmnist-staging-mnist-killed"
    (stale / "array_record").mkdir(parents=True)
    assert tfds_prepare.prepare_idx("mnist", root / "mnist").state == tfds_prepare.CONVERTED
    assert_both_formats_hold_the_idx_examples(root, path)
    assert staging_dirs(path.parents[1]) == []


@pytest.mark.slow
def test_a_copy_that_differs_from_its_tfrecord_is_never_installed(small, tmp_path, monkeypatch):
    from tensorflow_datasets.core import file_adapters

    root, path = copy_of(small, tmp_path)
    as_written_before_array_record(path)
    write = file_adapters.ArrayRecordFileAdapter.write_examples

    def drop_the_last(path, iterator):
        return write(path, list(iterator)[:-1])

    monkeypatch.setattr(file_adapters.ArrayRecordFileAdapter, "write_examples", drop_the_last)
    with pytest.raises(DataError, match=r"its ArrayRecord copy differs \(\d+ records read, "):
        tfds_prepare.prepare_idx("mnist", root / "mnist")
    assert not array_record.has_array_record(path) and not list(path.glob("*.array_record-*"))
    assert staging_dirs(path.parents[1]) == []


@pytest.mark.slow
def test_another_tfds_name_gets_array_record_files_from_prepare_not_from_a_run(tmp_path):
    import tensorflow_datasets as tfds

    tfds.testing.DummyMnist(data_dir=str(tmp_path)).download_and_prepare()  # as `tfds build` does
    with pytest.raises(DataError, match=r"'dummy_mnist' in .* has no ArrayRecord files") as e:
        tfds_prepare.source_builder("dummy_mnist", str(tmp_path))
    message = str(e.value)
    assert (
        f"python -m flaxmnist.data prepare --datasets=dummy_mnist --data_dir={tmp_path}" in message
    )
    assert "\n" not in message and "--config.input_pipeline=tfds" in message
    prepared = tfds_prepare.prepare("dummy_mnist", tmp_path)
    assert (
        prepared.state == tfds_prepare.CONVERTED
        and prepared.builder.info.file_format.value == "tfrecord"
    )
    source = tfds_prepare.source_builder("dummy_mnist", str(tmp_path)).as_data_source(split="train")
    assert len(source) == 20 and source[0]["image"].shape == (28, 28, 1)


# --------------------------------------------------------------------------- kills, concurrency


STAGED = ".flaxmnist-staging-mnist-*"  # a prepare's staging dir


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout_s: float = 300) -> bool:
    """SIGKILLs ``process`` once ``ready()`` holds; False if it ended first."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.01)
    process.wait()
    return False


def appears(folder: Path, pattern: str) -> Callable[[], bool]:
    return lambda: any(folder.glob(pattern))


def after(seconds: float) -> Callable[[], bool]:
    moment = time.monotonic() + seconds
    return lambda: time.monotonic() > moment


def assert_absent_or_complete(root: Path, path: Path) -> None:
    """The dataset's path holds nothing tfds would load, or the whole dataset in both formats."""
    if not path.exists():
        assert tfds_prepare.prepare_idx("mnist", root / "mnist", write=False) is None
        return
    assert (path / "dataset_info.json").is_file()
    if array_record.has_array_record(path):
        assert_both_formats_hold_the_idx_examples(root, path)
    else:  # killed while adding them: the TFRecord dataset is untouched
        import tensorflow_datasets as tfds

        by_tfrecord = datasets.read_tfds_split(tfds.builder_from_directory(str(path)), "test")
        expected = datasets.load_idx_dataset("mnist", str(root)).test
        assert examples(by_tfrecord.images, by_tfrecord.labels) == examples(
            expected.images, expected.labels
        )


@pytest.mark.slow
def test_killed_prepares_leave_no_loadable_dataset_and_two_reruns_at_once_finish_it(
    small, tmp_path, offline
):
    """Five prepares killed at once, each in a copy of its own, at another moment."""
    seed = time.time_ns()
    staged = f"{STAGED}/data/mnist"
    kills = {  # a moment -> (written before the run starts?, when to kill)
        "while tfds writes": (False, f"{staged}/incomplete.*/*"),
        "while ArrayRecord files are written": (False, f"{STAGED}/array_record/*"),
        "while the result is checked": (False, f"{staged}/{IDX_VERSION}/*.array_record-*"),
        "while ArrayRecord files are added": (True, f"{STAGED}/array_record/*"),
        f"at random (seed {seed})": (False, None),
    }
    runs = {}
    for number, (moment, (written, pattern)) in enumerate(kills.items()):
        root, path = copy_of(small, tmp_path / str(number))
        if written:
            as_written_before_array_record(path)
        else:
            shutil.rmtree(path)
        trigger = appears(path.parents[1], pattern) if pattern else None
        process = subprocess.Popen(
            child_command(root), cwd=REPO_ROOT, env=offline, stdout=subprocess.DEVNULL
        )
        runs[moment] = (root, path, process, trigger)
    with concurrent.futures.ThreadPoolExecutor(len(runs)) as pool:
        killed = {
            moment: pool.submit(
                kill_when, process, trigger or after(random.Random(seed).uniform(2, 30))
            )
            for moment, (_, _, process, trigger) in runs.items()
        }
    for moment, (root, path, _, _) in runs.items():
        assert killed[moment].result() or moment.startswith("at random"), f"ended before {moment}"
        assert_absent_or_complete(root, path)

    root, path, _, _ = runs["while tfds writes"]
    reruns = [
        subprocess.Popen(
            child_command(root), cwd=REPO_ROOT, env=offline, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = sorted(process.communicate(timeout=600)[0] for process in reruns)
    assert [process.returncode for process in reruns] == [0, 0]
    states = [line.split(" in ")[0] for line in outputs]
    assert states == ["mnist: already prepared", "mnist: prepared"]
    assert_both_formats_hold_the_idx_examples(root, path)
    assert staging_dirs(path.parents[1]) == []
    assert network_attempts(offline) == ""


# --------------------------------------------------------------------------- bad input


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "expected the command 'prepare', got 'no command'"),
        (["build"], "expected the command 'prepare', got 'build'"),
        (["prepare", "--datasets=kmnist"], "cannot prepare 'kmnist': only mnist, fashion_mnist"),
        (["prepare", "--datasets="], "--datasets: no dataset given"),
        (["prepare", "--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
        (["prepare", "--data_dir={file}/tfds"], "cannot write the tfds data dir"),
        (["prepare", "--idx_dir={tmp}"], "--idx_dir: name one dataset in --datasets, got mnist,"),
        (["prepare", "--idx_dir={tmp}", "--datasets=kmnist"], "cannot prepare 'kmnist' from IDX"),
        (["prepare", "--idx_dir={tmp}", "--datasets=mnist"], "missing IDX file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, offline, args, message):
    (tmp_path / "file").write_text("")
    args = [arg.format(file=tmp_path / "file", tmp=tmp_path) for arg in args]
    result = run([sys.executable, "-m", "flaxmnist.data", *args], offline)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {message}")
    assert result.stdout == ""
