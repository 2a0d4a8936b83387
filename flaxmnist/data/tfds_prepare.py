"""IDX files as tfds datasets (TFRecord, with ArrayRecord copies beside), written offline.

:func:`prepare` writes ``mnist`` and ``fashion_mnist`` into tfds's data dir, where ``tfds.load``
finds them; :func:`prepare_idx` writes a run's IDX folder into ``<folder>/tfds/<digest>/``, which
the ``tfds`` and ``grain`` input pipelines read. One writer, staged, checked against the IDX
arrays and renamed into place under a lock (``docs/data.md``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
TFDS_DATA_DIR_ENV = "TFDS_DATA_DIR"
DEFAULT_TFDS_DATA_DIR = "~/tensorflow_datasets"
LOCK_FILE = ".flaxmnist-prepare-{name}.lock"
STAGING_PREFIX = ".flaxmnist-staging-{name}-"  # hidden: tfds skips dot-dirs in a data dir
IDX_TFDS_DIR = "tfds"  # in an IDX folder: its tfds datasets, one subfolder per content digest
IDX_TFDS_VERSION = "2.0.0"  # an IDX folder's dataset (the stock version in tfds's data dir)
DIGEST_CHARS = 16


BUILT, CONVERTED, PRESENT = "prepared", "ArrayRecord files added", "already prepared"


@dataclasses.dataclass(frozen=True)
class Prepared:
    """The outcome of :func:`prepare`.

    Attributes:
      builder: a read-only builder of the prepared dataset (``tfds.builder_from_directory``).
      state: what the call did: :data:`BUILT` (wrote the dataset), :data:`CONVERTED` (added the
        ArrayRecord files to a dataset written before them) or :data:`PRESENT` (nothing).
      seconds: how long the call took.
    """

    builder: tfds.core.DatasetBuilder
    state: str
    seconds: float

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


def prepare(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    write: bool = True,
    array_record: bool = True,
) -> Prepared | None:
    """Prepares ``name`` in tfds's data dir unless it already is: ``tfds.load`` then finds it.

    ``mnist`` and ``fashion_mnist`` are written from the vendored IDX files under tfds's stock
    name, version, features and splits, in the IDX files' order. Any other tfds name must
    already be built in the data dir (``tfds build``). A dataset without ArrayRecord files gets
    them added.

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
    root = resolve_tfds_data_dir(data_dir)
    tfds = datasets.import_tfds()
    try:
        path = Path(tfds.builder(name, data_dir=os.fspath(root)).data_path)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"cannot prepare {name!r}: not a tensorflow-datasets name") from None
    folder = datasets.VENDORED_DATA_DIR / name if name in PREPARABLE else None
    if folder is None and not _complete(path):
        raise DataError(
            f"cannot prepare {name!r}: only {', '.join(PREPARABLE)} ship as IDX files in the "
            f"repository, and {name} is not built in {root}: build it with `tfds build {name}` "
            "on a machine with internet, copy its data dir here, then prepare adds its "
            "ArrayRecord files"
        )
    return _prepare(root, name, path, folder, write=write, array_record=array_record)


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
    if name not in PREPARABLE:
        raise DataError(f"cannot prepare {name!r} from IDX files: not one of {PREPARABLE}")
    root = folder / IDX_TFDS_DIR / idx_digest(folder)
    path = root / name / IDX_TFDS_VERSION
    return _prepare(root, name, path, folder, write=write, array_record=array_record)


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
    return prepared.builder


def idx_digest(folder: Path) -> str:
    """The first hex digits of a SHA-256 over the four IDX files in ``folder``, as stored.

    Args:
      folder: a folder holding the four standard IDX files.

    Returns:
      16 hex digits naming the folder's current contents.
    """
    digest = hashlib.sha256()
    for stems in datasets.IDX_FILES.values():
        for stem in stems:
            digest.update(datasets.find_idx_file(folder, stem).read_bytes())
    return digest.hexdigest()[:DIGEST_CHARS]


# --------------------------------------------------------------------------- writing


def _complete(path: Path) -> bool:
    """Whether a dataset is at ``path``: its metadata exists only once it is renamed into place."""
    return (path / "dataset_info.json").is_file()


def _prepare(
    root: Path, name: str, path: Path, folder: Path | None, *, write: bool, array_record: bool
) -> Prepared | None:
    """Makes sure the dataset at ``path`` is written in full, with its ArrayRecord files.

    Looks first without the lock (and without TensorFlow); writes under the dataset's lock file
    in ``root``, looking again, as another process may have written it meanwhile. ``folder``
    holds the IDX files it is written from (None: it must be there). A library's error for a
    failing disk is raised as ``OSError`` (:func:`files.disk_errors`). Returns None when
    ``write`` is False and something is missing.
    """
    start = time.perf_counter()
    state = PRESENT
    if not _complete(path) or (array_record and not has_array_record(path)):
        if not write:
            return None
        _make_writable_dir(root)
        with _locked(root / LOCK_FILE.format(name=name)), files.disk_errors(root):
            if not _complete(path):
                _build(root, name, path, folder)
                state = BUILT
            elif array_record and not has_array_record(path):
                with _staging(root, name) as staging:
                    add_array_record(path, staging / "array_record")
                state = CONVERTED
    builder = datasets.import_tfds().builder_from_directory(os.fspath(path))
    return Prepared(builder, state, time.perf_counter() - start)


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


def _build(root: Path, name: str, path: Path, folder: Path) -> None:
    """Writes the IDX files in ``folder`` as dataset ``name`` at ``path``, staged and checked.

    Call it holding the dataset's lock. The dataset is written into a staging dir in ``root``,
    with its ArrayRecord files, read back and compared with the IDX arrays, and renamed into
    place: ``path`` only ever holds a checked dataset.
    """
    idx = datasets.load_idx_dataset(name, str(folder))
    with _staging(root, name) as staging:
        builder = _write(idx, path.name, staging / "data")
        add_array_record(builder.data_path, staging / "array_record")
        _verify(builder, idx)
        _publish(builder.data_path, path, staging)


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


def _write(idx: datasets.Dataset, version: str, data_dir: Path) -> tfds.core.DatasetBuilder:
    """Stores ``idx`` unshuffled as tfds dataset ``idx.name`` ``version`` in ``data_dir``.

    The stock features: ``image`` (uint8, the IDX image shape) and ``label`` (``ClassLabel``
    with the dataset's class names), splits ``train`` and ``test``.
    """
    tfds = datasets.import_tfds(needs_tensorflow="preparing tfds datasets")
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=idx.image_shape),
            "label": tfds.features.ClassLabel(names=list(idx.class_names)),
        }
    )
    # (key, example) pairs, not a tf.data.Dataset: tfds reads a dataset one eager call per
    # example, which took longer than all the rest of the writing.
    splits = {
        split: enumerate(
            {"image": image, "label": label}
            for image, label in zip(arrays.images, arrays.labels.tolist(), strict=True)
        )
        for split, arrays in (("train", idx.train), ("test", idx.test))
    }
    tfds.disable_progress_bar()  # no bars in a training run's terminal
    with contextlib.redirect_stdout(io.StringIO()):  # tfds prints the staging path
        written = tfds.dataset_builders.store_as_tfds_dataset(
            idx.name,
            version,
            features,
            splits,
            data_dir=os.fspath(data_dir),
            disable_shuffling=True,
        )
    return tfds.builder_from_directory(os.fspath(written.data_path))


def _verify(builder: tfds.core.DatasetBuilder, idx: datasets.Dataset) -> None:
    """Checks that the written dataset holds exactly the IDX files' examples, in their order."""
    problems = []
    for split in ("train", "test"):
        written, expected = datasets.read_tfds_split(builder, split), getattr(idx, split)
        if len(written) != len(expected):
            problems.append(f"{split}: {len(written)} examples, the IDX files hold {len(expected)}")
        elif not (
            np.array_equal(written.images, expected.images)
            and np.array_equal(written.labels, expected.labels)
        ):
            problems.append(f"{split}: the examples differ from the IDX files' (or their order)")
    if problems:
        raise DataError(
            f"tfds wrote a {builder.name} that does not match the IDX files "
            f"({'; '.join(problems)}); nothing was installed"
        )


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
