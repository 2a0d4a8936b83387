"""Orbax checkpoints of a run: the latest N and the best by the monitored metric, in one manager.

Each checkpoint holds the whole ``TrainState`` (params, optimizer state, BatchNorm statistics,
step) and a JSON ``meta`` item with everything else a resumed run needs: the epoch, how far into the
next epoch it stopped, the history, the early-stopping state, a fingerprint of the model and a
SHA-256 checksum of the state's arrays, so flipped bits are found on restore. The data order and
dropout keys are functions of ``(seed, epoch, step)``, so they need no saving.

A checkpoint that fails to read twice, or whose arrays do not match their checksum, is damaged: a
resumed run sets it aside (renamed ``<step>.corrupt``) and continues from the newest good one; with
no good one it stops and changes nothing. A read that fails once and then succeeds is the disk's
passing trouble, and an I/O error that persists stops the run: neither sets a checkpoint aside.
Saves are asynchronous; :meth:`RunCheckpoints.close` waits for them. Orbax is imported when a
run first reads or writes a checkpoint, not at start-up (it costs about 0.5 s to import).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np
from absl import logging as absl_logging

from flaxmnist import console
from flaxmnist.errors import FlaxmnistError, first_line
from flaxmnist.storage import files
from flaxmnist.training import parallel

BEST_METRIC = "best_order"  # epoch at which a checkpoint became the best so far; -1 otherwise
CORRUPT_SUFFIX = ".corrupt"
T = TypeVar("T")
STATE_CHECKSUM = "state_sha256"  # the meta key of the state's checksum
# Errors of the disk rather than of the data: they stop a run instead of setting a checkpoint aside.
READ_ERROR_TEXTS = ("Input/output error", "Resource temporarily unavailable", "Stale file handle")
TENSORSTORE_DETAILS = re.compile(r"\s*(See full TensorStore details:\s*)?<bound method .*$")


def fingerprint(state: Any) -> dict[str, list[int]]:
    """The shape of every parameter, keyed by its path: what a compatible checkpoint must match."""
    flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
    return {jax.tree_util.keystr(path): list(leaf.shape) for path, leaf in flat}


def state_checksum(state: Any) -> str:
    """SHA-256 over every array of ``state``: its path, dtype, shape and bytes.

    Reads this process's copy of each array (the state is replicated on every device).
    """
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        if isinstance(leaf, jax.Array):
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            leaf = leaf.addressable_data(0)
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def describe(error: Exception) -> str:
    """One short line for a failed read, without TensorStore's pointer to its details.

    TensorStore ends its messages with "See full TensorStore details: <bound method ...>", a repr
    with nothing in it for a reader.
    """
    line = TENSORSTORE_DETAILS.sub("", first_line(error, limit=2000)).strip()
    line = line if len(line) <= 160 else line[:157] + "..."
    return line or type(error).__name__


@contextlib.contextmanager
def quiet_library_logs() -> Iterator[None]:
    """Silences Orbax's absl log lines (tracebacks of failed reads) while we judge a read."""
    previous = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.FATAL)
    try:
        yield
    finally:
        absl_logging.set_verbosity(previous)


def is_read_error(error: Exception) -> bool:
    """Whether ``error`` is the disk failing to read, not the checkpoint's data being wrong."""
    if isinstance(error, OSError) and error.errno not in (None, errno.ENOENT):
        return True
    return any(text in str(error) for text in READ_ERROR_TEXTS)


def ocp():
    """The ``orbax.checkpoint`` module, imported on first use (its error logs dropped)."""
    import orbax.checkpoint

    logging.getLogger("absl").addFilter(drop_orbax_errors)
    return orbax.checkpoint


def drop_orbax_errors(record: logging.LogRecord) -> bool:
    """Whether to keep a log record: not Orbax's error logs (tracebacks on stderr).

    Orbax logs a failed save or restore, then raises it to its caller, where it becomes the
    command's one error line (or its error.log traceback).
    """
    return record.levelno < logging.ERROR or f"{os.sep}orbax{os.sep}" not in record.pathname


class RunCheckpoints:
    """The checkpoints under ``WORKDIR/checkpoints`` (one Orbax ``CheckpointManager``)."""

    def __init__(
        self, directory: Path, keep_latest: int, *, async_save: bool = True, create: bool = True
    ):
        self.directory = Path(directory).resolve()
        self.keep_latest, self.async_save, self.create = keep_latest, async_save, create

    @functools.cached_property
    def manager(self):
        """The Orbax ``CheckpointManager``, made on first use."""
        from orbax.checkpoint import checkpoint_managers

        policy = checkpoint_managers.AnyPreservationPolicy(
            [
                checkpoint_managers.LatestN(n=self.keep_latest),
                checkpoint_managers.BestN(
                    get_metric_fn=lambda metrics: metrics[BEST_METRIC],
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        options = ocp().CheckpointManagerOptions(
            preservation_policy=policy,
            enable_async_checkpointing=self.async_save,
            create=self.create,
            # A folder that cannot be made fails save() itself: made in a background thread,
            # its failure leaves threads waiting for it, which keep the process from exiting.
            async_options=ocp().AsyncOptions(create_directories_asynchronously=False),
        )
        return ocp().CheckpointManager(self.directory, options=options)

    def save(self, state, meta: dict[str, Any], *, best_order: int) -> None:
        """Saves ``state`` and ``meta`` at ``state.step`` (asynchronously).

        Refuses with ``OSError(ENOSPC)`` before writing anything when the disk lacks room for it:
        Orbax's own failure on a full disk comes from a background thread, mid-write.
        """
        self.check_free_space(state)
        step = int(state.step)
        meta = {**meta, STATE_CHECKSUM: state_checksum(state)}
        args = ocp().args
        args = args.Composite(state=args.StandardSave(state), meta=args.JsonSave(meta))
        with files.disk_errors(self.directory, DISK_ERROR_TEXTS):
            self.manager.save(step, args=args, metrics={BEST_METRIC: best_order}, force=True)

    def check_free_space(self, state) -> None:
        """Raises ``OSError(ENOSPC)`` unless the disk has room for a checkpoint of ``state``."""
        needed = 2 * sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(state)) + (1 << 20)
        folder = self.directory if self.directory.exists() else self.directory.parent
        free = shutil.disk_usage(folder).free
        if free < needed:
            raise OSError(
                errno.ENOSPC,
                f"No space left on device (a checkpoint needs about {needed >> 10} KiB, "
                f"{free >> 10} KiB free)",
                str(self.directory),
            )

    def wait_until_finished(self) -> None:
        """Waits for pending asynchronous saves (their disk errors surface here)."""
        if "manager" in self.__dict__:
            with files.disk_errors(self.directory, DISK_ERROR_TEXTS):
                self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        """The saved steps, oldest first."""
        return sorted(self.manager.all_steps())

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON ``meta`` item of checkpoint ``step``."""
        args = ocp().args
        restored = self.manager.restore(step, args=args.Composite(meta=args.JsonRestore()))
        return restored["meta"]

    def restore(self, step: int, target) -> tuple[Any, dict[str, Any]]:
        """Restores checkpoint ``step`` into the structure of ``target``; checks compatibility.

        Raises:
          IncompatibleCheckpointError: the checkpoint belongs to another model or state layout.
          CheckpointDamagedError: its arrays do not match the checksum it was saved with.
          Exception: whatever Orbax raises for a checkpoint it cannot read.
        """
        meta = self.read_meta(step)
        expected = fingerprint(target)
        if meta.get("fingerprint") != expected:
            raise IncompatibleCheckpointError(
                f"checkpoints in {self.directory} were written by a different model or input "
                f"shape (model {meta.get('model')!r}); use a new --workdir"
            )
        try:
            args = ocp().args
            restored = self.manager.restore(
                step, args=args.Composite(state=args.StandardRestore(target))
            )
        except ValueError as e:  # Orbax's message for a state whose pytree layout differs
            if "tree structures do not match" not in str(e):
                raise
            raise IncompatibleCheckpointError(
                f"checkpoint step {step} in {self.directory} holds a train state laid out "
                "differently (written by another flaxmnist version?); use a new --workdir"
            ) from None
        saved = meta.get(STATE_CHECKSUM)  # checkpoints of older versions carry none
        if saved is not None and state_checksum(restored["state"]) != saved:
            raise CheckpointDamagedError(
                f"checkpoint step {step} in {self.directory} is damaged (its arrays do not match "
                "their checksum)"
            )
        return restored["state"], meta

    def restore_checked(self, step: int, target) -> tuple[Any, dict[str, Any]]:
        """:meth:`restore`, with every failure judged by :meth:`read_twice`."""
        return self.read_twice(step, functools.partial(self.restore, step, target))

    def read_meta_checked(self, step: int) -> dict[str, Any]:
        """:meth:`read_meta`, with every failure judged by :meth:`read_twice`."""
        return self.read_twice(step, functools.partial(self.read_meta, step))

    def read_twice(self, step: int, read: Callable[[], T]) -> T:
        """``read()`` of checkpoint ``step``, tried twice before a failure counts.

        Raises:
          IncompatibleCheckpointError: at once, as :meth:`restore` does.
          CheckpointDamagedError: it fails twice with an error of its data.
          CheckpointReadError: the disk fails to read it twice (an I/O error, say).
        """
        with quiet_library_logs():
            try:
                return read()
            except IncompatibleCheckpointError:
                raise
            except Exception:  # a failure once may be the disk's passing trouble: read again
                self.manager.reload()
            try:
                return read()
            except (IncompatibleCheckpointError, CheckpointDamagedError):
                raise
            except Exception as e:
                if is_read_error(e):
                    raise CheckpointReadError(
                        f"cannot read checkpoint step {step} in {self.directory} "
                        f"({describe(e)}); nothing was changed: rerun when the disk reads again"
                    ) from None
                raise CheckpointDamagedError(
                    f"checkpoint step {step} in {self.directory} is damaged ({describe(e)})"
                ) from None

    def restore_latest(self, target) -> tuple[Any, dict[str, Any]] | None:
        """The newest checkpoint that restores; None when there is none at all.

        Damaged newer checkpoints are set aside (renamed, with a warning) once an older one has
        restored. When every checkpoint is damaged nothing is renamed and the run stops.

        Raises:
          IncompatibleCheckpointError, CheckpointReadError: as :meth:`restore_checked`.
          CheckpointDamagedError: every checkpoint is damaged.
        """
        steps = self.steps()
        damaged: list[tuple[int, CheckpointDamagedError]] = []
        for step in reversed(steps):
            try:
                restored = self.restore_checked(step, target)
            except CheckpointDamagedError as e:
                damaged.append((step, e))
                continue
            for bad_step, error in damaged:
                self.set_aside(bad_step, error, resuming_from=step)
            return restored
        if not damaged:
            return None
        others = "it is the only one" if len(steps) == 1 else "every older one is damaged too"
        raise CheckpointDamagedError(
            f"{damaged[0][1]}; {others}; nothing was changed: move {self.directory} away to "
            "train the run again, or use a new --workdir"
        )

    def set_aside(self, step: int, error: Exception, *, resuming_from: int | None = None) -> Path:
        """Renames damaged step folder ``step`` to ``<step>.corrupt`` (or ``.corrupt.2``, ...).

        Nothing is deleted: a step damaged twice keeps both copies. Returns the new path.
        """
        target = self.directory / f"{step}{CORRUPT_SUFFIX}"
        copies = 1
        while target.exists():
            copies += 1
            target = self.directory / f"{step}{CORRUPT_SUFFIX}.{copies}"
        then = f"; resuming from step {resuming_from}" if resuming_from is not None else ""
        console.warn(f"{error}; set it aside as {target.name}{then}")
        if jax.process_index() == 0:
            os.rename(self.directory / str(step), target)
        parallel.sync("flaxmnist-damaged-checkpoint-set-aside")
        self.manager.reload()
        return target

    def close(self) -> None:
        """Waits for pending asynchronous saves and releases the manager (if one was made)."""
        if "manager" in self.__dict__:
            self.wait_until_finished()
            self.manager.close()


# TensorStore reports a full disk as RESOURCE_EXHAUSTED (no errno text), besides the usual ones.
DISK_ERROR_TEXTS = {**files.DISK_ERROR_TEXTS, "RESOURCE_EXHAUSTED": errno.ENOSPC}


class IncompatibleCheckpointError(FlaxmnistError):
    """The checkpoints belong to a different model or input shape."""


class CheckpointDamagedError(FlaxmnistError):
    """A checkpoint's data cannot be read back as it was saved."""


class CheckpointReadError(FlaxmnistError):
    """The disk fails to read a checkpoint (an I/O error): the checkpoint is not judged."""
