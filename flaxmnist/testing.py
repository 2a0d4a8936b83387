"""Synthetic MNIST-format data for tests and fault drills (as ``tfds.testing`` is for tfds).

``write_idx_dataset(folder)`` writes the four standard IDX files (and ``SHA256SUMS``) of a small,
learnable dataset; point ``config.data_dir`` at the folder's parent and a run trains on it in
seconds. ``run_splits(data_dir, fraction, seed)`` gives the splits such a run trains and tests on.
``write_between_markers`` puts a generated table into a document, and ``revision()`` names the
commit a measurement was taken on. ``draw_on_pad(driver, pad_strokes(image))`` draws an image on
the page of ``python -m flaxmnist.serve`` in a selenium-driven browser.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import subprocess
from pathlib import Path

import numpy as np

from flaxmnist.data import datasets
from flaxmnist.data.datasets import ArraySplit
from flaxmnist.storage import files


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
    """Writes the four standard IDX files (and SHA256SUMS) of a synthetic dataset to ``folder``.

    Args:
      folder: the dataset's folder, e.g. ``DATA/mnist`` (then ``config.data_dir=DATA``).
      num_train: training examples.
      num_test: test examples.
      compress: write ``.gz`` files, as the vendored data is kept.
      checksums: write ``SHA256SUMS`` over the uncompressed files.

    Returns:
      ``folder``.
    """
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


def run_splits(
    data_dir: str, validation_fraction: float, seed: int, name: str = "mnist"
) -> dict[str, ArraySplit]:
    """The splits a run trains, validates and tests on, as the device pipeline holds them.

    Args:
      data_dir: the IDX root (``config.data_dir``).
      validation_fraction: ``config.validation_fraction``.
      seed: ``config.seed`` (it picks the validation examples).
      name: the dataset.

    Returns:
      ``train``, ``validation`` and ``test`` as arrays, split as training splits them.
    """
    idx = datasets.load_idx_dataset(name, data_dir)
    sizes = {"train": len(idx.train), "test": len(idx.test)}
    positions = datasets.run_positions(sizes, validation_fraction, seed)
    return datasets.take_splits(positions, lambda stored: getattr(idx, stored))


def revision() -> str:
    """The code's commit, ``-dirty`` when the working tree differs ("" outside a checkout)."""
    described = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
    )
    return described.stdout.strip()


def write_between_markers(doc: Path, name: str, text: str, writer: str) -> None:
    """Replaces what lies between ``doc``'s markers for ``name`` with ``text`` (atomically).

    The markers are ``<!-- NAME:begin (written by WRITER) -->`` and ``<!-- NAME:end -->``; a
    document without them gets both at its end.
    """
    begin, end = f"<!-- {name}:begin (written by {writer}) -->", f"<!-- {name}:end -->"
    current = doc.read_text() if doc.exists() else ""
    if begin in current and end in current:
        before, rest = current.split(begin, 1)
        after = rest.split(end, 1)[1]
    else:
        before, after = current + ("\n" if current and not current.endswith("\n") else ""), "\n"
    files.write_text_atomic(doc, f"{before}{begin}\n{text.rstrip()}\n{end}{after}")


PAD_SCALE = 10  # the serve page's pad: 280 × 280 pixels, 10 per pixel of a 28 × 28 image
ANSWERED = "return document.body.dataset.answered === document.body.dataset.version"


def pad_strokes(image: np.ndarray) -> list[list[tuple[int, int]]]:
    """A 28×28 MNIST image as pen strokes on the pad: one per horizontal run of ink in each row.

    Points are in pad pixels; ink is a grey level above 127.
    """
    strokes = []
    for row, ink in enumerate(np.reshape(image, (28, 28)) > 127):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], ink.astype(int), [0]])))
        y = PAD_SCALE * row + PAD_SCALE // 2
        for start, end in zip(edges[::2], edges[1::2], strict=True):
            xs = (PAD_SCALE * start + PAD_SCALE // 2, PAD_SCALE * (end - 1) + PAD_SCALE // 2)
            strokes.append([(xs[0], y), (xs[1], y)])
    return strokes


def draw_on_pad(driver, strokes: list[list[tuple[int, int]]], timeout_s: float = 60) -> None:
    """Clears the serve page's pad, draws ``strokes`` with the mouse, waits for the answer.

    ``driver`` is a selenium WebDriver showing the page; the wait ends when the page has answered
    the finished drawing.
    """
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.ID, "clear").click()
    pad = driver.find_element(By.ID, "pad")
    half = 28 * PAD_SCALE // 2
    actions = ActionChains(driver, duration=0)
    for stroke in strokes:
        (x, y), *rest = stroke
        actions.move_to_element_with_offset(pad, x - half, y - half).click_and_hold()
        for next_x, next_y in rest:
            actions.move_by_offset(next_x - x, next_y - y)
            x, y = next_x, next_y
        actions.release()
    actions.perform()
    WebDriverWait(driver, timeout_s).until(lambda d: d.execute_script(ANSWERED))
