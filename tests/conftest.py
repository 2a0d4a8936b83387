"""Shared fixtures: synthetic IDX datasets and small configs."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from flaxmnist.configs import default

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_experiment(name: str) -> ModuleType:
    """Imports the script ``experiments/<name>.py`` as a module (experiments/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
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


def idx_bytes(array: np.ndarray) -> bytes:
    """Encodes a uint8 array in IDX format."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def synthetic_split(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: class k lights up a 6×6 block at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, num).astype(np.uint8)
    images = rng.integers(0, 60, (num, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 5)
        images[i, 4 + 12 * row : 10 + 12 * row, 2 + 5 * col : 7 + 5 * col] = 250
    return images, labels


def write_idx_dataset(
    folder: Path,
    num_train: int = 512,
    num_test: int = 100,
    compress: bool = True,
    checksums: bool = True,
) -> Path:
    """Writes the four standard IDX files (and SHA256SUMS) of a synthetic dataset."""
    folder.mkdir(parents=True, exist_ok=True)
    sums = []
    for prefix, num, seed in (("train", num_train, 1), ("t10k", num_test, 2)):
        images, labels = synthetic_split(num, seed)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            stem = f"{prefix}-{kind}-ubyte"
            raw = idx_bytes(array)
            sums.append(f"{hashlib.sha256(raw).hexdigest()}  {stem}")
            if compress:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / stem).write_bytes(raw)
    if checksums:
        (folder / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return folder


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
