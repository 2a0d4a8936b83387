r"""A small hyper-parameter sweep: grid or random search over config fields, one run per point.

    python experiments/sweep.py --config=cnn_simple --out=runs/sweep \\
        --grid learning_rate=0.001,0.003 batch_size=32,128 --set num_epochs=3
    python experiments/sweep.py --config=convnet --out=runs/sweep_random --random 6 \\
        --grid learning_rate=0.0003,0.001,0.003 schedule=constant,warmup_cosine

Every point trains in ``OUT/<field=value,...>`` through the normal trainer, so an interrupted sweep
resumes: finished points are read back, unfinished ones resume from their checkpoints. Writes
``OUT/results.csv`` and ``OUT/results.md`` sorted by validation accuracy (best first).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import itertools
import random
from pathlib import Path
from typing import Any

from flaxmnist.storage import files
from flaxmnist.training import loop


def parse_values(text: str) -> tuple[str, list[Any]]:
    """``"field=v1,v2"`` → ``("field", [v1, v2])`` with values as Python literals."""
    field, _, values = text.partition("=")
    return field, [_literal(v) for v in values.split(",")]


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def sweep_points(grid: dict[str, list[Any]], samples: int | None, seed: int) -> list[dict]:
    """All grid points, or ``samples`` of them drawn without replacement."""
    points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    if samples is not None and samples < len(points):
        points = random.Random(seed).sample(points, samples)
    return points


def run_name(point: dict[str, Any]) -> str:
    """A folder name for one point, e.g. ``batch_size=32,learning_rate=0.001``."""
    return ",".join(f"{k}={v}" for k, v in sorted(point.items()))


def run_sweep(preset: str, out: Path, points: list[dict], fixed: dict[str, Any]) -> list[dict]:
    """Trains every point (resuming where possible) and writes the sorted results table."""
    rows = []
    for point in points:
        config = importlib.import_module(f"flaxmnist.configs.{preset}").get_config()
        config.update({**fixed, **point})
        metrics = loop.train_and_evaluate(config, out / run_name(point))
        rows.append(
            {
                **point,
                "val_accuracy": metrics.get("final_val_accuracy"),
                "test_accuracy": metrics["test_accuracy"],
                "train_time_s": round(metrics["train_time_s"], 1),
                "run": run_name(point),
            }
        )
    rows.sort(key=lambda r: -(r["val_accuracy"] or 0.0))
    files.write_csv_atomic(out / "results.csv", rows)
    header = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in r.values()) + " |\n" for r in rows)
    files.write_text_atomic(out / "results.md", header + body)
    return rows


def main() -> None:
    """Parses the arguments and runs the sweep."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="preset name")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--grid", nargs="+", required=True, metavar="FIELD=V1,V2")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=V", help="fixed fields")
    parser.add_argument("--random", type=int, default=None, help="sample this many points")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    grid = dict(parse_values(item) for item in args.grid)
    fixed = {field: values[0] for field, values in map(parse_values, args.set)}
    rows = run_sweep(args.config, args.out, sweep_points(grid, args.random, args.seed), fixed)
    print((args.out / "results.md").read_text(), end="")
    print(f"best: {rows[0]['run']}")


if __name__ == "__main__":
    main()
