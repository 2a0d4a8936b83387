"""Shared fixtures: one compilation cache for the session, synthetic IDX datasets, small configs."""

from __future__ import annotations

import os
import subprocess

# XLA's LLVM back end optimises the suite's programs at level 1 instead of 2: half the compile
# time, which is most of the suite's, at the same run time on these shapes. The programs
# themselves (the HLO flaxmnist's code builds, and XLA's passes over it) are the ones users run.
# Set before JAX is imported; subprocesses inherit it. `XLA_FLAGS= python -m pytest` runs the
# suite with XLA's defaults.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=1")

from pathlib import Path

import pytest

from flaxmnist.configs import default
from flaxmnist.storage import compilation_cache
from flaxmnist.testing import write_idx_dataset

# The files that take longest (half a minute to two minutes of one worker each) start first, so
# the workers, which take whole files (--dist loadfile), finish together instead of waiting on one.
LONGEST_FIRST = (
    "test_faults.py",
    "test_tfds_prepare.py",
    "test_nnx_models.py",
    "test_parallel.py",
    "test_tuning.py",
    "test_export.py",
    "test_evaluate.py",
    "test_serve_browser.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Moves the tests of :data:`LONGEST_FIRST` to the front, in that order (a stable sort)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session", autouse=True)
def session_compilation_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's checked compilation cache, on for the whole session, in a fresh folder.

    Tests train many small runs of the same shapes: each program is compiled once per session,
    not once per test, and the cache is exercised by a long sequence of different
    runs, in every worker process at once (pytest-xdist workers share the folder). Tests of the
    cache itself use folders of their own.
    """
    session_root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        session_root = session_root.parent  # the folder all workers of this session share
    path = session_root / "compilation-cache"
    path.mkdir(exist_ok=True)
    assert compilation_cache.enable(str(path))
    return path


@pytest.fixture
def synthetic_data_dir(tmp_path: Path) -> Path:
    """A data root with a synthetic ``mnist/`` folder (512 train, 100 test images)."""
    write_idx_dataset(tmp_path / "data" / "mnist")
    return tmp_path / "data"


@pytest.fixture
def tiny_config(synthetic_data_dir: Path):
    """A config that trains a small CNN on the synthetic data in a second or two."""
    config = default.get_config()
    config.data_dir = str(synthetic_data_dir)
    config.model = "cnn_simple"
    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_epochs = 2
    config.compilation_cache_dir = ""
    return config


@pytest.fixture(autouse=True)
def unit_tests_start_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """A test not marked ``slow`` that starts a process fails: the unit subset stays in-process.

    (README: ``slow`` marks tests that train, compile a whole model or run a subprocess.)
    """
    if request.node.get_closest_marker("slow") is None:

        def refuse(self, args, *_, **__):
            raise AssertionError(f"a unit test started a process ({args!r}): mark it slow")

        monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
