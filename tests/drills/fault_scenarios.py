"""The fault matrix's scenarios: each runs trials on a :class:`Drill` and returns a :class:`Row`.

A scenario is a function ``(drill, quick) -> Row`` listed in :data:`SCENARIOS`; ``quick`` asks
for a few trials (what the tests run), else the full set.
"""

from __future__ import annotations

import contextlib
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from drills import bad_input
from drills.common import REPO_ROOT, Outcome, snapshot
from drills.fault_drill import (
    DATA_DIR_ENV,
    Drill,
    Row,
    finish,
    kill_at,
    readable_run,
    small_tmpfs,
    written,
)
from flaxmnist.storage import run_directory

CUSTOM_LOSSES = REPO_ROOT / "experiments" / "custom_losses.py"
TWO_CPU_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}

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
STOPPED = re.compile(r"interrupted in epoch (\d+) at step (\d+); checkpoint saved")
RUN_LOCK = {run_directory.LOCK_FILE}  # made by every run: no data of its own

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


# Tries of an interrupted-run trial whose signal missed its moment (the process ended first).
MOMENT_ATTEMPTS = 3


def interrupt_and_resume(
    drill: Drill, row: Row, signum: int, cache: Path, config: str, epoch: int, fraction: float
) -> None:
    """One trial: start run ``config``, signal it mid-``epoch``, rerun, check it resumed.

    The signal lands once a checkpoint is committed and the progress bar of ``epoch`` (2 or 3)
    shows ``fraction`` of it done; where the epoch ended before the drill saw that moment (a
    fast epoch on a busy machine), the trial starts again in a fresh folder, up to
    :data:`MOMENT_ATTEMPTS` times, and the notes count the retries. The trial survives when the
    first process ends as the signal says (SIGKILL: killed; SIGINT / SIGTERM: exit 128 + signal
    with one line), the rerun resumes from a checkpoint (its "resuming ... (step S)" line,
    S > 0; after SIGINT / SIGTERM, S is the step the first process named as saved, inside the
    epoch it was signalled in) and ends bitwise equal to the uninterrupted run.
    """
    args, env = INTERRUPTED_CONFIGS[config]
    for _ in range(MOMENT_ATTEMPTS):
        workdir = drill.fresh(f"{config}-{signal.Signals(signum).name.lower()}")
        process = drill.launch(args, workdir, cache, env)
        landed = signal_mid_epoch(process, workdir, signum, epoch, fraction)
        outcome = finish(process)
        if landed is not None:
            break
        row.notes.append(f"{config}: missed its moment (the epoch ended first)")
    graceful = signum != signal.SIGKILL  # the run saves a checkpoint where it stopped, exits
    first_ok = landed is not None and (
        outcome.code == 128 + signum and outcome.clean if graceful else outcome.code == -signum
    )
    rerun = drill.run(args, workdir, cache, env)
    resumed = RESUMED.search(rerun.stdout)
    resumed_step = int(resumed.group(1)) if resumed else 0
    if graceful:
        first_ok = first_ok and saved_where_stopped(drill, args, env, epoch, outcome, resumed_step)
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


def saved_where_stopped(
    drill: Drill, args: list[str], env: dict, epoch: int, outcome: Outcome, resumed_step: int
) -> bool:
    """Whether a signalled run named a saved step inside ``epoch`` and the rerun resumed there."""
    stopped = STOPPED.search(outcome.last_line())
    if stopped is None or int(stopped[1]) != epoch:
        return False
    steps = drill.steps_per_epoch(args, env)
    return (epoch - 1) * steps < int(stopped[2]) == resumed_step <= epoch * steps


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

    Full: 4 trials of each config (32), each with a signal drawn at random. Quick: SIGINT on
    ``cnn_simple``, SIGTERM on ``dropout``.
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
            # Finished where the room sufficed, else exit 2 and one error line (never 1)
            stopped_well = outcome.code == 0 or outcome.problems() == []
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
        before = snapshot(workdir, skip=RUN_LOCK)
        outcome = drill.run(three, workdir, cache)
        if expected == "resume":
            ok = outcome.code == 0 and drill.matches(workdir, three)
            lost = False
        else:
            ok = outcome.code == 2 and outcome.clean
            lost = snapshot(workdir, skip=RUN_LOCK) != before
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


def bad_input_fuzz(drill: Drill, quick: bool) -> Row:
    """Bad config values and damaged data files (``bad_input.py``)."""
    result = bad_input.run_bad_input_fuzz(drill.fresh("bad-input"), quick=quick)
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
    "bad_input": bad_input_fuzz,
}
