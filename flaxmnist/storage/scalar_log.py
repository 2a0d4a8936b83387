"""TensorBoard event files for a run (``WORKDIR/tensorboard``), written with tensorboardX.

View them with ``tensorboard --logdir runs/``. Scalars: per epoch ``train/loss``,
``train/accuracy``, ``val/loss``, ``val/accuracy``, ``learning_rate``, ``epoch_time_s`` (x-axis:
epoch), and ``step/loss`` every ``log_every_steps`` optimizer steps (x-axis: step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

EPOCH_SCALARS = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "val_loss": "val/loss",
    "val_accuracy": "val/accuracy",
    "learning_rate": "learning_rate",
    "epoch_time_s": "epoch_time_s",
}


class ScalarLog:
    """Appends epoch and step scalars to the run's TensorBoard log (``enabled=False``: nothing).

    The event file is created with the first scalar, so a run refused at start leaves none.
    """

    def __init__(self, logdir: Path, log_every_steps: int, *, enabled: bool = True):
        self.logdir, self.enabled = logdir, enabled
        self.log_every_steps = log_every_steps
        self._writer = None

    def writer(self):
        """The event-file writer, made on first use (at the end of the first epoch)."""
        if self._writer is None:
            # Here, not at the top: tensorboardX imports PyTorch where it is installed (Colab),
            # about 3 s that only a run which logs should pay, and not before its first step.
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(self.logdir))
        return self._writer

    def epoch(self, record: dict[str, Any]) -> None:
        """Writes one history record's scalars at x = its epoch."""
        if not self.enabled:
            return
        writer = self.writer()
        for field, tag in EPOCH_SCALARS.items():
            if field in record:
                writer.add_scalar(tag, record[field], record["epoch"])
        writer.flush()

    def steps(self, rows: list[dict[str, Any]]) -> None:
        """Writes the loss of every ``log_every_steps``-th step among ``rows``."""
        if not self.enabled or self.log_every_steps <= 0:
            return
        writer = self.writer()
        for row in rows:
            if row["step"] % self.log_every_steps == 0:
                writer.add_scalar("step/loss", row["loss"], row["step"])
        writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file (if one was made)."""
        if self._writer is not None:
            self._writer.close()
