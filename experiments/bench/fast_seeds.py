r"""The ``fast`` preset on several seeds: test accuracy and launch-to-exit seconds, cold and warm.

    python experiments/bench/fast_seeds.py --seeds=10 --seeds=11 --seeds=12 --seeds=13 --seeds=14

Each seed runs ``python -m flaxmnist.train --config=fast --config.seed=S`` twice, timed from the
outside (launch to exit): first with a fresh, empty compilation cache (cold), then again with the
cache that run filled (warm). Cold and warm runs alternate, so a neighbour's load on a shared
machine spreads over both. ``--set FIELD=VALUE`` (repeated) adds config overrides. Writes
``OUT/fast_seeds.{json,md}`` (default ``experiments/bench/results``) and prints the table; the files
keep a table per CPU type, this CPU's replaced (``report.results_by_cpu``).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import end_to_end
import report
from absl import flags

from flaxmnist import cli, errors
from flaxmnist.cpu import cpu_model, machine_name


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the command's flags in ``flag_values`` (``flags.FLAGS`` when run as a script)."""
    flags.DEFINE_multi_integer(
        "seeds",
        [10, 11, 12, 13, 14],
        "A seed to run (repeat for several).",
        flag_values=flag_values,
    )
    flags.DEFINE_multi_string(
        "set", [], "FIELD=VALUE: a config override (repeat).", flag_values=flag_values
    )
    flags.DEFINE_string(
        "out", str(report.RESULTS), "Folder for the results.", flag_values=flag_values
    )


def run_seed(seed: int, overrides: list[str]) -> dict:
    """One seed, cold then warm, in a temporary directory deleted afterwards."""
    args = [f"--config.seed={seed}", *(f"--config.{item}" for item in overrides)]
    with tempfile.TemporaryDirectory(prefix="flaxmnist-seeds-") as tmp:
        cache = Path(tmp) / "cache"
        cold = end_to_end.run_fast(Path(tmp) / "cold", cache, *args)
        warm = end_to_end.run_fast(Path(tmp) / "warm", cache, *args)
    for run in (cold, warm):
        if "error" in run:
            raise RuntimeError(f"seed {seed}: {run['error']}")
    return {
        "seed": seed,
        "test_accuracy": warm["test_accuracy"],
        "cold_test_accuracy": cold["test_accuracy"],
        "cold_wall_s": cold["wall_s"],
        "warm_wall_s": warm["wall_s"],
        "warm_train_time_s": warm["total_time_s"],
        "warm_first_step_s": warm["time_to_first_chunk_s"],
    }


def summarize(runs: list[dict], overrides: list[str], machine: str) -> dict:
    """The per-seed rows with their medians and the lowest accuracy."""
    return {
        "machine": machine,
        "command": "python -m flaxmnist.train --config=fast --config.seed=S"
        + "".join(f" --config.{item}" for item in overrides),
        "runs": runs,
        "min_test_accuracy": min(r["test_accuracy"] for r in runs),
        "mean_test_accuracy": statistics.mean(r["test_accuracy"] for r in runs),
        "median_cold_wall_s": statistics.median(r["cold_wall_s"] for r in runs),
        "median_warm_wall_s": statistics.median(r["warm_wall_s"] for r in runs),
    }


def markdown(result: dict) -> str:
    """One CPU's per-seed table."""
    lines = [
        f"{result['machine']}. `{result['command']}`; cold: empty compilation cache, warm: the",
        "same command again with the cache the cold run filled.",
        "",
        "| seed | test accuracy | cold s | warm s |",
        "|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['seed']} | {100 * r['test_accuracy']:.2f} % | {r['cold_wall_s']:.1f} "
            f"| {r['warm_wall_s']:.1f} |"
        )
    lines.append(
        f"| median / min | min {100 * result['min_test_accuracy']:.2f} % "
        f"(mean {100 * result['mean_test_accuracy']:.2f} %) "
        f"| {result['median_cold_wall_s']:.1f} | {result['median_warm_wall_s']:.1f} |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    """Runs every seed and writes the results."""
    del argv  # cli.parse_flags refuses positional arguments
    values = flags.FLAGS
    runs = [run_seed(seed, values.set) for seed in values.seeds]
    result = summarize(runs, values.set, machine_name())
    out = Path(values.out)
    by_cpu = report.results_by_cpu(out / "fast_seeds.json")
    by_cpu[cpu_model()] = result
    title = "`fast` preset: fresh seeds, launch to exit"
    intro = "Written by `python experiments/bench/fast_seeds.py`, a table per CPU type."
    document = report.by_cpu_markdown(title, intro, by_cpu, markdown)
    report.write_result_files(out, "fast_seeds", {"cpus": by_cpu}, document)


if __name__ == "__main__":
    errors.exit_on_signals()
    define_flags(flags.FLAGS)
    cli.run(main)
