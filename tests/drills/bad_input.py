"""Bad-input fuzz: every case is a real ``python -m flaxmnist.train`` subprocess.

    python tests/drills/bad_input.py [--quick] [--work=DIR]

The project's rule: bad input ends with a one-line error naming the problem (the config field or
the file) and exit status 2 — never a traceback, never a half-written file. Each case is data
(``bad_input_cases.py``): the flags it adds to a small, valid base command (a synthetic dataset
written by :func:`flaxmnist.testing.write_idx_dataset`, the dense model, one epoch, no
compilation cache) and, for the data cases, how it damages that dataset first. A bad-input
case passes when

* the exit status is 2 and stderr holds no ``Traceback``;
* stderr's last line starts with ``error: `` and contains the case's ``expect`` substring;
* the workdir (which never exists beforehand, except where a case puts a file there) is not
  created, no other file appears in the case's folder, and no file that was there changed.

Rejected input never creates the run directory: every check runs before it is made. A valid
case (``ok=True``: workdir paths with spaces or non-ASCII characters) must exit 0 and leave a
complete run directory (``metrics.json``, no temp files, no ``error.log``).

:func:`run_bad_input_fuzz` is what the fault matrix (``faults.py``) runs; importing this module
does no work.
"""

import concurrent.futures
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if not __package__:  # run as a script, sys.path[0] is tests/drills: make `drills` importable
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from absl import flags

from drills.bad_input_cases import CASES, NUM_TEST, NUM_TRAIN, Case, data_folder
from flaxmnist import cli, console, errors
from flaxmnist.testing import write_idx_dataset

CASE_TIMEOUT_S = 300
MAX_WORKERS = 2


@dataclasses.dataclass
class CaseResult:
    """What one case did and whether it met its expectation."""

    case: str
    status: int | None
    last_line: str
    ok: bool
    why: str = ""
    seconds: float = 0.0
    data_lost: bool = False


def folder_state(folder: Path) -> dict[str, str]:
    """``relative path -> sha256`` (``<dir>`` for folders) of everything below ``folder``.

    Unlike :func:`drills.common.snapshot` it lists folders too (rejected input must create
    none) and reads an unreadable file (the permission case) as ``<unreadable>``.
    """
    found = {}
    for path in sorted(folder.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        rel = str(path.relative_to(folder))
        if path.is_dir():
            found[rel] = "<dir>"
        else:
            try:
                found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                found[rel] = "<unreadable>"
    return found


def base_args(folder: Path) -> list[str]:
    """The valid command every case starts from (a second or two of training)."""
    return [
        f"--config.data_dir={folder / 'data'}",
        "--config.compilation_cache_dir=",
        "--config.model=dense",
        "--config.num_epochs=1",
        "--config.batch_size=32",
        "--config.eval_batch_size=64",
        f"--workdir={folder / 'run'}",
    ]


def command(case: Case, folder: Path, extra: Sequence[str]) -> list[str]:
    """The case's full command line; a ``--config=`` from its setup goes first."""
    first = [a for a in extra if a.startswith("--config=")]
    rest = [a for a in extra if not a.startswith("--config=")]
    return [
        sys.executable,
        "-m",
        "flaxmnist.train",
        *first,
        *base_args(folder),
        *rest,
        *case.args,
    ]


def workdir_of(cmd: Sequence[str]) -> Path:
    """The last ``--workdir`` of ``cmd`` (absl's choice)."""
    return Path([a for a in cmd if a.startswith("--workdir=")][-1].split("=", 1)[1])


def run_case(case: Case, work: Path) -> CaseResult:
    """Prepares ``case`` in its own folder below ``work``, runs it and judges the outcome."""
    folder = work / case.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_idx_dataset(
        data_folder(folder), NUM_TRAIN, NUM_TEST, compress=case.compress, checksums=case.checksums
    )
    extra = list(case.setup(folder)) if case.setup else []
    cmd = command(case, folder, extra)
    workdir = workdir_of(cmd)
    workdir_existed = workdir.exists()
    before = folder_state(folder)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=CASE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return CaseResult(case.name, None, "", False, f"timed out after {CASE_TIMEOUT_S} s")
    seconds = time.perf_counter() - start
    lines = proc.stderr.strip().splitlines()
    last = lines[-1] if lines else ""
    after = folder_state(folder)
    lost = sorted(k for k, v in before.items() if after.get(k) != v)
    why = judge(case, proc, last, workdir, workdir_existed, sorted(set(after) - set(before)))
    if lost:
        why = "; ".join(filter(None, [why, f"changed or removed: {', '.join(lost)}"]))
    return CaseResult(case.name, proc.returncode, last, not why, why, seconds, bool(lost))


def judge(
    case: Case,
    proc: subprocess.CompletedProcess,
    last: str,
    workdir: Path,
    workdir_existed: bool,
    new_paths: list[str],
) -> str:
    """Why ``proc`` missed ``case``'s expectation ("" when it met it)."""
    problems = []
    if "Traceback" in proc.stderr:
        problems.append("traceback on stderr")
    if case.ok:
        if proc.returncode != 0:
            problems.append(f"exit status {proc.returncode}, expected 0")
        elif not (workdir / "metrics.json").is_file():
            problems.append("no metrics.json in the workdir")
        leftovers = [p for p in new_paths if p.endswith(".tmp") or p.endswith("error.log")]
        if leftovers:
            problems.append(f"left behind: {', '.join(leftovers)}")
        return "; ".join(problems)
    if proc.returncode != 2:
        problems.append(f"exit status {proc.returncode}, expected 2")
    if not last.startswith("error: "):
        problems.append("last stderr line is not 'error: ...'")
    elif case.expect not in last:
        problems.append(f"last line does not name {case.expect!r}")
    if not workdir_existed and workdir.exists():
        problems.append(f"created the workdir ({', '.join(new_paths) or 'empty'})")
    elif new_paths:
        problems.append(f"wrote {', '.join(new_paths)}")
    return "; ".join(problems)


# --------------------------------------------------------------------------- the fuzz


def selected_cases(quick: bool) -> tuple[list[Case], list[str]]:
    """The cases to run and the names skipped here (permission cases as root)."""
    chosen = [c for c in CASES if c.quick] if quick else list(CASES)
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    skipped = [c.name for c in chosen if c.needs_non_root and is_root]
    return [c for c in chosen if c.name not in skipped], skipped


def run_cases(cases: Sequence[Case], work: Path, workers: int = MAX_WORKERS) -> list[CaseResult]:
    """Runs ``cases`` (at most ``workers`` at a time) and returns their outcomes in order."""
    work.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, MAX_WORKERS)) as pool:
        return list(pool.map(lambda case: run_case(case, work), cases))


def summarize(outcomes: Sequence[CaseResult], skipped: Sequence[str]) -> dict:
    """The fault-drill record the fault matrix collects."""
    return {
        "scenario": "bad input fuzz",
        "trials": len(outcomes),
        "survived": sum(o.ok for o in outcomes),
        "data_lost": sum(o.data_lost for o in outcomes),
        "failures": [{"case": o.case, "why": o.why} for o in outcomes if not o.ok],
        "skipped": list(skipped),
    }


def run_bad_input_fuzz(work: Path, quick: bool = False) -> dict:
    """Runs the fuzz (``quick``: ~8 representative cases) in folders below ``work``.

    Returns:
      ``{"scenario", "trials", "survived", "data_lost", "failures": [{"case", "why"}],
      "skipped"}``; ``survived`` counts the cases that met their expectation.
    """
    cases, skipped = selected_cases(quick)
    return summarize(run_cases(cases, Path(work)), skipped)


def format_table(outcomes: Sequence[CaseResult]) -> str:
    """One row per case: name, exit status, stderr's last line (cut), ok."""
    width = max(len(o.case) for o in outcomes)
    rows = [f"{'case':<{width}}  exit  ok    seconds  last stderr line"]
    for o in outcomes:
        line = o.last_line if len(o.last_line) <= 110 else o.last_line[:107] + "..."
        status = "-" if o.status is None else str(o.status)
        mark = "ok" if o.ok else "FAIL"
        rows.append(f"{o.case:<{width}}  {status:>4}  {mark:<4}  {o.seconds:7.1f}  {line}")
    return "\n".join(rows)


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the command's flags in ``flag_values`` (``flags.FLAGS`` when run as a script)."""
    flags.DEFINE_boolean(
        "quick", False, "Run the representative subset only.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "work", None, "Case folders go here (default: a temp dir).", flag_values=flag_values
    )


def fuzz(flag_values: flags.FlagValues) -> None:
    """Runs the fuzz the parsed ``flag_values`` describe and prints the table and the failures.

    Exits 1 when any case failed.
    """
    work = Path(flag_values.work or tempfile.mkdtemp(prefix="flaxmnist-bad-input-"))
    with errors.reported(work):
        cases, skipped = selected_cases(flag_values.quick)
        start = time.perf_counter()
        outcomes = run_cases(cases, work)
    result = summarize(outcomes, skipped)
    console.say(format_table(outcomes))
    for failure in result["failures"]:
        console.say(f"FAILED {failure['case']}: {failure['why']}")
    console.say(
        f"{result['survived']}/{result['trials']} cases survived, data lost in "
        f"{result['data_lost']}, skipped {', '.join(skipped) or 'none'} "
        f"({time.perf_counter() - start:.0f} s; case folders in {work})"
    )
    if result["failures"]:
        sys.exit(1)
    if flag_values.work is None:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str]) -> None:
    """Runs the fuzz the command-line flags describe."""
    del argv  # cli.parse_flags refuses positional arguments
    fuzz(flags.FLAGS)


if __name__ == "__main__":
    errors.exit_on_signals()
    define_flags(flags.FLAGS)
    cli.run(main)
