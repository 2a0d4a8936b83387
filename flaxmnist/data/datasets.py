"""Dataset sources: checksum-verified IDX files (vendored, offline) and ``tfds.load`` for the rest.

``mnist`` and ``fashion_mnist`` are read from IDX files: by default the copies vendored in the
repository's ``data/`` folder, or from ``--config.data_dir`` / ``$FLAXMNIST_DATA_DIR``. Any other
name is loaded through tensorflow-datasets, which fails fast when it would have to download offline.
Every source returns whole splits as numpy arrays (the MNIST family fits in memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import importlib.util
import math
import os
import socket
import struct
import types
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from flaxmnist.errors import DataError

DATA_DIR_ENV = "FLAXMNIST_DATA_DIR"
VENDORED_DATA_DIR = Path(__file__).resolve().parents[2] / "data"  # the repository's data/ folder
CHECKSUM_FILE = "SHA256SUMS"
IDX_IMAGE_SIZE = (28, 28)  # every IDX dataset here (mnist, fashion_mnist) has 28x28 images
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_CLASS_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
}
TFDS_DOWNLOAD_HOST = ("storage.googleapis.com", 443)  # tfds downloads from it first
NETWORK_PROBE_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True)
class ArraySplit:
    """One split in memory: ``images`` uint8 [N, H, W, C] and ``labels`` int32 [N]."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> ArraySplit:
        """The examples at ``indices``, in that order."""
        return ArraySplit(self.images[indices], self.labels[indices])


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset's train and test splits and what the model needs to know about it."""

    name: str
    train: ArraySplit
    test: ArraySplit
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        """The number of classes."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape of one image, [H, W, C]."""
        return tuple(self.train.images.shape[1:])

    def pixel_stats(self) -> tuple[float, float]:
        """Mean and standard deviation of the training pixels on the [0, 1] scale."""
        pixels = self.train.images.astype(np.float64) / 255.0
        return float(pixels.mean()), float(pixels.std())


# --------------------------------------------------------------------------- IDX files


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parses the bytes of an (uncompressed) IDX file into a uint8 array, validating its header."""
    if len(raw) < 4:
        raise DataError(f"{source}: truncated IDX file ({len(raw)} bytes)")
    zero, dtype_code, ndim = raw[0] | raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{source}: not a uint8 IDX file (bad magic {raw[:4].hex()})")
    if not 1 <= ndim <= 4:
        raise DataError(f"{source}: not a uint8 IDX file ({ndim} dimensions; expected 1 to 4)")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(f"{source}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected = header_size + math.prod(shape)  # Python ints: a forged header cannot overflow
    if len(raw) != expected:
        raise DataError(
            f"{source}: IDX file has {len(raw)} bytes, its header {shape} needs {expected} "
            "(truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def read_idx_bytes(path: Path) -> bytes:
    """Reads an IDX file, decompressing ``.gz``; a corrupt archive raises DataError."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        # One call, not GzipFile's small reads: faster, and it releases the GIL while inflating.
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e})") from None


def read_checksums(folder: Path) -> dict[str, str]:
    """Reads ``SHA256SUMS`` ("<sha256>  <relative path>" lines) from ``folder`` or its parent.

    Keys are paths relative to ``folder``; an absent file gives an empty dict. An unreadable or
    malformed listing raises DataError naming it.
    """
    for root, prefix in ((folder, ""), (folder.parent, folder.name + "/")):
        listing = root / CHECKSUM_FILE
        if listing.is_file():
            return _parse_checksums(listing, prefix)
    return {}


def _parse_checksums(listing: Path, prefix: str) -> dict[str, str]:
    """The ``prefix``-relative entries of checksum file ``listing``."""
    try:
        lines = listing.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{listing}: cannot read ({e})") from None
    sums = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataError(f"{listing}: line {number} is not '<sha256>  <file name>'")
        digest, name = parts
        if name.startswith(prefix):
            sums[name[len(prefix) :]] = digest.lower()
    return sums


def find_idx_file(folder: Path, stem: str) -> Path:
    """Returns ``folder/stem.gz`` or ``folder/stem``, whichever exists."""
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.exists():
            raise DataError(f"{candidate}: not a regular file (expected an IDX file)")
    raise DataError(
        f"missing IDX file {stem}(.gz) in {folder}; "
        f"set --config.data_dir or ${DATA_DIR_ENV} to a folder holding it"
    )


def load_idx_file(path: Path, checksums: dict[str, str]) -> np.ndarray:
    """Loads IDX file ``path``, verifying its decompressed bytes against ``checksums`` if listed."""
    raw = read_idx_bytes(path)
    expected = checksums.get(path.name.removesuffix(".gz"))
    if expected is not None and hashlib.sha256(raw).hexdigest() != expected:
        raise DataError(f"{path}: SHA256 checksum mismatch (corrupt or wrong file)")
    return parse_idx(raw, str(path))


def resolve_data_dir(data_dir: str | None) -> Path:
    """The IDX root: ``data_dir`` if given, else ``$FLAXMNIST_DATA_DIR``, else the vendored copy."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV)
    return Path(chosen).expanduser() if chosen else VENDORED_DATA_DIR


def load_idx_split(folder: Path, split: str) -> ArraySplit:
    """Loads a split from a folder holding the four standard IDX files.

    Raises DataError naming the file when it is missing, damaged, or holds arrays of the wrong
    shape: images must be [N, 28, 28] and labels [N] with the same N > 0.
    """
    checksums = read_checksums(folder)
    image_path, label_path = (find_idx_file(folder, stem) for stem in IDX_FILES[split])
    images, labels = load_idx_file(image_path, checksums), load_idx_file(label_path, checksums)
    if images.ndim != 3:
        raise DataError(f"{image_path}: expected [N, H, W] images, got shape {images.shape}")
    if images.shape[1:] != IDX_IMAGE_SIZE:
        raise DataError(
            f"{image_path}: expected {IDX_IMAGE_SIZE[0]}x{IDX_IMAGE_SIZE[1]} images, "
            f"got {images.shape[1]}x{images.shape[2]}"
        )
    if labels.ndim != 1:
        raise DataError(f"{label_path}: expected [N] labels, got shape {labels.shape}")
    if len(labels) != len(images):
        raise DataError(
            f"{label_path}: {len(labels)} labels, but {image_path.name} holds {len(images)} images"
        )
    if not len(images):
        raise DataError(f"{image_path}: holds no images")
    return ArraySplit(images[..., None], labels.astype(np.int32))


def idx_folder(name: str, data_dir: str | None = None) -> Path:
    """The folder of ``name``'s IDX files: ``<root>/<name>/`` if it exists, else ``<root>``.

    Args:
      name: ``mnist`` or ``fashion_mnist``.
      data_dir: the IDX root (see :func:`resolve_data_dir`).

    Returns:
      The folder (not checked to exist).
    """
    root = resolve_data_dir(data_dir)
    return root / name if (root / name).is_dir() else root


def load_idx_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Loads ``mnist`` or ``fashion_mnist`` from IDX files (``<root>/<name>/`` or ``<root>/``)."""
    root = resolve_data_dir(data_dir)
    folder = idx_folder(name, data_dir)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"data folder {folder} is not a directory")
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist")
    if folder == root and not any(root.glob(IDX_FILES["train"][0] + "*")):
        raise DataError(
            f"no {name} IDX files in {root / name} or {root}; "
            f"set --config.data_dir or ${DATA_DIR_ENV} to a folder holding them"
        )
    train, test = (load_idx_split(folder, split) for split in ("train", "test"))
    class_names = IDX_CLASS_NAMES[name]
    for split_name, split in (("train", train), ("test", test)):
        if split.labels.max() >= len(class_names):
            label_file = find_idx_file(folder, IDX_FILES[split_name][1])
            raise DataError(
                f"{label_file}: label {split.labels.max()} is out of range for the "
                f"{len(class_names)} classes of {name} (0-{len(class_names) - 1})"
            )
    return Dataset(name, train, test, class_names)


# --------------------------------------------------------------------------- tfds


def import_tensorflow() -> types.ModuleType:
    """Imports TensorFlow with accelerators hidden and one thread per pool, to leave JAX its own.

    Returns:
      The ``tensorflow`` module.
    """
    import tensorflow as tf

    for kind in ("GPU", "TPU"):
        tf.config.set_visible_devices([], kind)
    # One thread in each of TensorFlow's own pools (by default one per core): the cores stay with
    # XLA's steps, which TensorFlow's spinning threads otherwise slow down.
    with contextlib.suppress(RuntimeError):  # TensorFlow already running: its pools stay
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(1)
    return tf


def import_tfds(needs_tensorflow: str | None = None) -> types.ModuleType:
    """Imports tensorflow_datasets, and TensorFlow before it when ``needs_tensorflow`` says why.

    tensorflow_datasets imports TensorFlow lazily: its builders, metadata and ArrayRecord data
    sources work without it (the ``grain`` pipeline), while ``as_dataset``, ``tfds.load`` and
    writing datasets need it.

    Args:
      needs_tensorflow: what TensorFlow is needed for (it names the error when TensorFlow is
        missing), or None to import tensorflow_datasets alone.

    Returns:
      The ``tensorflow_datasets`` module.

    Raises:
      DataError: TensorFlow is needed and not installed, or tensorflow_datasets cannot be imported.
    """
    if needs_tensorflow is not None:
        if importlib.util.find_spec("tensorflow") is None:
            raise DataError(f"{needs_tensorflow} needs tensorflow: pip install 'flaxmnist[tf]'")
        import_tensorflow()
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(f"tensorflow-datasets cannot be imported ({e})") from None
    return tfds


def read_tfds_split(builder, split: str) -> ArraySplit:
    """Reads a prepared tfds split into memory from its TFRecord files, in the stored order.

    Args:
      builder: a tfds builder (AssertionError when its dataset is not prepared).
      split: the split's name.

    Returns:
      Its images (uint8 [N, H, W, C]) and labels (int32 [N]): the features the dataset's
      supervised keys name, else ``image`` and ``label``.
    """
    tfds = import_tfds(needs_tensorflow="reading tfds's TFRecord files")
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    dataset = builder.as_dataset(split=split, batch_size=10_000, shuffle_files=False)
    batches = list(tfds.as_numpy(dataset))
    images = np.concatenate([batch[image_key] for batch in batches])
    labels = np.concatenate([batch[label_key] for batch in batches])
    if images.ndim == 3:
        images = images[..., None]
    return ArraySplit(images.astype(np.uint8), labels.astype(np.int32))


def load_tfds_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Loads any image-classification dataset tfds knows, failing fast when offline."""
    tfds = import_tfds(f"loading datasets other than {', '.join(IDX_CLASS_NAMES)}")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"unknown dataset {name!r}: not one of {', '.join(IDX_CLASS_NAMES)} "
            "(local IDX files) nor a tensorflow-datasets name"
        ) from None
    try:
        splits = [read_tfds_split(builder, s) for s in ("train", "test")]
    except AssertionError:  # tfds's way of saying "not downloaded and prepared yet"
        try:  # a download cannot succeed when tfds's first host cannot be reached
            socket.create_connection(TFDS_DOWNLOAD_HOST, NETWORK_PROBE_TIMEOUT_S).close()
        except OSError:
            raise DataError(
                f"tfds dataset {name!r} is not in {builder.data_dir} and the network is "
                f"unreachable: run `tfds build {name}` on a machine with internet and copy its "
                "data dir here (pass it as --config.data_dir), or use IDX files"
            ) from None
        builder.download_and_prepare()
        splits = [read_tfds_split(builder, s) for s in ("train", "test")]
    class_names = tuple(builder.info.features["label"].names)
    return Dataset(name, splits[0], splits[1], class_names)


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Loads dataset ``name``: IDX files for the MNIST family, tensorflow-datasets otherwise."""
    if name in IDX_CLASS_NAMES:
        return load_idx_dataset(name, data_dir)
    return load_tfds_dataset(name, data_dir)


STORED_SPLITS = {"train": "train", "validation": "train", "test": "test"}  # run split -> stored


def run_positions(
    stored_sizes: dict[str, int], validation_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Each run split's examples as sorted positions in the stored split it comes from.

    Every source of a dataset (IDX files, its tfds files, their ArrayRecord copies) holds a
    stored split's examples in one order, so these positions name the same examples in each.
    ``validation_fraction`` of the training split, picked by ``seed``, is the validation split
    (none when the fraction is 0).

    Args:
      stored_sizes: the size of the stored ``train`` and ``test`` splits.
      validation_fraction: the share of the training split held out.
      seed: the run's seed.

    Returns:
      ``train``, ``test`` and (for a fraction > 0) ``validation`` positions, int64.
    """
    order = np.random.default_rng(seed).permutation(stored_sizes["train"])
    num_validation = round(validation_fraction * stored_sizes["train"])
    positions = {"train": np.sort(order[num_validation:]), "test": np.arange(stored_sizes["test"])}
    if validation_fraction > 0:
        positions["validation"] = np.sort(order[:num_validation])
    return positions


def take_splits(
    positions: dict[str, np.ndarray], read: Callable[[str], ArraySplit]
) -> dict[str, ArraySplit]:
    """The run's splits, taken at their positions (:func:`run_positions`) from the stored splits.

    Args:
      positions: each run split's positions in its stored split (:data:`STORED_SPLITS`).
      read: a stored split's name -> that split; called once each.

    Returns:
      Each run split, or the stored split itself where the positions are all of it, in order.

    Raises:
      DataError: a stored split's size is not the sum of its run splits' (the run's splits
        come from other files than the ones read here).
    """
    taken = {}
    for stored in dict.fromkeys(STORED_SPLITS[name] for name in positions):
        split = read(stored)
        mine = {name: p for name, p in positions.items() if STORED_SPLITS[name] == stored}
        expected = sum(len(p) for p in mine.values())
        if len(split) != expected:
            raise DataError(
                f"the stored {stored} split holds {len(split)} examples where the run's data has "
                f"{expected}: the tfds files and the IDX files differ"
            )
        for name, p in mine.items():
            taken[name] = split if np.array_equal(p, np.arange(len(split))) else split.take(p)
    return taken
