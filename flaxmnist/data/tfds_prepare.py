"""Prepares ``mnist`` and ``fashion_mnist`` in a tfds data dir from the vendored IDX files, offline.

tfds's stock builders do the writing (same names, versions, features and splits as a
``tfds build``). Their download step is fed from the repository's ``data/`` folder: the vendored
``.gz`` files are placed in a private download dir under the names tfds's download manager gives
the builder's registered URLs, so it finds them cached and never opens a connection.

A dataset is stored twice: tfds writes TFRecord (what ``tfds.load`` and ``as_dataset`` read), and
every record is copied as it is into ArrayRecord files beside them, listed among the dataset's
``alternative_file_formats`` (what ``as_data_source`` and the ``grain`` input pipeline read). A
dataset written before the ArrayRecord files (or any other tfds dataset built in the data dir)
gets them added: copied, read back and compared, moved in, and last the metadata replaced.

The IDX bytes are checked against ``data/SHA256SUMS`` first. tfds writes into a staging dir inside
the data dir; the result is read back and compared with the IDX arrays, then renamed into place.
So the dataset's path only ever holds a checked dataset: a killed run leaves a staging dir that
tfds never reads and the next run deletes. A lock file per dataset serialises concurrent runs; a
second run finds the dataset prepared and only checks its metadata (without TensorFlow).

What a training run's ``tfds`` and ``grain`` pipelines read is another dataset: the run's IDX
folder (the vendored one, or ``--config.data_dir``'s) written by tfds's ``store_as_tfds_dataset``
unshuffled, so that its examples are in the IDX files' order (as every source of the dataset
holds them: :func:`flaxmnist.data.datasets.run_positions`), into ``<folder>/tfds/<digest>/``,
where ``<digest>`` is a SHA-256 of the folder's IDX files: changed files get a dataset of their
own. :func:`streaming_builder` picks the builder the ``tfds`` input pipeline reads,
:func:`source_builder` the one the ``grain`` pipeline reads; that one prepares in a child process
(``python -m flaxmnist.data prepare --idx_dir=FOLDER``), so a grain run never imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flaxmnist import errors
from flaxmnist.data import datasets
from flaxmnist.data.array_record import add_array_record, has_array_record
from flaxmnist.errors import DataError
from flaxmnist.storage import files

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
IDX_TFDS_VERSION = "2.0.0"  # a dataset of IDX files: the examples in the IDX files' order
DIGEST_CHARS = 16


BUILT, CONVERTED, PRESENT = "prepared", "ArrayRecord files added", "already prepared"


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The outcome of :func:`prepare`.

    Attributes:
      builder: the tfds builder reading the prepared dataset.
      state: what the call did: :data:`BUILT` (wrote the dataset), :data:`CONVERTED` (added the
        ArrayRecord files to a dataset written before them) or :data:`PRESENT` (nothing).
      seconds: how long the call took.
    """

    builder: tfds.core.DatasetBuilder
    state: str
    seconds: float

    @property
    def built(self) -> bool:
        """Whether this call wrote the dataset."""
        return self.state == BUILT

    def summary(self) -> str:
        """One line: ``mnist: prepared in PATH (19.1 s)``."""
        return (
            f"{self.builder.name}: {self.state} in {self.builder.data_path} ({self.seconds:.1f} s)"
        )


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


def prepare(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    write: bool = True,
    array_record: bool = True,
) -> Prepared | None:
    """Like :func:`ensure_prepared`, also saying what it did and how fast.

    ``mnist`` and ``fashion_mnist`` are written from the vendored IDX files, in TFRecord (what
    ``tfds.load`` reads) with ArrayRecord files beside them (what ``as_data_source`` reads). Any
    other tfds name must already be built in the data dir (``tfds build``); its ArrayRecord files
    are added. A dataset written before them gets them added too.

    Args:
      name: a tfds dataset name; ``mnist`` or ``fashion_mnist`` are written when missing.
      data_dir: the tfds data dir (default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      write: False: only look (no TensorFlow, no lock), and return None unless it is prepared.
      array_record: False: a dataset without ArrayRecord files will do (the tfds pipeline's).

    Returns:
      The builder, what this call did and the seconds it took; None when ``write`` is False and
      the dataset or its ArrayRecord files are missing.

    Raises:
      DataError: unknown name, a name that is not vendored nor built, unwritable data dir,
        damaged vendored files, or a written dataset that does not hold the IDX files' examples.
    """
    start = time.perf_counter()
    root = resolve_tfds_data_dir(data_dir)
    tfds = datasets.import_tfds()
    try:
        open_builder = functools.partial(tfds.builder, name, data_dir=os.fspath(root))
        path = open_builder().data_path
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"cannot prepare {name!r}: not a tensorflow-datasets name") from None

    def complete() -> bool:
        builder = open_builder()  # opened again: another process may have written it meanwhile
        if name in PREPARABLE:
            return is_complete(builder)
        return builder.data_path.is_dir() and builder.is_prepared()  # is_dir: no tfds warning

    if name in PREPARABLE:
        build = functools.partial(_build_stock, root, name)
    else:
        build = functools.partial(_not_built, name, root)
        if not complete():
            build()
    state = _ensure_written(
        root, name, Path(path), complete, build, write=write, array_record=array_record
    )
    return state and Prepared(open_builder(), state, time.perf_counter() - start)


def prepare_idx(
    name: str, folder: Path, *, write: bool = True, array_record: bool = True
) -> Prepared | None:
    """Writes the IDX files in ``folder`` as a tfds dataset, in their order, unless it is there.

    The dataset is ``<folder>/tfds/<digest>/<name>/<IDX_TFDS_VERSION>``: the stock dataset's
    features and splits, the examples those of the IDX files (of any counts), in TFRecord and
    ArrayRecord files. It is what the ``tfds`` and ``grain`` input pipelines read.

    Args:
      name: ``mnist`` or ``fashion_mnist`` (its class names label the examples).
      folder: a folder holding the four IDX files.
      write: False: only look (no TensorFlow, no lock), and return None unless it is prepared.
      array_record: False: a dataset without ArrayRecord files will do (the tfds pipeline's).

    Returns:
      The read-only builder, what this call did and the seconds it took; None when ``write`` is
      False and the dataset or its ArrayRecord files are missing.

    Raises:
      DataError: unknown name, damaged IDX files, or a folder that cannot be written.
    """
    start = time.perf_counter()
    if name not in PREPARABLE:
        raise DataError(f"cannot prepare {name!r} from IDX files: not one of {PREPARABLE}")
    tfds = datasets.import_tfds()
    root = folder / IDX_TFDS_DIR / idx_digest(folder)
    path = root / name / IDX_TFDS_VERSION
    complete = (path / "dataset_info.json").is_file  # present only once checked and renamed
    build = functools.partial(_build_idx, root, name, folder)
    state = _ensure_written(
        root, name, path, complete, build, write=write, array_record=array_record
    )
    if not state:
        return None
    return Prepared(
        tfds.builder_from_directory(os.fspath(path)), state, time.perf_counter() - start
    )


def streaming_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The tfds builder the ``tfds`` input pipeline reads for ``config.dataset`` and ``data_dir``.

    Args:
      name: the dataset's name.
      data_dir: ``config.data_dir``: the IDX root for ``mnist`` / ``fashion_mnist``, tfds's data
        dir for other names (None: the defaults).

    Returns:
      For ``mnist`` and ``fashion_mnist`` the dataset of :func:`prepare_idx` of the run's IDX
      folder, prepared here when it is not yet (one written before the ArrayRecord files will
      do: it is not changed); for other names, tfds's builder in ``data_dir``.
    """
    if name not in PREPARABLE:
        return datasets.import_tfds("the tfds input pipeline").builder(name, data_dir=data_dir)
    return prepare_idx(name, datasets.idx_folder(name, data_dir), array_record=False).builder


def source_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
    """The builder whose ArrayRecord files the ``grain`` input pipeline reads; never TensorFlow.

    ``mnist`` and ``fashion_mnist`` are prepared (:func:`prepare_idx` of the run's IDX folder)
    when they are not yet, in a child process (``python -m flaxmnist.data prepare --idx_dir``):
    writing takes TensorFlow, which this process then never imports. Other names must be
    prepared with ArrayRecord files.

    Args:
      name: the dataset's name.
      data_dir: as for :func:`streaming_builder`.

    Returns:
      A read-only builder of the dataset's directory (``tfds.builder_from_directory``), whose
      ``as_data_source`` reads the ArrayRecord files.

    Raises:
      DataError: the dataset is missing, or another name lacks ArrayRecord files.
    """
    tfds = datasets.import_tfds()
    if name in PREPARABLE:
        folder = datasets.idx_folder(name, data_dir)
        prepared = prepare_idx(name, folder, write=False)
        if prepared is None:
            _prepare_in_child(name, folder)
            prepared = prepare_idx(name, folder, write=False)
    else:
        prepared = prepare(name, data_dir, write=False)
        if prepared is None:
            root = resolve_tfds_data_dir(data_dir)
            raise DataError(
                f"tfds dataset {name!r} in {root} has no ArrayRecord files, which the grain "
                f"pipeline reads: add them with `python -m flaxmnist.data prepare "
                f"--datasets={name} --data_dir={root}`, or use --config.input_pipeline=tfds"
            )
    if prepared is None:  # the child prepared it, yet it is not there: another process's doing
        raise DataError(f"tfds dataset {name!r} vanished right after it was prepared")
    return tfds.builder_from_directory(os.fspath(prepared.builder.data_path))


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


def _ensure_written(
    root: Path,
    name: str,
    path: Path,
    complete: Callable[[], bool],
    build: Callable[[], None],
    *,
    write: bool,
    array_record: bool = True,
) -> str | None:
    """Makes sure the dataset at ``path`` is written in full, with its ArrayRecord files.

    Looks first without the lock (and without TensorFlow); writes under the dataset's lock file
    in ``root``, looking again, as another process may have written it meanwhile. A library's
    error for a failing disk is raised as ``OSError`` (:func:`files.disk_errors`).

    Args:
      root: the data dir the dataset lives in (its lock and staging dirs go there).
      name: the dataset's name.
      path: the dataset's version dir.
      complete: whether the dataset is written in full (its TFRecord files and metadata).
      build: writes the whole dataset (both formats), checked, into ``path``.
      write: False: only look.
      array_record: False: a complete dataset without ArrayRecord files will do.

    Returns:
      :data:`BUILT`, :data:`CONVERTED` or :data:`PRESENT`; None when ``write`` is False and
      something is missing.
    """
    if complete() and (has_array_record(path) or not array_record):
        return PRESENT
    if not write:
        return None
    _make_writable_dir(root)
    with _locked(root / LOCK_FILE.format(name=name)), files.disk_errors(root):
        if not complete():
            build()
            return BUILT
        if array_record and not has_array_record(path):
            with _staging(root, name) as staging:
                add_array_record(path, staging / "array_record")
            return CONVERTED
    return PRESENT


@contextlib.contextmanager
def _staging(root: Path, name: str) -> Iterator[Path]:
    """A fresh hidden staging dir for ``name`` in ``root``, removed afterwards.

    Call it holding the dataset's lock: it first removes the staging dirs of killed runs.
    """
    for stale in root.glob(STAGING_PREFIX.format(name=name) + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX.format(name=name), dir=root))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build_stock(root: Path, name: str) -> None:
    """Writes the stock dataset ``name`` from the vendored IDX files into ``root``."""
    idx = datasets.load_idx_dataset(name, str(datasets.VENDORED_DATA_DIR))
    _build_and_verify(root, name, idx, functools.partial(_write_stock, name))


def _build_idx(root: Path, name: str, folder: Path) -> None:
    """Writes the IDX files in ``folder`` as tfds dataset ``name`` into ``root``, in their order."""
    idx = datasets.load_idx_dataset(name, str(folder))
    _build_and_verify(root, name, idx, functools.partial(_write_idx, name, idx), in_order=True)


def _not_built(name: str, root: Path) -> None:
    """Raises the error for a tfds name that is neither vendored nor built in ``root``."""
    raise DataError(
        f"cannot prepare {name!r}: only {', '.join(PREPARABLE)} ship as IDX files in the "
        f"repository, and {name} is not built in {root}: build it with `tfds build {name}` on a "
        "machine with internet, copy its data dir here, then prepare adds its ArrayRecord files"
    )


def _build_and_verify(
    root: Path,
    name: str,
    idx: datasets.Dataset,
    write: Callable[[Path], tfds.core.DatasetBuilder],
    in_order: bool = False,
) -> None:
    """Writes ``name`` into a staging dir with ``write``, checks it against ``idx``, renames it.

    Call it holding the dataset's lock. ``write(staging)`` writes the TFRecord dataset into
    ``staging / "data"`` and returns its builder; the ArrayRecord files are added beside them.
    ``in_order``: the dataset must hold the IDX examples in their order (else in any order).
    The rename is atomic, so the dataset's path in ``root`` only ever holds a checked dataset.
    """
    with _staging(root, name) as staging:
        builder = write(staging)
        add_array_record(builder.data_path, staging / "array_record")
        _verify(builder, idx, in_order)
        _publish(builder.data_path, root / builder.data_path.relative_to(staging / "data"), staging)


def _publish(source: Path, final: Path, staging: Path) -> None:
    """Renames the checked dataset ``source`` to ``final``, deleting nothing first.

    A dataset already at ``final`` (damaged: it failed its completeness check under the lock) is
    moved into ``staging`` first, and moved back when the rename fails; it goes with the staging
    dir.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    if not final.exists():
        source.rename(final)
        return
    replaced = staging / "replaced"
    final.rename(replaced)
    try:
        source.rename(final)
    except BaseException:
        replaced.rename(final)
        raise


def _write_stock(name: str, staging: Path) -> tfds.core.DatasetBuilder:
    """Runs tfds's stock builder on the vendored files, into ``staging / "data"``."""
    tfds = datasets.import_tfds(needs_tensorflow="preparing tfds datasets")
    builder = tfds.builder(name, data_dir=os.fspath(staging / "data"))
    _stage_downloads(builder, datasets.VENDORED_DATA_DIR / name, staging / "downloads")
    with contextlib.redirect_stdout(io.StringIO()):  # tfds prints the staging path
        builder.download_and_prepare(
            download_dir=os.fspath(staging / "downloads"),
            download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        )
    return tfds.builder(name, data_dir=os.fspath(staging / "data"))  # reads back what was written


def _write_idx(name: str, idx: datasets.Dataset, staging: Path) -> tfds.core.DatasetBuilder:
    """Stores ``idx`` unshuffled as a tfds dataset of the stock features in ``staging/data``."""
    tfds = datasets.import_tfds(needs_tensorflow="preparing tfds datasets")
    tf = datasets.import_tensorflow()
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
            name,
            IDX_TFDS_VERSION,
            features,
            splits,
            data_dir=os.fspath(staging / "data"),
            disable_shuffling=True,
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


def _verify(builder: tfds.core.DatasetBuilder, idx: datasets.Dataset, in_order: bool) -> None:
    """Checks that the written dataset holds exactly the IDX files' examples (in their order)."""
    problems = [
        f"{split}: {problem}"
        for split in SPLIT_SIZES
        if (problem := _split_problem(builder, split, getattr(idx, split), in_order))
    ]
    if problems:
        raise DataError(
            f"tfds wrote a {builder.name} that does not match the IDX files "
            f"({'; '.join(problems)}); nothing was installed"
        )


def _split_problem(
    builder: tfds.core.DatasetBuilder, split: str, expected: datasets.ArraySplit, in_order: bool
) -> str | None:
    """What is wrong with a prepared split compared with its IDX arrays, or None."""
    images, labels = read_split(builder, split)
    if len(labels) != len(expected):
        return f"{len(labels)} examples, the IDX files hold {len(expected)}"
    if in_order:
        same = np.array_equal(images, expected.images) and np.array_equal(labels, expected.labels)
        return None if same else "the examples differ from the IDX files' (or their order)"
    if split_digest(images, labels) != split_digest(expected.images, expected.labels):
        return "the examples differ"
    return None


# --------------------------------------------------------------------------- the child process


def _prepare_in_child(name: str, folder: Path) -> None:
    """Runs :func:`prepare_idx` in a fresh process (``python -m flaxmnist.data prepare``).

    Writing takes TensorFlow (about 540 MB resident); a child keeps it out of this process.

    Raises:
      DataError: the child's one-line user error (bad IDX files, an unwritable folder, ...).
      RuntimeError: the child failed otherwise (its last line says how).
    """
    command = [sys.executable, "-m", "flaxmnist.data", "prepare", f"--datasets={name}",
               f"--idx_dir={folder}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode == 0:
        return
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    message = lines[-1].removeprefix("error: ") if lines else f"exit status {result.returncode}"
    if result.returncode == errors.EXIT_USER_ERROR:
        raise DataError(message)
    raise RuntimeError(f"preparing {name} for the grain pipeline failed: {message}")
