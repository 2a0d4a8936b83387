"""The fault matrix: real training processes, interrupted, damaged and crowded, then checked.

    python tests/drills/faults.py                     # every scenario (its time: the table)
    python tests/drills/faults.py --quick             # a few trials of each (what CI runs)
    python tests/drills/faults.py --only=kill9,cache  # some scenarios

Every trial runs ``python -m flaxmnist.train`` in a subprocess on small synthetic MNIST files
and checks what a user would: the exit status, a one-line error (no traceback) when it fails,
that a rerun finishes, and that the run ends exactly as an uninterrupted, uncached run does
(identical ``steps.csv``, bitwise-equal final state, the same history and metrics but for their
timings). "data lost" counts trials where something a run had already written (a checkpoint, the
history, the config) was gone or unreadable afterwards. Writes
``experiments/results/faults.json`` and the table in ``docs/reliability.md`` (between its
``faults`` markers; ``--noreport``: neither); exits 1 if any trial failed, 2 on bad input.
Disk-full and read-only trials mount small tmpfs folders and need root; elsewhere they are
reported as skipped.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a script, sys.path[0] is tests/drills: make `drills` importable
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from absl import flags, logging

from drills.common import REPO_ROOT
from drills.fault_drill import Drill, Row
from drills.fault_scenarios import SCENARIOS
from flaxmnist import cli, console, errors
from flaxmnist.cpu import machine_name
from flaxmnist.errors import ConfigError
from flaxmnist.storage import files
from flaxmnist.testing import revision, write_between_markers

RESULTS_JSON = REPO_ROOT / "experiments" / "results" / "faults.json"
REPORT = REPO_ROOT / "docs" / "reliability.md"
SCRIPT = "tests/drills/faults.py"


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


def write_report(rows: list[Row], quick: bool) -> None:
    """Merges ``rows`` into the JSON results and rewrites the table of docs/reliability.md.

    A scenario not run this time keeps its last row (each row says when and where it ran); a
    row of a scenario that no longer exists goes.
    """
    run = f"{time.strftime('%Y-%m-%d')}, {revision()}, {'quick' if quick else 'full'}"
    for row in rows:
        row.run = run
    kept = json.loads(RESULTS_JSON.read_text())["rows"] if RESULTS_JSON.exists() else []
    by_key = {r["key"]: Row(**r) for r in kept if r.get("key") in SCENARIOS}
    by_key |= {r.key: r for r in rows}
    merged = [by_key[key] for key in SCENARIOS if key in by_key]
    files.write_json_atomic(
        RESULTS_JSON,
        {"machine": machine_name(), "rows": [dataclasses.asdict(r) for r in merged]},
    )
    header = f"`python {SCRIPT}` on {machine_name()}:"
    failures = [f"- {r.scenario}: {f}" for r in merged for f in r.failures]
    block = "\n".join([header, "", table(merged), "", *(failures or ["No trial failed."])])
    write_between_markers(REPORT, "faults", block, SCRIPT)


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
