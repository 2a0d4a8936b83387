"""Prepares ``mnist`` and ``fashion_mnist`` in a tfds data dir from the vendored IDX files, offline.

tfds's stock builders do the writing (same names, versions, features and splits as a
``tfds build``). Their download step is fed from the repository's ``data/`` folder: the vendored
``.gz`` files are placed in a private download dir under the names tfds's download manager gives
the builder's registered URLs, so it finds them cached and never opens a connection.

The IDX bytes are checked against ``data/SHA256SUMS`` first. tfds writes into a staging dir inside
the data dir; the result is read back and compared with the IDX arrays, then renamed into place.
So the dataset's path only ever holds a checked dataset: a killed run leaves a staging dir that
tfds never reads and the next run deletes. A lock file per dataset serialises concurrent runs; a
second run finds the dataset prepared and only checks its metadata.

Any other IDX folder (``--config.data_dir`` pointing at one, e.g. synthetic test data) becomes a
tfds dataset the same way, written by tfds's ``store_as_tfds_dataset`` (the stock builders expect
exactly 60,000 and 10,000 examples) into ``<folder>/tfds/<digest>/``, where ``<digest>`` is a
SHA-256 of the folder's IDX files: changed files get a dataset of their own.
:func:`streaming_builder` picks the builder the ``tfds`` input pipeline reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import importlib.util
import io
import json
import os
import shutil
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flaxmnist.data import datasets
from flaxmnist.errors import DataError

if TYPE_CHECKING:
    import tensorflow_datasets as tfds

PREPARABLE = tuple(datasets.IDX_CLASS_NAMES)  # the datasets whose IDX files the repository ships
SPLIT_SIZES = {"train": 60_000, "test": 10_000}  # the same for both
TFDS_DATA_DIR_ENV = "TFDS_DATA_DIR"
DEFAULT_TFDS_DATA_DIR = "~/tensorflow_datasets"
LOCK_FILE = ".flaxmnist-prepare-{name}.lock"
STAGING_PREFIX = ".flaxmnist-staging-{name}-"  # hidden: tfds skips dot-dirs in a data dir
READ_BATCH = 10_000
IDX_TFDS_DIR = "tfds"  # in an IDX folder: its tfds datasets, one subfolder per content digest
IDX_TFDS_VERSION = "1.0.0"
DIGEST_CHARS = 16


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The outcome of :func:`prepare`.

    Attributes:
      builder: the stock tfds builder, reading the prepared dataset.
      built: whether this call wrote the dataset (False: it was already prepared).
      seconds: how long the call took.
    """

    builder: tfds.core.DatasetBuilder
    built: bool
    seconds: float


def resolve_tfds_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The tfds data dir: ``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``.

    Args:
      data_dir: an explicit data dir, or None for tfds's default.

    Returns:
      The data dir, with ``~`` expanded.
    """
    chosen = data_dir or os.environ.get(TFDS_DATA_DIR_ENV) or DEFAULT_TFDS_DATA_DIR
    return Path(chosen).expanduser()


def ensure_prepared(
    name: str, data_dir: str | os.PathLike | None = None
) -> tfds.core.DatasetBuilder:
    """Prepares ``name`` in ``data_dir`` unless it already is; returns its tfds builder.

    Args:
      name: ``mnist`` or ``fashion_mnist``.
      data_dir: the tfds data dir (default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

    Returns:
      The stock builder for ``name``, ready for ``as_dataset`` (and ``tfds.load`` finds it too).

    Raises:
      DataError: unknown name, unwritable data dir, damaged vendored files, or a written dataset
        that does not hold the IDX files' examples.
    """
    return prepare(name, data_dir).builder


def prepare(name: str, data_dir: str | os.PathLike | None = None) -> Prepared:
    """Like :func:`ensure_prepared`, also saying whether it built the dataset and how fast.

    Args:
      name: ``mnist`` or ``fashion_mnist``.
      data_dir: the tfds data dir (default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

    Returns:
      The builder, whether this call wrote the dataset, and the seconds it took.
    """
    start = time.perf_counter()
    if name not in PREPARABLE:
        raise DataError(
            f"cannot prepare {name!r}: only {', '.join(PREPARABLE)} ship as IDX files "
            "in the repository"
        )
    root = resolve_tfds_data_dir(data_dir)
    _make_writable_dir(root)
    tfds = _import_tfds()
    open_builder = functools.partial(tfds.builder, name, data_dir=os.fspath(root))
    builder, built = open_builder(), False
    if not is_complete(builder):
        with _locked(root / LOCK_FILE.format(name=name)):
            builder = open_builder()  # another process may have prepared it meanwhile
            if not is_complete(builder):
                idx = datasets.load_idx_dataset(name, str(datasets.VENDORED_DATA_DIR))
                write = functools.partial(_write_stock, tfds, name)
                _build_and_verify(root, name, idx, write)
                builder, built = open_builder(), True
    return Prepared(builder, built, time.perf_counter() - start)


def ensure_idx_prepared(name: str, folder: Path) -> tfds.core.DatasetBuilder:
    """A tfds dataset of the IDX files in ``folder``, written on first use; returns its builder.

    Args:
      name: ``mnist`` or ``fashion_mnist`` (its class names label the examples).
      folder: a folder holding the four IDX files, of any example counts.

    Returns:
      A read-only builder of ``<folder>/tfds/<digest>/<name>/1.0.0``: features and splits as the
      stock dataset's, the examples those of the IDX files.

    Raises:
      DataError: unknown name, damaged IDX files, or a folder that cannot be written.
    """
    if name not in PREPARABLE:
        raise DataError(f"cannot prepare {name!r} from IDX files: not one of {PREPARABLE}")
    tfds = _import_tfds()
    root = folder / IDX_TFDS_DIR / idx_digest(folder)
    path = root / name / IDX_TFDS_VERSION
    if not (path / "dataset_info.json").is_file():  # present only once checked and renamed
        _make_writable_dir(root)
        with _locked(root / LOCK_FILE.format(name=name)):
            if not (path / "dataset_info.json").is_file():
                idx = datasets.load_idx_dataset(name, str(folder))
                _build_and_verify(root, name, idx, functools.partial(_write_idx, tfds, name, idx))
    return tfds.builder_from_directory(os.fspath(path))


def streaming_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The tfds builder the ``tfds`` input pipeline reads for ``config.dataset`` and ``data_dir``.

    Args:
      name: the dataset's name.
      data_dir: ``config.data_dir``: the IDX root for ``mnist`` / ``fashion_mnist``, tfds's data
        dir for other names (None: the defaults).

    Returns:
      For the vendored IDX files, the stock dataset in tfds's data dir; for other IDX files, the
      dataset of :func:`ensure_idx_prepared`; for other names, tfds's builder in ``data_dir``.
      The first two are prepared here when they are not yet.
    """
    if name not in PREPARABLE:
        return _import_tfds().builder(name, data_dir=data_dir)
    folder = datasets.idx_folder(name, data_dir)
    if folder.resolve() == (datasets.VENDORED_DATA_DIR / name).resolve():
        return ensure_prepared(name)
    return ensure_idx_prepared(name, folder)


def idx_digest(folder: Path) -> str:
    """The first hex digits of a SHA-256 over the four IDX files in ``folder``, as stored.

    Args:
      folder: a folder holding the four standard IDX files.

    Returns:
      16 hex digits naming the folder's current contents.
    """
    digest = hashlib.sha256()
    for path in datasets.idx_files(folder):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:DIGEST_CHARS]


def is_complete(builder: tfds.core.DatasetBuilder) -> bool:
    """Whether ``builder``'s dataset is written in full: renamed into place, splits counted.

    Args:
      builder: a tfds builder.

    Returns:
      True when the version dir exists with its metadata and the stock split sizes.
    """
    if not builder.data_path.is_dir() or not builder.is_prepared():  # is_dir: no tfds warning
        return False
    splits = builder.info.splits
    return all(s in splits and splits[s].num_examples == n for s, n in SPLIT_SIZES.items())


def split_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """A SHA-256 over a split's examples that does not depend on their order.

    Args:
      images: uint8 images, [N, ...].
      labels: integer labels, [N].

    Returns:
      The hex digest of the sorted per-example digests of (label, image bytes).
    """
    flat = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1)
    per_example = sorted(
        hashlib.sha256(int(label).to_bytes(8, "little") + row.tobytes()).digest()
        for label, row in zip(labels, flat, strict=True)
    )
    return hashlib.sha256(b"".join(per_example)).hexdigest()


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads a prepared split into memory.

    Args:
      builder: a prepared tfds builder.
      split: the split's name.

    Returns:
      The images (uint8 [N, 28, 28, 1]) and labels ([N]), in tfds's order.
    """
    import tensorflow_datasets as tfds

    batches = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=READ_BATCH)))
    return tuple(np.concatenate([b[key] for b in batches]) for key in ("image", "label"))


# --------------------------------------------------------------------------- building


def _import_tfds() -> types.ModuleType:
    """Imports tensorflow_datasets; a DataError when TensorFlow (it writes with it) is missing."""
    if importlib.util.find_spec("tensorflow") is None:
        raise DataError("preparing tfds datasets needs tensorflow: pip install 'flaxmnist[tf]'")
    import tensorflow_datasets as tfds

    return tfds


def _make_writable_dir(root: Path) -> None:
    """Creates ``root`` and checks that files can be made in it (a clear error if not)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as e:
        raise DataError(f"cannot write the tfds data dir {root}: {e.strerror or e}") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``path`` (created if missing); released on exit or death."""
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_and_verify(
    root: Path,
    name: str,
    idx: datasets.Dataset,
    write: Callable[[Path], tfds.core.DatasetBuilder],
) -> None:
    """Writes ``name`` into a staging dir with ``write``, checks it against ``idx``, renames it.

    Call it holding the dataset's lock: it removes the staging dirs of killed runs first. The
    rename is atomic, so the dataset's path in ``root`` only ever holds a checked dataset.
    ``write(staging)`` writes the dataset into ``staging / "data"`` and returns its builder.
    """
    for stale in root.glob(STAGING_PREFIX.format(name=name) + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX.format(name=name), dir=root))
    try:
        builder = write(staging)
        _verify(builder, idx)
        final = root / builder.data_path.relative_to(staging / "data")
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # damaged: it failed is_complete under the lock
            shutil.rmtree(final)
        builder.data_path.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_stock(tfds: types.ModuleType, name: str, staging: Path) -> tfds.core.DatasetBuilder:
    """Runs tfds's stock builder on the vendored files, into ``staging / "data"``."""
    builder = tfds.builder(name, data_dir=os.fspath(staging / "data"))
    _stage_downloads(builder, datasets.VENDORED_DATA_DIR / name, staging / "downloads")
    with contextlib.redirect_stdout(io.StringIO()):  # tfds prints the staging path
        builder.download_and_prepare(
            download_dir=os.fspath(staging / "downloads"),
            download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        )
    return tfds.builder(name, data_dir=os.fspath(staging / "data"))  # reads back what was written


def _write_idx(
    tfds: types.ModuleType, name: str, idx: datasets.Dataset, staging: Path
) -> tfds.core.DatasetBuilder:
    """Stores ``idx`` as a tfds dataset with the stock features, into ``staging / "data"``."""
    import tensorflow as tf

    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=idx.image_shape),
            "label": tfds.features.ClassLabel(names=list(idx.class_names)),
        }
    )
    splits = {
        split: tf.data.Dataset.from_tensor_slices(
            {"image": arrays.images, "label": arrays.labels.astype(np.int64)}
        )
        for split, arrays in (("train", idx.train), ("test", idx.test))
    }
    tfds.disable_progress_bar()  # no bars in a training run's terminal
    with contextlib.redirect_stdout(io.StringIO()):
        written = tfds.dataset_builders.store_as_tfds_dataset(
            name, IDX_TFDS_VERSION, features, splits, data_dir=os.fspath(staging / "data")
        )
    return tfds.builder_from_directory(os.fspath(written.data_path))


def _stage_downloads(
    builder: tfds.core.DatasetBuilder, idx_folder: Path, download_dir: Path
) -> None:
    """Places the vendored ``.gz`` files where tfds looks for the builder's cached downloads.

    tfds's download manager names a cached download after its URL and registered SHA-256
    (``resource.get_dl_fname``) and takes a file there, with its ``.INFO`` file beside it, as
    downloaded: the builder then extracts the vendored file instead of fetching the URL.
    """
    from tensorflow_datasets.core.download import resource

    url_infos = builder.url_infos or {}
    missing = sorted(
        info.filename for info in url_infos.values() if not (idx_folder / info.filename).is_file()
    )
    if not url_infos or missing:
        raise DataError(
            f"tfds's {builder.name} builder downloads {', '.join(missing) or 'no known files'}, "
            f"which {idx_folder} does not hold: this tensorflow-datasets version cannot be "
            "prepared offline"
        )
    target = download_dir / builder.name
    target.mkdir(parents=True)
    for url, info in url_infos.items():
        path = target / resource.get_dl_fname(url, info.checksum)
        shutil.copyfile(idx_folder / info.filename, path)
        record = {"urls": [url], "dataset_names": [builder.name], "original_fname": info.filename}
        resource.get_info_path(path).write_text(json.dumps(record))


def _verify(builder: tfds.core.DatasetBuilder, idx: datasets.Dataset) -> None:
    """Checks that the written dataset holds exactly the IDX files' examples."""
    problems = [
        f"{split}: {problem}"
        for split in SPLIT_SIZES
        if (problem := _split_problem(builder, split, getattr(idx, split)))
    ]
    if problems:
        raise DataError(
            f"tfds wrote a {builder.name} that does not match the IDX files "
            f"({'; '.join(problems)}); nothing was installed"
        )


def _split_problem(
    builder: tfds.core.DatasetBuilder, split: str, expected: datasets.ArraySplit
) -> str | None:
    """What is wrong with a prepared split compared with its IDX arrays, or None."""
    images, labels = read_split(builder, split)
    if len(labels) != len(expected):
        return f"{len(labels)} examples, the IDX files hold {len(expected)}"
    if split_digest(images, labels) != split_digest(expected.images, expected.labels):
        return "the examples differ"
    return None
