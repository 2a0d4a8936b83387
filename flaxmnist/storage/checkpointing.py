"""Orbax checkpoints of a run: the latest N and the best by the monitored metric, in one manager.

Each checkpoint holds the whole ``TrainState`` (params, optimizer state, BatchNorm statistics,
step) and a JSON ``meta`` item with everything else a resumed run needs: the epoch, how far into the
next epoch it stopped, the history, the early-stopping state and a fingerprint of the model. The
data order and dropout keys are functions of ``(seed, epoch, step)``, so they need no saving.
Saves are asynchronous; :meth:`RunCheckpoints.close` waits for them. Orbax is imported when a
run first reads or writes a checkpoint, not at start-up (it costs about 0.5 s to import).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax

from flaxmnist import console
from flaxmnist.errors import FlaxmnistError
from flaxmnist.training import parallel

BEST_METRIC = "best_order"  # epoch at which a checkpoint became the best so far; -1 otherwise
CORRUPT_SUFFIX = ".corrupt"


def fingerprint(state: Any) -> dict[str, list[int]]:
    """The shape of every parameter, keyed by its path: what a compatible checkpoint must match."""
    flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
    return {jax.tree_util.keystr(path): list(leaf.shape) for path, leaf in flat}


def ocp():
    """The ``orbax.checkpoint`` module, imported on first use."""
    import orbax.checkpoint

    return orbax.checkpoint


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
        )
        return ocp().CheckpointManager(self.directory, options=options)

    def save(self, state, meta: dict[str, Any], *, best_order: int) -> None:
        """Saves ``state`` and ``meta`` at ``state.step`` (asynchronously).

        Refuses with ``OSError(ENOSPC)`` before writing anything when the disk lacks room for it:
        Orbax's own failure on a full disk comes from a background thread, mid-write.
        """
        self.check_free_space(state)
        step = int(state.step)
        args = ocp().args
        args = args.Composite(state=args.StandardSave(state), meta=args.JsonSave(meta))
        with disk_errors(self.directory):
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
            with disk_errors(self.directory):
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
        """Restores checkpoint ``step`` into the structure of ``target``; checks compatibility."""
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
        return restored["state"], meta

    def restore_latest(self, target) -> tuple[Any, dict[str, Any]] | None:
        """The newest checkpoint, or the one before it if the newest is damaged.

        A damaged newest checkpoint is set aside (renamed) with a warning; if the one before it
        fails too, the run stops with an error rather than touching more checkpoints. Returns None
        when there is no checkpoint.
        """
        steps = self.steps()
        if not steps:
            return None
        try:
            return self.restore(steps[-1], target)
        except IncompatibleCheckpointError:
            raise
        except Exception as e:  # any failure to read the newest step: damaged
            self.set_aside(steps[-1], e)
        if len(steps) == 1:
            return None
        try:
            return self.restore(steps[-2], target)
        except IncompatibleCheckpointError:
            raise
        except Exception as e:
            raise FlaxmnistError(
                f"cannot restore checkpoint step {steps[-2]} in {self.directory} either: "
                f"{str(e).splitlines()[0][:200]}"
            ) from None

    def set_aside(self, step: int, error: Exception) -> None:
        """Renames a damaged step folder to ``<step>.corrupt`` so it is neither used nor lost."""
        source = self.directory / str(step)
        target = self.directory / f"{step}{CORRUPT_SUFFIX}"
        console.warn(
            f"checkpoint step {step} is damaged ({str(error).splitlines()[0][:200]}); moved it "
            f"to {target.name} and fell back to the previous checkpoint"
        )
        if jax.process_index() == 0:
            os.replace(source, target)
        parallel.sync("flaxmnist-damaged-checkpoint-set-aside")
        self.manager.reload()

    def close(self) -> None:
        """Waits for pending asynchronous saves and releases the manager (if one was made)."""
        if "manager" in self.__dict__:
            self.wait_until_finished()
            self.manager.close()


DISK_ERRORS = {"RESOURCE_EXHAUSTED": errno.ENOSPC, "No space left": errno.ENOSPC}


@contextlib.contextmanager
def disk_errors(directory: Path) -> Iterator[None]:
    """Turns Orbax / TensorStore's errors for a full disk into ``OSError(ENOSPC)``."""
    try:
        yield
    except OSError:
        raise
    except Exception as e:
        code = next((c for text, c in DISK_ERRORS.items() if text in str(e)), None)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(directory)) from None


class IncompatibleCheckpointError(FlaxmnistError):
    """The checkpoints belong to a different model or input shape."""
