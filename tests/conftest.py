"""Shared fixtures: synthetic IDX datasets and small configs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from flaxmnist.configs import default
from flaxmnist.testing import write_idx_dataset

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_experiment(name: str) -> ModuleType:
    """Imports the script ``experiments/<name>.py`` as a module (experiments/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Runs ``python -m flaxmnist.train ARGS`` in ``cwd`` and returns its captured output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "flaxmnist.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


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
