"""The fault matrix's machinery: training processes on synthetic data, their outcomes, the rows.

A :class:`Drill` writes small synthetic MNIST files once, launches ``python -m flaxmnist.train``
on them and remembers the uninterrupted, uncached run of each config it is asked to compare with;
the scenarios (``fault_scenarios.py``) count their trials in a :class:`Row`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from drills.common import (
    REPO_ROOT,
    Outcome,
    mount_tmpfs,
    state_digest,
    unmount,
    untimed_records,
)
from flaxmnist.testing import write_idx_dataset

RUN_TIMEOUT_S = 300
DATA_DIR_ENV = "FLAXMNIST_DATA_DIR"


def written(entry: Path) -> bool:
    """Whether a ``checkpoints/`` entry is a finished checkpoint (Orbax renamed it to its step)."""
    return entry.name.isdigit()


@dataclasses.dataclass
class Row:
    """One scenario's line of the table."""

    scenario: str
    trials: int = 0
    survived: int = 0
    data_lost: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    run: str = ""  # when, at which commit, full or quick
    key: str = ""  # its name in SCENARIOS

    def record(self, ok: bool, what: str, lost: bool = False) -> None:
        """Counts one trial; ``what`` says which, for the failure list."""
        self.trials += 1
        self.survived += ok
        self.data_lost += lost
        if not ok or lost:
            self.failures.append(what)


@dataclasses.dataclass(frozen=True)
class Finished:
    """What an uninterrupted, uncached run of a config produced."""

    steps_csv: str
    state: str  # digest of the final state (common.state_digest)
    records: str  # history and metrics without timings (common.untimed_records)
    workdir: Path


class Drill:
    """Launches training processes on shared synthetic data and remembers reference runs."""

    def __init__(self, root: Path, seed: int):
        self.root = root
        self.data = write_idx_dataset(root / "data" / "mnist", num_train=2048, num_test=200).parent
        self.other_data = root / "other-data"  # another training-set size
        write_idx_dataset(self.other_data / "mnist", num_train=1536, num_test=200)
        # Epochs long enough (0.3-2 s on 2 cores) that a signal can land in the middle of one.
        self.long_data = root / "long-data"
        write_idx_dataset(self.long_data / "mnist", num_train=16384, num_test=200)
        self.rng = random.Random(seed)
        self._references: dict[tuple, Finished] = {}
        self._count = 0

    def cache(self, quick: bool) -> Path:
        """A scenario's cache folder: its own in a full run; when quick, one the drill shares."""
        return self.root / "shared-cache" if quick else self.fresh("cache")

    def fresh(self, name: str) -> Path:
        """A new, unused path under the drill's folder."""
        self._count += 1
        return self.root / f"{self._count:03d}-{name}"

    def command(
        self, args: list[str], workdir: Path, cache: Path | str, env: dict | None = None
    ) -> list[str]:
        """The training command line (the drill's data unless ``env`` names other data)."""
        data = [] if DATA_DIR_ENV in (env or {}) else [f"--config.data_dir={self.data}"]
        return [
            sys.executable,
            "-m",
            "flaxmnist.train",
            *args,
            *data,
            f"--config.compilation_cache_dir={cache}",
            f"--workdir={workdir}",
        ]

    def launch(
        self, args: list[str], workdir: Path, cache: Path | str, env: dict | None = None
    ) -> subprocess.Popen:
        """Starts a training process; its output goes to files (a full pipe would block it)."""
        folders = {"other_data": self.other_data, "long_data": self.long_data}
        env = {k: v.format(**folders) for k, v in (env or {}).items()}
        log = self.fresh("log")
        with log.with_suffix(".out").open("w") as out, log.with_suffix(".err").open("w") as err:
            process = subprocess.Popen(
                self.command(args, workdir, cache, env),
                cwd=REPO_ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                stdout=out,
                stderr=err,
            )
        process.log, process.workdir = log, workdir  # where finish() reads the output
        return process

    def run(
        self, args: list[str], workdir: Path, cache: Path | str, env: dict | None = None
    ) -> Outcome:
        """Runs a training process to its end."""
        return finish(self.launch(args, workdir, cache, env))

    def reference(self, args: list[str], env: dict | None = None) -> Finished:
        """The uninterrupted, uncached run of ``args`` (made once per drill)."""
        key = (tuple(args), tuple(sorted((env or {}).items())))
        if key not in self._references:
            workdir = self.fresh("reference")
            outcome = self.run(args, workdir, "", env)
            if outcome.code != 0:
                raise RuntimeError(f"reference run {args} failed: {outcome.last_line()}")
            self._references[key] = Finished(
                (workdir / "steps.csv").read_text(),
                state_digest(workdir),
                untimed_records(workdir),
                workdir,
            )
        return self._references[key]

    def steps_per_epoch(self, args: list[str], env: dict | None = None) -> int:
        """The steps of one epoch of ``args``, counted in its reference run's step log."""
        rows = self.reference(args, env).steps_csv.splitlines()[1:]  # step,epoch,loss,accuracy
        return sum(row.split(",")[1] == "1" for row in rows)

    def matches(self, workdir: Path, args: list[str], env: dict | None = None) -> bool:
        """Whether ``workdir`` ended exactly as the reference run of ``args``.

        The same per-step log, every array of the final state (parameters, optimizer state,
        BatchNorm statistics, EMA), and the same history and metrics but for their timings.
        """
        expected = self.reference(args, env)
        steps = workdir / "steps.csv"
        return (
            steps.exists()
            and steps.read_text() == expected.steps_csv
            and state_digest(workdir) == expected.state
            and untimed_records(workdir) == expected.records
        )


def finish(process: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> Outcome:
    """Waits for a process of :meth:`Drill.launch` and collects its output."""
    timed_out = ""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        timed_out = "\nerror: (drill) timed out"
    log = process.log
    return Outcome(
        process.returncode,
        log.with_suffix(".out").read_text(),
        log.with_suffix(".err").read_text() + timed_out,
    )


def kill_at(process: subprocess.Popen, delay_s: float, signum: int = signal.SIGKILL) -> bool:
    """Sends ``signum`` after ``delay_s`` unless the process ended first; whether it was sent."""
    try:
        process.wait(timeout=delay_s)
        return False
    except subprocess.TimeoutExpired:
        process.send_signal(signum)
        return True


def readable_run(workdir: Path) -> bool:
    """Whether every file a run had written still reads (config, history, steps, checkpoint)."""
    for name in ("config.json", "history.json", "metrics.json"):
        path = workdir / name
        if path.exists():
            try:
                json.loads(path.read_text())
            except ValueError:
                return False
    steps = workdir / "steps.csv"
    if steps.exists() and steps.read_text() and not steps.read_text().startswith("step,"):
        return False
    ckpt = workdir / "checkpoints"
    has_checkpoint = ckpt.is_dir() and any(map(written, ckpt.iterdir()))
    return not has_checkpoint or not state_digest(workdir).startswith("unloadable")


@contextlib.contextmanager
def small_tmpfs(drill: Drill, size: str) -> Iterator[Path | None]:
    """A fresh tmpfs of ``size`` (mounted by root), or None where it cannot be mounted."""
    path = drill.fresh("tmpfs")
    path.mkdir()
    if not mount_tmpfs(path, size):
        yield None
        return
    try:
        yield path
    finally:
        unmount(path)
