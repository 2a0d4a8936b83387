"""Test accuracy of trained runs with and without test-time augmentation (``tta_shift``).

    python experiments/tta_effect.py runs/fast runs/convnet-seed0 --shifts 0 1 2

Reloads each run's latest checkpoint (no training) and scores the test split once per shift:
0 is the plain model; k > 0 averages the softmax of the image and its four copies shifted by k
pixels. Writes ``experiments/results/tta_effect.{md,json}`` (or ``--out``) and prints the table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import flaxmnist
from flaxmnist.data import datasets
from flaxmnist.storage import files


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


def main() -> None:
    """Scores the runs and writes the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--shifts", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    rows = [tta_accuracies(run, args.shifts) for run in args.runs]
    table = markdown_table(rows, args.shifts)
    args.out.mkdir(parents=True, exist_ok=True)
    files.write_json_atomic(args.out / "tta_effect.json", rows)
    files.write_text_atomic(args.out / "tta_effect.md", table + "\n")
    print(table)


if __name__ == "__main__":
    main()
