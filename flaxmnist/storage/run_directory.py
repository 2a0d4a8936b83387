"""The run directory: an exclusive lock, the config record, and the atomic history/metrics files."""

from __future__ import annotations

import csv
import fcntl
import json
import os
from pathlib import Path
from typing import Any

import ml_collections

from flaxmnist import config_schema
from flaxmnist.errors import FlaxmnistError
from flaxmnist.storage import scalar_log
from flaxmnist.storage.files import write_csv_atomic, write_json_atomic

LOCK_FILE = ".lock"
STEP_LOG_FIELDS = ("step", "epoch", "loss", "accuracy")  # the columns of steps.csv


class RunDirectory:
    """A locked run directory; use as a context manager.

    With ``writer=False`` (the non-primary processes of a multi-process run) it only reads: no
    lock, and the ``write_*`` methods do nothing.
    """

    def __init__(self, path: str | Path, *, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self._lock_fd: int | None = None
        self._recorded_lengths: tuple[int, int] | None = None  # on disk when first written

    def __enter__(self) -> RunDirectory:
        if not self.writer:
            return self
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise FlaxmnistError(f"cannot write to workdir {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise FlaxmnistError(
                f"workdir {self.path} is in use by another run (lock {self.path / LOCK_FILE})"
            ) from None
        return self

    def __exit__(self, *exc_info) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def checkpoint_dir(self) -> Path:
        """Where Orbax keeps the checkpoints."""
        return self.path / "checkpoints"

    @property
    def tensorboard_dir(self) -> Path:
        """Where the TensorBoard event file goes (``tensorboard --logdir`` a parent)."""
        return self.path / "tensorboard"

    def has_run(self) -> bool:
        """Whether an earlier run left its config here."""
        return (self.path / "config.json").exists()

    def check_resumable(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """Refuses to continue a run whose recorded config differs in a field that matters.

        Fields are compared one by one (``augment.rotation``, not ``augment``); a field that
        config_schema does not declare resumable must keep its recorded value.

        Returns the recorded config (fields this version added read as their defaults).
        """
        # A field a newer version added counts as recorded with its default; a recorded field
        # this version no longer has is not read, so it cannot matter.
        defaults = config_schema.defaults()
        recorded = self.read_recorded_config()
        before = {**config_schema.flatten(defaults), **config_schema.flatten(recorded)}
        now = config_schema.flatten(json.loads(config.to_json()))
        changed = [
            name
            for name in sorted(now)
            if name not in config_schema.RESUMABLE_FIELDS and before.get(name) != now[name]
        ]
        if changed:
            details = ", ".join(f"{k}: {before.get(k)!r} -> {now[k]!r}" for k in changed)
            raise FlaxmnistError(
                f"workdir {self.path} holds a run with a different config ({details}); "
                "use a new --workdir"
            )
        return {**defaults, **recorded}

    def read_recorded_config(self) -> dict[str, Any]:
        """The config an earlier run recorded; a damaged file is a one-line error."""
        path = self.path / "config.json"
        try:
            recorded = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise damaged(path, e) from None
        if not isinstance(recorded, dict):
            raise damaged(path, "not a JSON object")
        return recorded

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        """Records the resolved config."""
        if self.writer:
            write_json_atomic(self.path / "config.json", json.loads(config.to_json()))

    def recorded_epochs(self) -> int:
        """How many epoch records history.json holds (0 when missing or damaged)."""
        return self._recorded_lengths_on_disk()[0]

    def _recorded_lengths_on_disk(self) -> tuple[int, int]:
        """(epoch records in history.json, rows in steps.csv); a damaged file counts 0."""
        try:
            history = json.loads((self.path / "history.json").read_text())
            epochs = len(history) if isinstance(history, list) else 0
        except (OSError, ValueError, UnicodeDecodeError):
            epochs = 0
        try:
            with (self.path / "steps.csv").open() as f:
                rows = max(sum(1 for _ in f) - 1, 0)
        except (OSError, UnicodeDecodeError):
            rows = 0
        return epochs, rows

    def write_history(
        self, history: list[dict], step_log: list[dict], log_every_steps: int
    ) -> None:
        """Writes the run's log (history.json, steps.csv) and what derives from it, never less.

        history.csv and the TensorBoard event file are written from the same lists; every file
        atomically. A run resumed from a checkpoint older than its history (the newest was
        damaged, or the run was killed between writing an epoch and checkpointing it) leaves the
        longer files as they are until it has trained as far again. The event file is first
        written with the first epoch (``log_every_steps``: its ``step/loss`` interval).
        """
        if not self.writer:
            return
        if self._recorded_lengths is None:
            self._recorded_lengths = self._recorded_lengths_on_disk()
        epochs, rows = self._recorded_lengths
        if len(history) < epochs or len(step_log) < rows:
            return
        write_json_atomic(self.path / "history.json", history)
        write_csv_atomic(self.path / "history.csv", history)
        write_csv_atomic(self.path / "steps.csv", step_log)
        if history:
            scalar_log.write_event_file(self.tensorboard_dir, history, step_log, log_every_steps)

    def read_step_log(self, up_to_step: int) -> list[dict[str, Any]]:
        """The per-step log rows up to ``up_to_step`` (what a resumed run continues from)."""
        path = self.path / "steps.csv"
        if not path.exists() or not path.read_text().strip():
            return []
        try:
            with path.open() as f:
                reader = csv.DictReader(f)
                if reader.fieldnames != list(STEP_LOG_FIELDS):
                    raise ValueError(f"header {reader.fieldnames} is not {list(STEP_LOG_FIELDS)}")
                rows = [
                    {
                        "step": int(r["step"]),
                        "epoch": int(r["epoch"]),
                        "loss": float(r["loss"]),
                        "accuracy": float(r["accuracy"]),
                    }
                    for r in reader
                ]
        except (KeyError, TypeError, ValueError, csv.Error, UnicodeDecodeError) as e:
            raise damaged(path, e) from None
        return [row for row in rows if row["step"] <= up_to_step]

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Writes metrics.json (atomically)."""
        if self.writer:
            write_json_atomic(self.path / "metrics.json", metrics)


def damaged(path: Path, reason: Exception | str) -> FlaxmnistError:
    """The error for a damaged file of an earlier run, which is left as it is."""
    detail = str(reason).splitlines()[0][:120] if str(reason) else type(reason).__name__
    return FlaxmnistError(
        f"{path} is damaged ({detail}); restore or remove it, or use a new --workdir "
        "(nothing was changed)"
    )
