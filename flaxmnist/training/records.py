"""What a run records: epoch history entries, per-step rows, checkpoint progress, final figures."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from flaxmnist.storage import checkpointing
from flaxmnist.training import early_stopping
from flaxmnist.training.experiment import Experiment
from flaxmnist.training.train_state import TrainState


def summarize(sums: dict[str, Any]) -> tuple[float, float]:
    """(mean loss, accuracy) from metric sums (arrays of per-step sums are added up first)."""
    sums = {key: np.sum(value) for key, value in sums.items()}
    count = max(float(sums["count"]), 1.0)
    return float(sums["loss"]) / count, float(sums["correct"]) / count


def epoch_record(epoch, train_sums, val_sums, seconds, learning_rate) -> dict[str, Any]:
    """One history entry."""
    train_loss, train_accuracy = summarize(train_sums)
    record = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy}
    if val_sums is not None:
        record["val_loss"], record["val_accuracy"] = summarize(val_sums)
    record["epoch_time_s"] = seconds
    record["learning_rate"] = learning_rate
    return record


def step_rows(per_step: dict, first_step: int, epoch: int) -> list[dict[str, Any]]:
    """Rows of the per-step log for one epoch's stacked metric sums."""
    losses_ = per_step["loss"] / per_step["count"]
    accuracies = per_step["correct"] / per_step["count"]
    return [
        {
            "step": first_step + i + 1,
            "epoch": epoch,
            "loss": float(loss),
            "accuracy": float(accuracy),
        }
        for i, (loss, accuracy) in enumerate(zip(losses_, accuracies, strict=True))
    ]


def format_record(record: dict[str, Any]) -> str:
    """A one-line summary of an epoch for the terminal."""
    parts = [
        f"epoch {record['epoch']}",
        f"loss {record['train_loss']:.4f}",
        f"acc {record['train_accuracy']:.4f}",
    ]
    if "val_loss" in record:
        parts += [f"val_loss {record['val_loss']:.4f}", f"val_acc {record['val_accuracy']:.4f}"]
    parts.append(f"{record['epoch_time_s']:.1f}s")
    return " | ".join(parts)


def device_summary(mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """Backend, device kind and counts, for the record."""
    return {
        "backend": jax.default_backend(),
        "device_kind": mesh.devices.flat[0].device_kind,
        "device_count": mesh.size,
        "process_count": jax.process_count(),
    }


def throughput(history: list[dict], exp: Experiment) -> dict[str, Any]:
    """Final accuracies, median epoch time and examples per second, when epochs were run."""
    if not history:
        return {}
    median_time = float(np.median([r["epoch_time_s"] for r in history]))
    return {
        "final_train_accuracy": history[-1]["train_accuracy"],
        "final_val_accuracy": history[-1].get("val_accuracy"),
        "median_epoch_time_s": median_time,
        "examples_per_s": exp.steps_per_epoch * exp.config.batch_size / median_time,
    }


@dataclasses.dataclass
class Progress:
    """Where a run stands: what a checkpoint's ``meta`` item records besides the state."""

    epoch: int = 0  # completed epochs
    steps_into_epoch: int = 0  # > 0 when interrupted part-way through epoch ``epoch + 1``
    partial: dict[str, list[float]] | None = None  # that epoch's per-step sums so far
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    stopper: early_stopping.EarlyStoppingState = dataclasses.field(
        default_factory=early_stopping.EarlyStoppingState
    )
    train_time_s: float = 0.0

    def to_meta(self, state: TrainState, exp: Experiment) -> dict[str, Any]:
        """The JSON ``meta`` item of a checkpoint (with what inference needs to know)."""
        return {
            **dataclasses.asdict(self),
            **exp.data_info(),
            "fingerprint": checkpointing.fingerprint(state),
            "model": exp.config.model,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Progress:
        """Inverse of :meth:`to_meta`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in meta.items() if k in fields}
        values["stopper"] = early_stopping.EarlyStoppingState(**values["stopper"])
        return cls(**values)

    @property
    def done(self) -> bool:
        """Whether early stopping ended the run."""
        return self.stopper.stopped
