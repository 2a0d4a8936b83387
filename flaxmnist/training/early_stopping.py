"""Keras-style early stopping as a pure state machine.

An epoch *improves* when the monitored value beats the best so far by more than ``min_delta``
(lower is better for ``val_loss``, higher for ``val_accuracy``). Training stops once ``patience``
epochs in a row have not improved; ``patience = 0`` disables stopping (the best epoch is still
tracked, for the best checkpoint and ``restore_best``).
"""

from __future__ import annotations

import dataclasses
import math

from flaxmnist import config_schema


@dataclasses.dataclass(frozen=True)
class EarlyStoppingState:
    """The best value so far, the epoch it was reached, and epochs since then without progress."""

    best: float | None = None
    best_epoch: int = 0
    wait: int = 0
    stopped: bool = False


def improves(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` in direction ``mode``."""
    if best is None:
        return not math.isnan(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta


def update(
    state: EarlyStoppingState,
    value: float,
    epoch: int,
    *,
    mode: str,
    min_delta: float,
    patience: int,
) -> EarlyStoppingState:
    """The state after ``epoch`` ended with monitored ``value``."""
    if improves(value, state.best, mode, min_delta):
        return EarlyStoppingState(best=value, best_epoch=epoch, wait=0)
    wait = state.wait + 1
    return dataclasses.replace(state, wait=wait, stopped=patience > 0 and wait >= patience)


def monitor_mode(monitor: str) -> str:
    """``min`` for a monitored loss, ``max`` for an accuracy (an unknown name: ConfigError)."""
    config_schema.check("early_stopping.monitor", monitor)
    return "min" if monitor.endswith("_loss") else "max"
