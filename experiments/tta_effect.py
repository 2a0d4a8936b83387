"""Test accuracy of trained runs with and without test-time augmentation (``tta_shift``).

    python experiments/tta_effect.py runs/fast runs/convnet-seed0 --shifts=0 --shifts=1 --shifts=2

Reloads each run's latest checkpoint (no training) and scores the test split once per shift
(``--shifts`` repeated, default 0, 1 and 2): 0 is the plain model; k > 0 averages the softmax of
the image and its four copies shifted by k pixels. Writes
``experiments/results/tta_effect.{md,json}`` (or ``--out``) and prints the table. Bad input ends
in one line on stderr and exit status 2.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from absl import flags, logging

import flaxmnist
from flaxmnist import cli, console, errors
from flaxmnist.data import datasets
from flaxmnist.storage import files

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the command's flags in ``flag_values`` (``flags.FLAGS`` when run as a script)."""
    flags.DEFINE_multi_integer(
        "shifts", [0, 1, 2], "A tta_shift to score (repeat for several).", flag_values=flag_values
    )
    flags.DEFINE_string(
        "out", str(RESULTS_DIR), "Folder for tta_effect.{md,json}.", flag_values=flag_values
    )


def tta_accuracies(workdir: Path, shifts: list[int]) -> dict:
    """Test accuracy (and prediction time) of run ``workdir`` for every shift."""
    run = flaxmnist.load_run(workdir)
    test = datasets.load_dataset(run.config.dataset, run.config.data_dir or None).test
    row = {"run": str(workdir), "model": run.config.model, "dataset": run.config.dataset}
    for shift in shifts:
        start = time.perf_counter()
        logits = run.with_tta(shift).predict(test.images)
        row[f"accuracy_shift{shift}"] = float(np.mean(logits.argmax(-1) == test.labels))
        row[f"seconds_shift{shift}"] = time.perf_counter() - start
    return row


def markdown_table(rows: list[dict], shifts: list[int]) -> str:
    """One line per run: test accuracy for each shift and its change from the first shift."""
    header = "| run | model | " + " | ".join(f"tta_shift={s}" for s in shifts) + " |"
    lines = [header, "|---|---|" + "---|" * len(shifts)]
    for row in rows:
        accuracies = [100 * row[f"accuracy_shift{s}"] for s in shifts]
        cells = [f"{accuracies[0]:.2f} %"]
        cells += [f"{a:.2f} % ({a - accuracies[0]:+.2f})" for a in accuracies[1:]]
        name = Path(row["run"]).name
        lines.append(f"| `{name}` | `{row['model']}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tta_effect(runs: list[Path], flag_values: flags.FlagValues) -> None:
    """Scores ``runs`` for the shifts of the parsed ``flag_values``, writes and prints the table."""
    out = Path(flag_values.out)
    with errors.reported(out):
        if not runs:
            raise errors.FlaxmnistError("name at least one run directory: tta_effect.py RUN ...")
        rows = [tta_accuracies(run, flag_values.shifts) for run in runs]
        table = markdown_table(rows, flag_values.shifts)
        out.mkdir(parents=True, exist_ok=True)
        files.write_json_atomic(out / "tta_effect.json", rows)
        files.write_text_atomic(out / "tta_effect.md", table + "\n")
    console.say(table)


def main(argv: list[str]) -> None:
    """Scores the run directories named on the command line."""
    logging.set_verbosity(logging.WARNING)
    tta_effect([Path(arg) for arg in argv[1:]], flags.FLAGS)


if __name__ == "__main__":
    errors.exit_on_signals()
    define_flags(flags.FLAGS)
    cli.run(main, positional="run directories")
