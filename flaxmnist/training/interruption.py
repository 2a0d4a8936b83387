"""Stopping a run cleanly: SIGINT / SIGTERM become a flag the loop checks, and the process age.

The epoch loop saves a checkpoint when the flag is set and raises
:class:`TrainingInterruptedError` (exit 128 + signal); a second signal stops at once.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from flaxmnist import console
from flaxmnist.errors import FlaxmnistError

IMPORTED_AT = time.perf_counter()


def process_age_s() -> float:
    """Seconds since this process started (from /proc; elsewhere since this module's import)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - IMPORTED_AT


class TrainingInterruptedError(FlaxmnistError):
    """Training was stopped by SIGINT/SIGTERM after saving a checkpoint (exit 128 + signal)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class InterruptFlag:
    """Turns SIGINT/SIGTERM into a flag checked between chunks.

    The handler only sets the flag (it raises nothing, so no signal is lost in a callback that
    swallows exceptions) and puts the previous handlers back: a second signal does what a signal
    did before the loop (the CLI: stop at once, :func:`flaxmnist.errors.stop_now`).
    """

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> InterruptFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        self.restore()
        console.say(
            "stopping after the current step; saving a checkpoint "
            "(signal again to abort without saving)"
        )

    def restore(self) -> None:
        """Puts back the handlers that were there before."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __exit__(self, *exc_info) -> None:
        self.restore()


def interrupted_message(epoch: int, step: int) -> str:
    """What the user reads after Ctrl-C."""
    return (
        f"interrupted in epoch {epoch} at step {step}; checkpoint saved, "
        "rerun the same command to resume"
    )


class FirstChunkClock:
    """The process age when the first chunk of training steps finished: the start-up figure."""

    def __init__(self):
        self.seconds: float | None = None

    def tick(self) -> None:
        """Records the process age the first time it is called."""
        if self.seconds is None:
            self.seconds = process_age_s()
