"""Trains reference presets with their reference recipes and writes the reproduction table.

    python experiments/reproduce.py                  # every reference preset, seed 0
    python experiments/reproduce.py dense cnn_simple --seeds=0 --seeds=1 --seeds=2
    python experiments/reproduce.py resnet_mnist resnet_fashion --seeds=0 --seeds=1 --seeds=2 \
        --jobs=6                                     # on a GPU
    python experiments/reproduce.py --tables_only    # rewrite the tables from the JSON

Each (preset, seed) trains in its own run directory under ``--runs`` (default
``runs/reproduce``; ``--seeds`` is repeated, one seed each); a run that already has
``metrics.json`` is reused, so an interrupted reproduction picks up where it stopped.
``--jobs=N`` trains N runs at once, each logging to ``RUNS/PRESET-seedS.log`` (useful on an
accelerator, which one small model leaves mostly idle; on a CPU the runs would only share its
cores). Writes ``experiments/results/reproduction.{md,json}``: the reference presets against what
the notebooks reported, then our own presets against the goals they were built for. Bad input
ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from absl import flags

from flaxmnist import cli, configs, console, errors
from flaxmnist.cpu import machine_name
from flaxmnist.errors import ConfigError
from flaxmnist.testing import write_between_markers

RESULTS_DIR = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parent.parent / "README.md"
# What the reference notebooks reported (docs/models.md), as test accuracy in percent.
REPORTED = {
    "dense": ("96.89 %", 96.89),
    "mlp_dropout": ("97.62-97.89 %", 97.62),
    "mlp": ("worst of three on Fashion", None),
    "cnn_simple": ("~98 %", 98.0),
    "convnet": ("99.25 %", 99.25),
    "cnn3": ("98.55 %", 98.55),
    "cnn_basic": ("~91-93 % Fashion", 91.0),
    "cnn_deep": ("did not beat cnn_basic", None),
    "cnn_dropout": ("> 99 %", 99.0),
}
# Our presets beyond the references, with the goals they were built for.
GOALS = {
    "fast": (">= 99.0 % (speed preset)", 99.0),
    "fast_fashion": (">= 92.0 % (speed preset)", 92.0),
    "resnet_mnist": (">= 99.6 % (goal)", 99.6),
    "resnet_fashion": (">= 94.0 % (goal)", 94.0),
}
TARGETS = {**REPORTED, **GOALS}
TABLE_NOTE = (
    "Regenerate with `python experiments/reproduce.py PRESET ... --seeds=0 --seeds=1 --seeds=2`. "
    "The `on` column says where each row trained; train time is the fastest seed's (the others "
    "may have shared the machine with other jobs).\n\n"
)
AUGMENT_STRENGTHS = ("rotation", "translate", "zoom", "shear", "flip", "cutout")


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the command's flags in ``flag_values`` (``flags.FLAGS`` when run as a script)."""
    flags.DEFINE_multi_integer(
        "seeds", [0], "A seed to train (repeat for several).", flag_values=flag_values
    )
    flags.DEFINE_string(
        "runs", "runs/reproduce", "Root folder of the run directories.", flag_values=flag_values
    )
    flags.DEFINE_integer("jobs", 1, "Runs trained at once (accelerators).", flag_values=flag_values)
    flags.DEFINE_boolean(
        "tables_only",
        False,
        "Rewrite the tables from the JSON; no training.",
        flag_values=flag_values,
    )


def check_arguments(presets: list[str], jobs: int) -> None:
    """Raises ConfigError for an unknown preset or a ``jobs`` below 1."""
    unknown = [preset for preset in presets if preset not in configs.preset_names()]
    if unknown:
        raise ConfigError(
            f"unknown preset {', '.join(map(repr, unknown))} "
            f"(choose from {', '.join(configs.preset_names())})"
        )
    if jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {jobs}")


def run_preset(preset: str, seed: int, runs: Path, log_to_file: bool = False) -> dict:
    """Trains one preset in a subprocess (fresh process: honest timings) unless already done.

    With ``log_to_file`` the run's output goes to ``RUNS/PRESET-seedS.log`` instead of the
    terminal (several runs at once), and JAX allocates GPU memory as needed instead of taking
    most of the card up front, so the runs can share one accelerator.
    """
    workdir = runs / f"{preset}-seed{seed}"
    metrics_file = workdir / "metrics.json"
    if not metrics_file.exists():
        command = [
            sys.executable,
            "-m",
            "flaxmnist.train",
            f"--config={preset}",
            f"--config.seed={seed}",
            f"--workdir={workdir}",
        ]
        if log_to_file:
            runs.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
            with open(runs / f"{preset}-seed{seed}.log", "w") as log:
                subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
        else:
            subprocess.run(command, check=True)
    return json.loads(metrics_file.read_text())


def run_all(presets: list[str], seeds: list[int], runs: Path, jobs: int) -> dict[str, list[dict]]:
    """Every (preset, seed) run's metrics, ``jobs`` runs at a time."""
    pairs = [(preset, seed) for preset in presets for seed in seeds]
    if jobs == 1:
        results = [run_preset(preset, seed, runs) for preset, seed in pairs]
    else:
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            futures = [pool.submit(run_preset, p, s, runs, True) for p, s in pairs]
            results = [future.result() for future in futures]
    by_preset: dict[str, list[dict]] = {preset: [] for preset in presets}
    for (preset, _), metrics in zip(pairs, results, strict=True):
        by_preset[preset].append(metrics)
    return by_preset


def recipe(preset: str) -> str:
    """A short description of a preset's training recipe."""
    config = importlib.import_module(f"flaxmnist.configs.{preset}").get_config()
    momentum = f" momentum {config.momentum:g}" if config.momentum else ""
    nesterov = " nesterov" if config.momentum and config.nesterov else ""
    validation = "" if config.validation_fraction else ", all 60k train images"
    if config.early_stopping.patience:
        validation += f", early stopping (patience {config.early_stopping.patience}, best weights)"
    schedule = "" if config.schedule == "constant" else f" {config.schedule}"
    augmented = ", augmented" if any(config.augment[k] for k in AUGMENT_STRENGTHS) else ""
    return (
        f"{config.dataset}, {config.optimizer} lr {config.learning_rate:g}{schedule}{momentum}"
        f"{nesterov}, batch {config.batch_size}, {'<= ' if config.early_stopping.patience else ''}"
        f"{config.num_epochs} epochs{validation}{augmented}"
    )


def summarize(preset: str, results: list[dict]) -> dict:
    """Mean ± std of test accuracy over seeds, and the fastest seed's train time."""
    accuracies = [100 * r["test_accuracy"] for r in results]
    return {
        "preset": preset,
        "params": results[0]["num_params"],
        "recipe": recipe(preset),
        "reported": TARGETS.get(preset, ("-", None))[0],
        "reported_min": TARGETS.get(preset, ("-", None))[1],
        "accuracy_mean": statistics.mean(accuracies),
        "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
        "seeds": len(results),
        # The fastest seed: the least disturbed by other jobs on a shared machine.
        "train_time_s": min(r["train_time_s"] for r in results),
        "total_time_s": min(r["total_time_s"] for r in results),
        "device": device_name(results[0]),
    }


def device_name(metrics: dict) -> str:
    """Where a run trained: this CPU and its cores, or the accelerator's device kind."""
    if metrics.get("backend", "cpu") == "cpu":
        return machine_name()
    return f"{metrics['device_kind']} ({metrics['backend']})"


def markdown_table(rows: list[dict]) -> str:
    """The reproduction table in markdown."""
    lines = [
        "| preset | params | recipe | reported | ours (test acc.) | seeds "
        "| train time (fastest seed) | on | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = (
            "-"
            if r["reported_min"] is None
            else ("yes" if r["accuracy_mean"] >= r["reported_min"] else "no")
        )
        lines.append(
            f"| `{r['preset']}` | {r['params']:,} | {r['recipe']} | {r['reported']} | "
            f"{accuracy(r)} | {r['seeds']} | {r['train_time_s']:.0f} s | {r['device']} | {met} |"
        )
    return "\n".join(lines)


def accuracy(row: dict) -> str:
    """Mean test accuracy, with the spread over seeds when there are several."""
    spread = f" ± {row['accuracy_std']:.2f}" if row["seeds"] > 1 else ""
    return f"{row['accuracy_mean']:.2f} %{spread}"


def presets_table(rows: list[dict]) -> str:
    """The README's one-row-per-preset summary (mean test accuracy and the fastest seed's time)."""
    lines = [
        "| preset | params | dataset | test accuracy (mean of seeds) | train time | on |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['preset']}` | {r['params']:,} | {r['recipe'].split(',', 1)[0]} | "
            f"{accuracy(r)} ({r['seeds']}) | {r['train_time_s']:.0f} s | {r['device']} |"
        )
    return "\n".join(lines)


def write_readme_table(table: str) -> None:
    """Replaces the README's ``presets`` table with ``table``."""
    write_between_markers(README, "presets", table, writer="experiments/reproduce.py")


def write_tables(rows: list[dict]) -> None:
    """Writes reproduction.{json,md} and the README's presets table."""
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "reproduction.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS_DIR / "reproduction.md").write_text(TABLE_NOTE + markdown_table(rows) + "\n")
    write_readme_table(presets_table(rows))


def reproduce(presets: list[str], flag_values: flags.FlagValues) -> None:
    """Trains ``presets`` (unless ``--tables_only``), writes the tables and prints the table.

    Args:
      presets: the presets named on the command line (none: every reference preset).
      flag_values: the parsed flags.
    """
    presets = [] if flag_values.tables_only else presets or list(REPORTED)
    runs = Path(flag_values.runs)
    with errors.reported(runs):
        check_arguments(presets, flag_values.jobs)
        json_file = RESULTS_DIR / "reproduction.json"
        rows = (
            {r["preset"]: r for r in json.loads(json_file.read_text())}
            if json_file.exists()
            else {}
        )
        try:
            trained = run_all(presets, flag_values.seeds, runs, flag_values.jobs)
        except subprocess.CalledProcessError as error:
            errors.exit_with_error(
                f"a training run failed (exit {error.returncode}): {' '.join(error.cmd[3:])}",
                errors.EXIT_INTERNAL_ERROR,
            )
        for preset, results in trained.items():
            rows[preset] = summarize(preset, results)
        ordered = [rows[name] for name in TARGETS if name in rows]
        write_tables(ordered)
    console.say(markdown_table(ordered))


def main(argv: list[str]) -> None:
    """Reproduces the presets named on the command line."""
    reproduce(argv[1:], flags.FLAGS)


if __name__ == "__main__":
    errors.exit_on_signals()
    define_flags(flags.FLAGS)
    cli.run(main, positional="presets")
