"""The fault matrix: real training processes, interrupted, damaged and crowded, then checked.

    python experiments/faults.py                     # every scenario (about 35 min on 2 cores)
    python experiments/faults.py --quick             # a few trials of each (what CI runs)
    python experiments/faults.py --only=kill9,cache  # some scenarios

Every trial runs ``python -m flaxmnist.train`` in a subprocess on small synthetic MNIST files and
checks what a user would: the exit status, a one-line error (no traceback) when it fails, that a
rerun finishes, and that the run ends exactly as an uninterrupted, uncached run does (identical
``steps.csv``; bitwise-equal final parameters). "data lost" counts trials where something a run
had already written (a checkpoint, the history, the config) was gone or unreadable afterwards.

Writes ``experiments/results/faults.json`` and the table in ``docs/reliability.md`` (between its
``faults`` markers; ``--noreport``: neither); exits 1 if any trial failed, 2 on bad input.
Disk-full and read-only trials mount small tmpfs folders and need root; elsewhere they are
reported as skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from absl import flags, logging

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from flaxmnist import cli, console, errors  # noqa: E402
from flaxmnist.errors import ConfigError  # noqa: E402
from flaxmnist.testing import machine_name, write_idx_dataset  # noqa: E402

RESULTS_JSON = REPO_ROOT / "experiments" / "results" / "faults.json"
REPORT = REPO_ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- faults:begin (written by experiments/faults.py) -->", "<!-- faults:end -->"
CUSTOM_LOSSES = REPO_ROOT / "experiments" / "custom_losses.py"
TWO_CPU_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
RUN_TIMEOUT_S = 300
DATA_DIR_ENV = "FLAXMNIST_DATA_DIR"

# The resumable run most trials interrupt: 3 epochs of cnn_simple, a checkpoint after each.
RESUMABLE = ["--config=cnn_simple", "--config.batch_size=32", "--config.num_epochs=3"]
# What the kill and signal trials interrupt: (arguments, environment), each 3 epochs of the
# drill's long training set (named by the environment, filled in by Drill.launch).
LONG_DATA = {DATA_DIR_ENV: "{long_data}"}
INTERRUPTED_CONFIGS: dict[str, tuple[list[str], dict[str, str]]] = {
    "cnn_simple": (RESUMABLE, LONG_DATA),
    "dropout": (
        ["--config=mlp_dropout", "--config.batch_size=32", "--config.num_epochs=3"],
        LONG_DATA,
    ),
    "ema": ([*RESUMABLE, "--config.ema_decay=0.9"], LONG_DATA),
    "augment": (
        [*RESUMABLE, "--config.augment.rotation=10", "--config.augment.zoom=0.1"],
        LONG_DATA,
    ),
    "batchnorm": (["--config=fast", "--config.num_epochs=3"], LONG_DATA),  # + warm-up cosine
    "tfds": ([*RESUMABLE, "--config.input_pipeline=tfds"], LONG_DATA),
    "grain": ([*RESUMABLE, "--config.input_pipeline=grain"], LONG_DATA),
    "2_devices": ([*RESUMABLE, "--config.num_devices=2"], {**LONG_DATA, **TWO_CPU_DEVICES}),
}
PROGRESS_BAR = re.compile(r"epoch (\d+)/\d+:\s+(\d+)%")
RESUMED = re.compile(r"resuming .* after epoch \d+ \(step (\d+)\)")


def written(entry: Path) -> bool:
    """Whether a ``checkpoints/`` entry is a finished checkpoint (Orbax renamed it to its step)."""
    return entry.name.isdigit()


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a finished process left: its status and output."""

    code: int
    stdout: str
    stderr: str

    @property
    def clean(self) -> bool:
        """No traceback, and a failure ends in one ``error:`` line."""
        if "Traceback" in self.stderr:
            return False
        lines = self.stderr.strip().splitlines()
        return self.code == 0 or bool(lines and lines[-1].startswith("error: "))

    def last_line(self) -> str:
        """The last line of stderr (or stdout), for failure reports."""
        lines = (self.stderr or self.stdout).strip().splitlines()
        return lines[-1][:160] if lines else ""


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
    params: str  # digest of the final parameters
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
                params_digest(workdir),
                workdir,
            )
        return self._references[key]

    def matches(self, workdir: Path, args: list[str], env: dict | None = None) -> bool:
        """Whether ``workdir`` ended exactly as the reference run of ``args``."""
        expected = self.reference(args, env)
        steps = workdir / "steps.csv"
        return (
            steps.exists()
            and steps.read_text() == expected.steps_csv
            and (params_digest(workdir) == expected.params)
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


def params_digest(workdir: Path) -> str:
    """SHA-256 of the final parameters of a run (its latest checkpoint), or "" if none loads."""
    import jax

    import flaxmnist

    try:
        params = flaxmnist.load_run(workdir).state.params
    except Exception as e:  # a damaged run: no digest
        return f"unloadable: {type(e).__name__}"
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()


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
    return not has_checkpoint or not params_digest(workdir).startswith("unloadable")


# --- scenarios ----------------------------------------------------------------------------------

CACHE_CONFIGS: dict[str, tuple[list[str], dict[str, str], int]] = {
    # name: (arguments, environment, expected exit status)
    "nan": (["--config=dense", "--config.optimizer=sgd", "--config.learning_rate=1e30"], {}, 2),
    "fast": (["--config=fast", "--config.num_epochs=1"], {}, 0),
    "fast_ema_tta": (
        [
            "--config=fast",
            "--config.num_epochs=1",
            "--config.ema_decay=0.9",
            "--config.tta_shift=1",
        ],
        {},
        0,
    ),
    "fast_augment": (
        ["--config=fast", "--config.num_epochs=1", "--config.augment.rotation=10"],
        {},
        0,
    ),
    "dense": (["--config=dense", "--config.num_epochs=1"], {}, 0),
    "cnn_simple": (["--config=cnn_simple", "--config.num_epochs=2"], {}, 0),
    "mlp_dropout": (["--config=mlp_dropout", "--config.num_epochs=1"], {}, 0),
    "fast_2_devices": (
        ["--config=fast", "--config.num_epochs=1", "--config.num_devices=2"],
        TWO_CPU_DEVICES,
        0,
    ),
    "fast_1_of_2_devices": (
        ["--config=fast", "--config.num_epochs=1", "--config.num_devices=1"],
        TWO_CPU_DEVICES,
        0,
    ),
    "custom_loss": (
        [
            "--config=dense",
            "--config.num_epochs=1",
            f"--config.import_modules={CUSTOM_LOSSES}",
            "--config.loss=focal",
        ],
        {},
        0,
    ),
    # Another training-set size, named by the environment: its batch order is another program.
    "fast_other_data_from_env": (
        ["--config=fast", "--config.num_epochs=1"],
        {DATA_DIR_ENV: "{other_data}"},  # filled in by Drill.launch
        0,
    ),
    "tfds_pipeline": (
        ["--config=dense", "--config.num_epochs=1", "--config.input_pipeline=tfds"],
        {},
        0,
    ),
}
QUICK_CACHE_CONFIGS = ("nan", "fast")  # the sequence that once broke the second fast run


def check_cache_run(drill: Drill, row: Row, name: str, cache: Path | str, what: str) -> None:
    """Runs config ``name`` on ``cache`` and records whether it ended as its reference."""
    args, env, expected = CACHE_CONFIGS[name]
    workdir = drill.fresh(name)
    outcome = drill.run(args, workdir, cache, env)
    ok = outcome.code == expected and outcome.clean
    if ok and expected == 0:
        ok = drill.matches(workdir, args, env)
    row.record(ok, f"{what} {name}: exit {outcome.code} {outcome.last_line()}")


def damage_cache(cache: Path, rng: random.Random) -> list[str]:
    """Truncates, corrupts and swaps entries of ``cache``; returns what was done."""
    entries = sorted(cache.glob("*.checked"))
    rng.shuffle(entries)
    done = []
    for i, path in enumerate(entries):
        blob = path.read_bytes()
        if i % 4 == 0:
            path.write_bytes(blob[: rng.randrange(len(blob))])
            done.append("truncated")
        elif i % 4 == 1:
            at = rng.randrange(len(blob))
            path.write_bytes(blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1 :])
            done.append("corrupted")
    by_program: dict[str, list[Path]] = {}
    for path in cache.glob("*.checked"):
        by_program.setdefault(path.name.rsplit("-", 1)[0], []).append(path)
    for paths in by_program.values():
        if len(paths) >= 2:
            a, b = paths[:2]
            blob_a = a.read_bytes()
            a.write_bytes(b.read_bytes())
            b.write_bytes(blob_a)
            done.append("swapped pair")
    (cache / ".stale-entry.tmp").write_bytes(b"left by a killed writer")
    return done


def cache_torture(drill: Drill, quick: bool) -> Row:
    """Many configs on one cache folder, killed and concurrent runs, damage; then warm reruns."""
    row = Row("cache torture")
    names = list(QUICK_CACHE_CONFIGS if quick else CACHE_CONFIGS)
    cache = drill.fresh("cache")
    order = names[:]
    drill.rng.shuffle(order)
    for name in order:
        check_cache_run(drill, row, name, cache, "cold")
    for _ in range(1 if quick else 3):  # killed part-way: compiling, training or writing
        args, env, _expected = CACHE_CONFIGS[drill.rng.choice(names)]
        killed = drill.launch(args, drill.fresh("killed"), cache, env)
        kill_at(killed, drill.rng.uniform(1, 6))
        killed.wait()
    burst = drill.rng.sample(names, 2 if quick else 4)  # processes starting at once on one cache
    processes = [
        (n, drill.launch(CACHE_CONFIGS[n][0], drill.fresh(n), cache, CACHE_CONFIGS[n][1]))
        for n in burst
    ]
    for name, process in processes:
        args, env, expected = CACHE_CONFIGS[name]
        outcome, workdir = finish(process), process.workdir
        ok = outcome.code == expected and outcome.clean
        if ok and expected == 0:
            ok = drill.matches(workdir, args, env)
        row.record(ok, f"concurrent {name}: exit {outcome.code} {outcome.last_line()}")
    row.notes.append(f"damaged entries: {len(damage_cache(cache, drill.rng))}")
    for name in names:
        check_cache_run(drill, row, name, cache, "warm after damage")
    for name in [] if quick else names:
        check_cache_run(drill, row, name, cache, "warm")
    with small_tmpfs(drill, "4k") as full:
        if full is None:
            row.notes.append("full / read-only cache: skipped (cannot mount tmpfs)")
            return row
        for name in names[: 1 if quick else 2]:
            check_cache_run(drill, row, name, full, "full cache folder")
    with small_tmpfs(drill, "64m") as read_only:
        shutil.copytree(cache, read_only, dirs_exist_ok=True)
        subprocess.run(["mount", "-o", "remount,ro", str(read_only)], check=True)
        for name in names[: 1 if quick else 2]:
            check_cache_run(drill, row, name, read_only, "read-only cache folder")
    return row


@contextlib.contextmanager
def small_tmpfs(drill: Drill, size: str) -> Iterator[Path | None]:
    """A fresh tmpfs of ``size`` (mounted by root), or None where it cannot be mounted."""
    path = drill.fresh("tmpfs")
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def interrupt_and_resume(
    drill: Drill, row: Row, signum: int, cache: Path, config: str, epoch: int, fraction: float
) -> None:
    """One trial: start run ``config``, signal it mid-``epoch``, rerun, check it resumed.

    The signal lands once a checkpoint is committed and the progress bar of ``epoch`` (2 or 3)
    shows ``fraction`` of it done. The trial survives when the first process ends as the signal
    says (killed, or exit 128 + signal with one line), the rerun resumes from a checkpoint (its
    "resuming ... (step S)" line, S > 0) and ends bitwise equal to the uninterrupted run.
    """
    args, env = INTERRUPTED_CONFIGS[config]
    workdir = drill.fresh(f"{config}-{signal.Signals(signum).name.lower()}")
    process = drill.launch(args, workdir, cache, env)
    landed = signal_mid_epoch(process, workdir, signum, epoch, fraction)
    outcome = finish(process)
    codes = {-signum, 128 + signum}
    first_ok = landed is not None and outcome.code in codes
    first_ok = first_ok and (outcome.code == -signum or outcome.clean)
    rerun = drill.run(args, workdir, cache, env)
    resumed = RESUMED.search(rerun.stdout)
    resumed_step = int(resumed.group(1)) if resumed else 0
    matches = rerun.code == 0 and drill.matches(workdir, args, env)
    ok = first_ok and rerun.clean and resumed_step > 0 and matches
    row.notes.append(f"{config}, epoch {epoch}")
    row.record(
        ok,
        f"{config} at {landed or f'epoch {epoch} (missed)'}: exit {outcome.code} "
        f"{outcome.last_line()} / rerun {rerun.code}, resumed at step {resumed_step} "
        f"{rerun.last_line()}",
        lost=rerun.code == 0 and not matches,
    )


def signal_mid_epoch(
    process: subprocess.Popen, workdir: Path, signum: int, epoch: int, fraction: float
) -> str | None:
    """Sends ``signum`` mid-``epoch`` after a committed checkpoint; where it landed, or None.

    Polls the run's checkpoints folder and the progress bar in its stderr: the signal goes once a
    checkpoint is written and the bar of ``epoch`` shows at least ``fraction`` done, short of the
    end. None when the process ended, or the moment passed, first.
    """
    ckpt, log = workdir / "checkpoints", process.log.with_suffix(".err")
    while process.poll() is None:
        bar = last_progress(log.read_text(errors="replace"))
        if bar is not None and (bar[0] > epoch or (bar[0] == epoch and bar[1] == 100)):
            return None
        committed = ckpt.is_dir() and any(map(written, ckpt.iterdir()))
        if committed and bar is not None and bar[0] == epoch and bar[1] >= 100 * fraction:
            process.send_signal(signum)
            return f"epoch {epoch}, {bar[1]} %"
        time.sleep(0.005)
    return None


def last_progress(stderr: str) -> tuple[int, int] | None:
    """(epoch, percent done) of the last progress bar in a run's stderr, or None."""
    bars = PROGRESS_BAR.findall(stderr)
    return (int(bars[-1][0]), int(bars[-1][1])) if bars else None


def interrupted_trials(
    drill: Drill, quick: bool, per_config: int
) -> Iterator[tuple[str, int, float]]:
    """(config, epoch, fraction) of each trial: every config ``per_config`` times, or one quick."""
    if quick:
        yield "ema", 2, 0.5  # EMA and the mid-epoch partial sums: the most state to carry
        return
    for config in INTERRUPTED_CONFIGS:
        for _ in range(per_config):
            yield config, drill.rng.choice((2, 3)), drill.rng.uniform(0.05, 0.9)


def kill9(drill: Drill, quick: bool) -> Row:
    """SIGKILL mid-epoch after a checkpoint; every rerun must resume and end bitwise equal.

    Full: 8 trials of each of the 8 configs (64). Quick: one (``ema``, half-way through epoch 2).
    """
    row = Row("kill -9 mid-epoch, then resume")
    cache = drill.cache(quick)
    for config, epoch, fraction in interrupted_trials(drill, quick, per_config=8):
        interrupt_and_resume(drill, row, signal.SIGKILL, cache, config, epoch, fraction)
    summarize_moments(row)
    return row


def signals(drill: Drill, quick: bool) -> Row:
    """SIGINT / SIGTERM mid-epoch: exit 130 / 143 with a saved checkpoint; the rerun resumes.

    Full: 2 trials of each config for each signal (32). Quick: SIGINT on ``cnn_simple``, SIGTERM
    on ``dropout``.
    """
    row = Row("SIGINT / SIGTERM mid-epoch, then resume")
    cache = drill.cache(quick)
    if quick:
        interrupt_and_resume(drill, row, signal.SIGINT, cache, "cnn_simple", 2, 0.3)
        interrupt_and_resume(drill, row, signal.SIGTERM, cache, "dropout", 3, 0.6)
    else:
        for config, epoch, fraction in interrupted_trials(drill, quick, per_config=4):
            signum = drill.rng.choice((signal.SIGINT, signal.SIGTERM))
            interrupt_and_resume(drill, row, signum, cache, config, epoch, fraction)
    summarize_moments(row)
    return row


def summarize_moments(row: Row) -> None:
    """Replaces the per-trial moments in ``row.notes`` by counts."""
    counts: dict[str, int] = {}
    for where in row.notes:
        counts[where] = counts.get(where, 0) + 1
    row.notes = [", ".join(f"{where}: {n}" for where, n in sorted(counts.items()))]


def disk_full(drill: Drill, quick: bool) -> Row:
    """The run directory's disk fills up at every point of a run; then space is freed."""
    row = Row("disk full, a tmpfs of growing size")
    cache = drill.cache(quick)
    reference_dir = drill.reference(RESUMABLE).workdir  # how much a whole run writes
    size = sum(p.stat().st_size for p in reference_dir.rglob("*") if p.is_file())
    trials = 1 if quick else 14
    for i in range(trials):
        room = max(4096, int(size * (i + 0.5) / trials))
        with small_tmpfs(drill, f"{room}") as disk:
            if disk is None:
                row.notes.append("skipped: cannot mount tmpfs")
                return row
            workdir = disk / "run"
            outcome = drill.run(RESUMABLE, workdir, cache)
            intact = readable_run(workdir)
            subprocess.run(["mount", "-o", f"remount,size={4 * size}", str(disk)], check=True)
            rerun = drill.run(RESUMABLE, workdir, cache)
            stopped_well = outcome.code in (0, 2) and outcome.clean  # the user's disk: never 1
            ok = stopped_well and rerun.code == 0 and drill.matches(workdir, RESUMABLE)
            row.record(
                ok,
                f"{room} bytes: exit {outcome.code} {outcome.last_line()} / rerun {rerun.code}",
                lost=not intact,
            )
            row.notes.append(outcome.last_line() or "finished")
            if not quick or i == 0:
                evaluate_on_full_disk(drill, row, disk, workdir)
    row.notes = sorted(set(row.notes))
    return row


def evaluate_on_full_disk(drill: Drill, row: Row, disk: Path, workdir: Path) -> None:
    """``flaxmnist.evaluate`` on a full disk: one line; with space again, the report is written."""
    filler = disk / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as f:
        while True:
            f.write(b"\0" * 65536)
    before = readable_run(workdir)
    command = [sys.executable, "-m", "flaxmnist.evaluate", f"--workdir={workdir}"]
    full = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    filler.unlink()
    again = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    outcome = Outcome(full.returncode, full.stdout, full.stderr)
    ok = full.returncode == 2 and outcome.clean and again.returncode == 0
    ok = ok and (workdir / "eval" / "report.html").exists()
    row.record(
        ok,
        f"evaluate on a full disk: exit {full.returncode} {outcome.last_line()}",
        lost=before and not readable_run(workdir),
    )


def snapshot(workdir: Path) -> dict[str, bytes]:
    """Every file of a run directory and its bytes."""
    return {
        str(p.relative_to(workdir)): p.read_bytes()
        for p in sorted(workdir.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def damaged_run_directories(drill: Drill, quick: bool) -> Row:
    """Resuming a run whose files were damaged: one line, or a correct resume; nothing lost."""
    row = Row("damaged run directories")
    three, two = RESUMABLE, [*RESUMABLE[:-1], "--config.num_epochs=2"]
    cache = drill.cache(quick)

    def half_run() -> Path:
        workdir = drill.fresh("damaged")
        assert drill.run(two, workdir, cache).code == 0
        (workdir / "metrics.json").unlink()  # as if it had stopped before testing
        return workdir

    def newest_checkpoint(workdir: Path) -> Path:
        return max(
            filter(written, (workdir / "checkpoints").iterdir()),
            key=lambda p: int(p.name),
        )

    def truncate_array_file(step_dir: Path) -> None:
        files = sorted(p for p in step_dir.rglob("*") if p.is_file() and "state" in str(p))
        biggest = max(files, key=lambda p: p.stat().st_size)
        biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])

    def every_checkpoint_damaged(workdir: Path) -> None:
        for step_dir in filter(written, (workdir / "checkpoints").iterdir()):
            truncate_array_file(step_dir)

    def arrays_of_an_older_step(workdir: Path) -> None:
        newest = newest_checkpoint(workdir)
        older = min(filter(written, newest.parent.iterdir()), key=lambda p: int(p.name))
        shutil.rmtree(newest / "state")
        shutil.copytree(older / "state", newest / "state")

    def other_model(workdir: Path) -> None:
        other = drill.fresh("other-model")
        drill.run(["--config=dense", "--config.num_epochs=1"], other, cache)
        shutil.rmtree(workdir / "checkpoints")
        shutil.copytree(other / "checkpoints", workdir / "checkpoints")

    def other_layout(workdir: Path) -> None:
        other = drill.fresh("other-layout")
        drill.run([*two, "--config.optimizer=sgd", "--config.momentum=0.9"], other, cache)
        shutil.rmtree(workdir / "checkpoints")
        shutil.copytree(other / "checkpoints", workdir / "checkpoints")

    def corrupt(name: str) -> Callable[[Path], None]:
        return lambda workdir: (workdir / name).write_bytes(b"\x00{garbage")

    cases = {
        # damage: (how, expected: "resume" to the reference, or "refuse" with one line, untouched)
        "truncated checkpoint array file": (
            lambda w: truncate_array_file(newest_checkpoint(w)),
            "resume",
        ),
        "every checkpoint damaged": (every_checkpoint_damaged, "refuse"),
        "arrays of an older step in the newest checkpoint": (arrays_of_an_older_step, "resume"),
        "checkpoint of another model": (other_model, "refuse"),
        "checkpoint of another optimizer layout": (other_layout, "refuse"),
        "corrupt config.json": (corrupt("config.json"), "refuse"),
        "corrupt history.json": (corrupt("history.json"), "resume"),
        "corrupt steps.csv": (corrupt("steps.csv"), "refuse"),
        "empty config.json": (lambda w: (w / "config.json").write_text(""), "refuse"),
    }
    if quick:
        chosen = (
            "truncated checkpoint array file",
            "every checkpoint damaged",  # one line, without Orbax's logged tracebacks
            "arrays of an older step in the newest checkpoint",
            "corrupt steps.csv",
        )
        cases = {k: cases[k] for k in chosen}
    for name, (damage, expected) in cases.items():
        workdir = half_run()
        damage(workdir)
        before = snapshot(workdir)
        outcome = drill.run(three, workdir, cache)
        if expected == "resume":
            ok = outcome.code == 0 and drill.matches(workdir, three)
            lost = False
        else:
            ok = outcome.code == 2 and outcome.clean
            lost = snapshot(workdir) != before
        row.record(ok, f"{name}: exit {outcome.code} {outcome.last_line()}", lost=lost)
    return row


def concurrency(drill: Drill, quick: bool) -> Row:
    """Two runs on one workdir (one refused); four on different workdirs share one cache."""
    row = Row("concurrent runs")
    cache = drill.cache(quick)
    for _ in range(1 if quick else 3):
        workdir = drill.fresh("shared-workdir")
        pair = [drill.launch(RESUMABLE, workdir, cache) for _ in range(2)]
        outcomes = sorted((finish(p) for p in pair), key=lambda o: o.code)
        refused = outcomes[1]
        ok = (
            outcomes[0].code == 0
            and refused.code == 2
            and "in use by another run" in refused.last_line()
            and drill.matches(workdir, RESUMABLE)
        )
        row.record(ok, f"one workdir: exits {[o.code for o in outcomes]} {refused.last_line()}")
    workdirs = [drill.fresh("crowd") for _ in range(2 if quick else 4)]
    crowd = [drill.launch(RESUMABLE, w, cache) for w in workdirs]
    for workdir, process in zip(workdirs, crowd, strict=True):
        outcome = finish(process)
        ok = outcome.code == 0 and drill.matches(workdir, RESUMABLE)
        row.record(
            ok, f"{len(crowd)} at once on one cache: exit {outcome.code} {outcome.last_line()}"
        )
    return row


def bad_input(drill: Drill, quick: bool) -> Row:
    """Bad config values and damaged data files (``experiments/faults_bad_input.py``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import faults_bad_input

    result = faults_bad_input.run_bad_input_fuzz(drill.fresh("bad-input"), quick=quick)
    row = Row(result["scenario"], result["trials"], result["survived"], result["data_lost"])
    row.failures = [f"{f['case']}: {f['why']}" for f in result["failures"]]
    return row


SCENARIOS: dict[str, Callable[[Drill, bool], Row]] = {
    "cache": cache_torture,
    "kill9": kill9,
    "signals": signals,
    "disk_full": disk_full,
    "damaged": damaged_run_directories,
    "concurrency": concurrency,
    "bad_input": bad_input,
}


# --- report -------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    """The markdown table of ``rows``, with a total."""
    lines = [
        "| scenario | trials | survived | data lost | seconds | run | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        notes = "; ".join(r.notes)[:300]
        lines.append(
            f"| {r.scenario} | {r.trials} | {r.survived} | {r.data_lost} | {r.seconds:.0f} "
            f"| {r.run} | {notes} |"
        )
    total = Row(
        "**all**", *(sum(getattr(r, f) for r in rows) for f in ("trials", "survived", "data_lost"))
    )
    lines.append(
        f"| {total.scenario} | {total.trials} | {total.survived} | {total.data_lost} | "
        f"{sum(r.seconds for r in rows):.0f} | | |"
    )
    return "\n".join(lines)


def commit() -> str:
    """The short commit hash of the code under test ("" outside a git checkout)."""
    result = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    return result.stdout.strip()


def write_report(rows: list[Row], quick: bool) -> None:
    """Merges ``rows`` into the JSON results and rewrites the table of docs/reliability.md.

    A scenario not run this time keeps its last row (each row says when and where it ran); a
    row of a scenario that no longer exists goes.
    """
    run = f"{time.strftime('%Y-%m-%d')}, {commit()}, {'quick' if quick else 'full'}"
    for row in rows:
        row.run = run
    kept = json.loads(RESULTS_JSON.read_text())["rows"] if RESULTS_JSON.exists() else []
    by_key = {r["key"]: Row(**r) for r in kept if r.get("key") in SCENARIOS}
    by_key |= {r.key: r for r in rows}
    merged = [by_key[key] for key in SCENARIOS if key in by_key]
    RESULTS_JSON.write_text(
        json.dumps(
            {"machine": machine_name(), "rows": [dataclasses.asdict(r) for r in merged]}, indent=2
        )
        + "\n"
    )
    text = REPORT.read_text() if REPORT.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    header = f"`python experiments/faults.py` on {machine_name()}:"
    failures = [f"- {r.scenario}: {f}" for r in merged for f in r.failures]
    block = "\n".join([header, "", table(merged), "", *(failures or ["No trial failed."])])
    REPORT.write_text(f"{before}{BEGIN}\n{block}\n{END}{after}")


def run_scenarios(names: list[str], quick: bool, seed: int, root: Path) -> list[Row]:
    """Runs the named scenarios in ``root``, printing each row as it lands."""
    drill = Drill(root, seed)
    rows = []
    for name in names:
        start = time.monotonic()
        console.say(f"[faults] {name} ...")
        row = SCENARIOS[name](drill, quick)
        row.key, row.seconds = name, time.monotonic() - start
        rows.append(row)
        console.say(
            f"[faults] {row.scenario}: {row.survived}/{row.trials} survived, "
            f"{row.data_lost} data lost ({row.seconds:.0f} s)"
        )
        for failure in row.failures:
            console.say(f"[faults]   failed: {failure}")
    return rows


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the command's flags in ``flag_values`` (``flags.FLAGS`` when run as a script)."""
    flags.DEFINE_boolean("quick", False, "A few trials of each scenario.", flag_values=flag_values)
    flags.DEFINE_list(
        "only", list(SCENARIOS), "Comma-separated scenarios.", flag_values=flag_values
    )
    flags.DEFINE_integer("seed", 0, "Seed of the random moments.", flag_values=flag_values)
    flags.DEFINE_boolean("keep", False, "Keep the drill's folder.", flag_values=flag_values)
    flags.DEFINE_boolean(
        "report", True, "Write the JSON results and the docs table.", flag_values=flag_values
    )


def check_scenarios(names: list[str]) -> None:
    """Raises ConfigError unless every name is a scenario of :data:`SCENARIOS`."""
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown:
        raise ConfigError(
            f"--only: unknown scenarios {', '.join(unknown)}; valid: {', '.join(SCENARIOS)}"
        )


def fault_matrix(flag_values: flags.FlagValues) -> None:
    """Runs the scenarios the parsed ``flag_values`` name, prints the table, writes the report.

    Exits 1 when any trial failed or lost data.
    """
    names = [name for name in flag_values.only if name]
    with errors.reported(RESULTS_JSON.parent):
        check_scenarios(names)
        root = Path(tempfile.mkdtemp(prefix="flaxmnist-faults-"))
        try:
            rows = run_scenarios(names, flag_values.quick, flag_values.seed, root)
        finally:
            if not flag_values.keep:
                shutil.rmtree(root, ignore_errors=True)
        console.say(table(rows))
        if flag_values.report:
            write_report(rows, flag_values.quick)
    if not all(r.survived == r.trials and r.data_lost == 0 for r in rows):
        sys.exit(1)


def main(argv: list[str]) -> None:
    """Runs the fault matrix the command-line flags describe."""
    del argv  # cli.parse_flags refuses positional arguments
    sys.stdout.reconfigure(line_buffering=True)  # each row as it lands, even through a pipe
    logging.set_verbosity(logging.WARNING)  # no Orbax log lines from reading the runs' results
    fault_matrix(flags.FLAGS)


if __name__ == "__main__":
    errors.exit_on_signals()
    define_flags(flags.FLAGS)
    cli.run(main)
