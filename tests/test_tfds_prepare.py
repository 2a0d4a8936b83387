"""``python -m flaxmnist.data prepare``: the vendored IDX files as stock tfds datasets, offline.

Every subprocess runs with the network blocked (a ``sitecustomize`` that refuses connections and
logs each attempt). One data dir, prepared once by the CLI, is shared by the module's tests.
"""

from __future__ import annotations

import collections
import dataclasses
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

from flaxmnist.data import datasets, tfds_prepare
from flaxmnist.errors import DataError

# One worker builds the prepared data dir that this module shares.
pytestmark = pytest.mark.xdist_group("tfds-prepared")

NAMES = ("mnist", "fashion_mnist")
SIZES = {"train": 60_000, "test": 10_000}
VERSION = "3.0.1"  # tfds's stock version of both builders
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
LOAD_UNPREPARED = """
import sys
from collections.abc import Callable
from pathlib import Path
from flaxmnist import errors
from flaxmnist.data import datasets
with errors.reported(Path(sys.argv[1])):
    datasets.load_dataset("kmnist", sys.argv[1])
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


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, offline) -> tuple[Path, subprocess.CompletedProcess]:
    """A data dir where the CLI prepared both datasets, and that run's outcome."""
    data_dir = tmp_path_factory.mktemp("tfds")
    return data_dir, run(prepare_command(f"--data_dir={data_dir}"), offline)


def read_split(name: str, split: str, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """A prepared split as tfds.load gives it to anyone: images and labels, in tfds's order."""
    import tensorflow_datasets as tfds

    ds = tfds.load(name, split=split, data_dir=str(data_dir), download=False, as_supervised=True)
    batches = list(tfds.as_numpy(ds.batch(10_000)))
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def examples(images: np.ndarray, labels: np.ndarray) -> collections.Counter:
    """The multiset of (label, image bytes): equal for the same examples in any order."""
    rows = np.ascontiguousarray(images).reshape(len(images), -1)
    return collections.Counter(zip(labels.tolist(), map(bytes, rows), strict=True))


def assert_matches_idx(name: str, split: str, data_dir: Path) -> None:
    images, labels = read_split(name, split, data_dir)
    expected = getattr(datasets.load_idx_dataset(name), split)
    assert images.shape == (SIZES[split], 28, 28, 1) and images.dtype == np.uint8
    assert examples(images, labels) == examples(expected.images, expected.labels)


def staging_dirs(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob(".flaxmnist-staging-*"))


# --------------------------------------------------------------------------- fast


def test_split_digest_ignores_order_but_not_content():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, 50)
    digest = tfds_prepare.split_digest(images, labels)
    order = rng.permutation(50)
    assert tfds_prepare.split_digest(images[order], labels[order]) == digest
    changed = images.copy()
    changed[7, 3, 4, 0] ^= 1
    assert tfds_prepare.split_digest(changed, labels) != digest
    swapped = labels.copy()
    swapped[[0, 1]] = labels[0] + 1, labels[1]
    assert tfds_prepare.split_digest(images, swapped) != digest
    assert tfds_prepare.split_digest(images[:-1], labels[:-1]) != digest


def test_data_dir_is_the_flag_then_tfds_data_dir_then_tfds_default(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env"))
    assert tfds_prepare.resolve_tfds_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert tfds_prepare.resolve_tfds_data_dir() == tmp_path / "env"
    monkeypatch.delenv("TFDS_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert tfds_prepare.resolve_tfds_data_dir() == tmp_path / "tensorflow_datasets"


def test_only_the_vendored_datasets_can_be_prepared(tmp_path):
    with pytest.raises(DataError, match="cannot prepare 'kmnist': only mnist, fashion_mnist"):
        tfds_prepare.prepare("kmnist", tmp_path)
    assert not any(tmp_path.iterdir())


def test_an_unwritable_data_dir_is_a_data_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match=r"cannot write the tfds data dir .*file/tfds"):
        tfds_prepare.prepare("mnist", tmp_path / "file" / "tfds")


# --------------------------------------------------------------------------- prepared once


@pytest.mark.slow
def test_prepare_writes_both_datasets_offline_one_line_each(prepared, offline):
    data_dir, result = prepared
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for name, line in zip(NAMES, lines, strict=True):
        path = re.escape(str(data_dir / name / VERSION))
        assert re.fullmatch(PROGRESS_LINE.format(name=name, state="prepared", path=path), line)
    assert network_attempts(offline) == ""
    assert staging_dirs(data_dir) == []


@pytest.mark.slow
@pytest.mark.parametrize("split", SIZES)
@pytest.mark.parametrize("name", NAMES)
def test_prepared_split_holds_exactly_the_idx_examples(prepared, name, split):
    assert_matches_idx(name, split, prepared[0])


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_prepared_dataset_has_the_stock_features_and_splits(prepared, name):
    import tensorflow_datasets as tfds

    info = tfds.builder(name, data_dir=str(prepared[0])).info
    assert str(info.version) == VERSION and info.supervised_keys == ("image", "label")
    assert info.features["image"].shape == (28, 28, 1)
    assert info.features["image"].dtype == np.uint8
    assert tuple(info.features["label"].names) == datasets.IDX_CLASS_NAMES[name]
    assert {s: info.splits[s].num_examples for s in info.splits} == SIZES


@pytest.mark.slow
def test_the_check_after_building_catches_a_single_changed_pixel(prepared):
    import tensorflow_datasets as tfds

    idx = datasets.load_idx_dataset("mnist")
    images = idx.test.images.copy()
    images[1234, 14, 14, 0] ^= 0x80
    changed = dataclasses.replace(idx, test=datasets.ArraySplit(images, idx.test.labels))
    builder = tfds.builder("mnist", data_dir=str(prepared[0]))
    with pytest.raises(DataError, match=r"\(test: the examples differ\); nothing was installed"):
        tfds_prepare._verify(builder, changed)


@pytest.mark.slow
def test_tfds_load_in_a_fresh_offline_process_reads_it_in_seconds(prepared, offline):
    result = run([sys.executable, "-c", LOAD_OFFLINE, str(prepared[0])], offline)
    assert result.returncode == 0, result.stderr
    count, seconds = result.stdout.split()
    assert int(count) == SIZES["test"] and float(seconds) < 60
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
def test_preparing_again_is_a_fast_no_op(prepared, offline):
    data_dir = prepared[0]
    files = {p: p.stat().st_mtime_ns for p in data_dir.rglob("*") if p.is_file()}
    result = run(prepare_command(), {**offline, "TFDS_DATA_DIR": str(data_dir)})
    assert result.returncode == 0, result.stderr
    for name, line in zip(NAMES, result.stdout.splitlines(), strict=True):
        path = re.escape(str(data_dir / name / VERSION))
        pattern = PROGRESS_LINE.format(name=name, state="already prepared", path=path)
        assert re.fullmatch(pattern, line)
        assert float(line.rsplit("(", 1)[1].split()[0]) < 5
    again = tfds_prepare.prepare("mnist", data_dir)
    assert not again.built and again.builder.info.splits["train"].num_examples == SIZES["train"]
    assert {p: p.stat().st_mtime_ns for p in data_dir.rglob("*") if p.is_file()} == files


# --------------------------------------------------------------------------- kills, concurrency


STAGED = ".flaxmnist-staging-mnist-*/data/mnist"  # where a prepare has tfds write mnist


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout_s: float = 300) -> bool:
    """SIGKILLs ``process`` once ``ready()`` holds; False if it ended first."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.02)
    process.wait()
    return False


def appears(folder: Path, pattern: str) -> Callable[[], bool]:
    return lambda: any(folder.glob(pattern))


def after(seconds: float) -> Callable[[], bool]:
    moment = time.monotonic() + seconds
    return lambda: time.monotonic() > moment


def assert_absent_or_complete(data_dir: Path) -> None:
    """The dataset's path holds nothing tfds would load, or the whole dataset."""
    import tensorflow_datasets as tfds

    if not (data_dir / "mnist" / VERSION).exists():
        with pytest.raises(AssertionError, match="could not find data"):
            tfds.load("mnist", split="test", data_dir=str(data_dir), download=False)
        return
    builder = tfds.builder("mnist", data_dir=str(data_dir))
    assert builder.is_prepared()
    assert {s: builder.info.splits[s].num_examples for s in SIZES} == SIZES
    assert_matches_idx("mnist", "test", data_dir)


@pytest.mark.slow
def test_killed_prepares_leave_no_loadable_dataset_and_two_reruns_at_once_finish_it(
    tmp_path, offline
):
    data_dir = tmp_path / "tfds"
    command = prepare_command(f"--data_dir={data_dir}", "--datasets=mnist")
    seed = time.time_ns()
    kills = {
        "while tfds writes": lambda: appears(data_dir, f"{STAGED}/incomplete.*/*"),
        "while the result is checked": lambda: appears(data_dir, f"{STAGED}/{VERSION}/*.json"),
        f"at random (seed {seed})": lambda: after(random.Random(seed).uniform(0.5, 25)),
    }
    for moment, trigger in kills.items():
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=offline, stdout=subprocess.PIPE)
        killed = kill_when(process, trigger())
        assert killed or moment.startswith("at random"), f"prepare ended before a kill {moment}"
        assert_absent_or_complete(data_dir)

    final = data_dir / "mnist" / VERSION
    if final.exists():  # the random kill came too late: make the reruns build
        shutil.rmtree(final)
    reruns = [
        subprocess.Popen(command, cwd=REPO_ROOT, env=offline, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = sorted(process.communicate(timeout=600)[0] for process in reruns)
    assert [process.returncode for process in reruns] == [0, 0]
    states = [line.split(" in ")[0] for line in outputs]
    assert states == ["mnist: already prepared", "mnist: prepared"]
    assert_matches_idx("mnist", "train", data_dir)
    assert staging_dirs(data_dir) == []
    assert network_attempts(offline) == ""


# --------------------------------------------------------------------------- bad input


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "expected the command 'prepare', got 'no command'"),
        (["build"], "expected the command 'prepare', got 'build'"),
        (["prepare", "--datasets=kmnist"], "--datasets: cannot prepare kmnist"),
        (["prepare", "--datasets="], "--datasets: no dataset given"),
        (["prepare", "--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
        (["prepare", "--data_dir={file}/tfds"], "cannot write the tfds data dir"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, offline, args, message):
    (tmp_path / "file").write_text("")
    args = [arg.format(file=tmp_path / "file") for arg in args]
    result = run([sys.executable, "-m", "flaxmnist.data", *args], offline)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {message}")
    assert result.stdout == ""
