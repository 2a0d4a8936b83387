"""The ``race`` section: launch-to-exit wall time to >= 99 % MNIST test accuracy, fairly.

    python experiments/bench/benchmark.py --sections=race --seeds=10,11,12,13,14
    python experiments/bench/benchmark.py --sections=race --smoke --seeds=10   # commands work?
    python experiments/bench/contestant.py --contestant=torch_fast --seed=10     # one run

Contestants (:data:`CONTESTANTS`; ``--contestants`` picks, :data:`DEFAULT_CONTESTANTS` by
default): flaxmnist's ``python -m flaxmnist.train --config=fast``; the same ``fast`` recipe
(model, schedule, batch, epochs: ``recipes.py``) in Keras 3 and in PyTorch, so the framework is
measured apart from the recipe; and the published recipes a user would otherwise run, Keras's
"simple MNIST convnet" and pytorch/examples ``mnist``, which test after every epoch and stop at
the first one reaching 99 % (test time counted). Keras runs with XLA and
``steps_per_execution`` (``_default``: ``compile()``'s defaults), PyTorch with ``torch.compile``
(``_eager``: without), so both the best and the default settings can be shown. Keras's XLA
costs more than it saves on these convolutions (compare the ``keras_fast`` and
``keras_fast_default`` rows of ``results/benchmark.md``), so the Keras reference runs at its
defaults unless ``--contestants=keras_reference`` asks for XLA.

Before anything is timed, every ``torch.compile`` contestant's compiled gradients are checked
against eager ones on one batch (:func:`torch_recipe.compiled_gradient_error`, an untimed
process); a contestant whose gradients differ is not timed and its row says why.

Every run is a fresh process (``contestant.py``, or flaxmnist's CLI) with empty
compilation caches of its own (JAX's, Inductor's), timed from launch to exit from outside; its
peak RSS comes from ``os.wait4``. The runs take turns: every seed runs each contestant once, the
order rotating from seed to seed (A B C, B C A, ...), so a neighbour's load spreads over all.
The seeds default to 10-14: the ``fast`` preset was tuned on a validation split with seeds 0-3
(docs/models.md) and never saw these. Medians over the seeds; GFLOP/s is XLA's count of the
model's training FLOPs per step (``flax_timing.training_flops``) times the steps of an epoch over
s/epoch (the epochs after the first, which compiles), against the measured matmul peak.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import end_to_end
import measure
import recipes

from flaxmnist.cpu import cpu_model

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTESTANT_WORKER = Path(__file__).resolve().with_name("contestant.py")
WARM_UP_SEED_OFFSET = 1000  # the seed of the untimed run that fills a warm contestant's cache


@dataclasses.dataclass(frozen=True)
class Contestant:
    """A framework running a recipe with some settings."""

    framework: str  # flaxmnist | keras | torch
    recipe: str  # a key of recipes.RECIPES
    settings: str  # flaxmnist: cli; keras: xla | default; torch: compile | eager


CONTESTANTS = {
    "flaxmnist_fast": Contestant("flaxmnist", "fast", "cli"),
    "flaxmnist_fast_warm": Contestant("flaxmnist", "fast", "warm"),
    "keras_fast": Contestant("keras", "fast", "xla"),
    "torch_fast": Contestant("torch", "fast", "compile"),
    "torch_fast_eager": Contestant("torch", "fast", "eager"),
    "keras_fast_default": Contestant("keras", "fast", "default"),
    "keras_reference": Contestant("keras", "keras_reference", "xla"),
    "torch_reference": Contestant("torch", "torch_reference", "compile"),
    "keras_reference_default": Contestant("keras", "keras_reference", "default"),
    "torch_reference_eager": Contestant("torch", "torch_reference", "eager"),
}
# Both settings of each framework; the Keras reference with XLA (several times slower than at its
# defaults) only when asked for.
DEFAULT_CONTESTANTS = (
    "flaxmnist_fast",
    "flaxmnist_fast_warm",
    "keras_fast",
    "torch_fast",
    "torch_fast_eager",
    "keras_fast_default",
    "keras_reference_default",
    "torch_reference",
    "torch_reference_eager",
)
SETTINGS_LABELS = {
    "cli": "python -m flaxmnist.train --config=fast",
    "warm": "the same, its compilation cache filled by an untimed run",
    "xla": "jit_compile, steps_per_execution",
    "default": "compile() defaults",
    "compile": "torch.compile",
    "eager": "eager",
}
RECIPE_LABELS = {
    "fast": "fast (convnet_fast, Adam 8e-3 warm-up + cosine, batch 128, 2 epochs)",
    "keras_reference": "Keras simple convnet (Adam 1e-3, batch 128, val split 0.1, <= 15 epochs)",
    "torch_reference": "pytorch/examples mnist (Adadelta 1.0, StepLR 0.7, batch 64, <= 14 epochs)",
}


# ------------------------------------------------------------------------------------ driver


def interleaved(contestants: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """The order of the runs: each seed runs every contestant, the order rotating per seed."""
    order = []
    for turn, seed in enumerate(seeds):
        start = turn % len(contestants)
        order += [(name, seed) for name in contestants[start:] + contestants[:start]]
    return order


def flaxmnist_overrides(seed: int, smoke: bool) -> list[str]:
    """The config overrides of a flaxmnist contestant's run."""
    return [f"--config.seed={seed}", *(["--config.num_epochs=1"] if smoke else [])]


def contestant_command(
    name: str, seed: int, smoke: bool, tmp: Path, steps_per_execution: int
) -> tuple[list[str], dict[str, str]]:
    """The command line of one run, and the environment settings that keep its caches fresh."""
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor")}
    if CONTESTANTS[name].framework == "flaxmnist":
        overrides = flaxmnist_overrides(seed, smoke)
        return end_to_end.fast_command(tmp / "run", tmp / "cache", *overrides), env
    command = [sys.executable, str(CONTESTANT_WORKER), f"--contestant={name}", f"--seed={seed}"]
    command += [f"--smoke={smoke}", f"--keras_steps_per_execution={steps_per_execution}"]
    return command, env


def flaxmnist_result(workdir: Path) -> dict:
    """A flaxmnist run's history in the contestants' form (from its metrics.json, history.json)."""
    metrics = json.loads((workdir / "metrics.json").read_text())
    history = json.loads((workdir / "history.json").read_text())
    epochs = [recipes.epoch_record(r["epoch"], r["epoch_time_s"], None) for r in history]
    epochs[-1]["test_accuracy"] = metrics["test_accuracy"]
    return {
        "epochs": epochs,
        "steps_per_epoch": metrics["steps"] // metrics["epochs_completed"],
        "first_chunk_s": metrics["time_to_first_chunk_s"],
        "test_accuracy": metrics["test_accuracy"],
    }


def worker_result(out: dict) -> dict:
    """The result of a finished contestant worker (:func:`measure.measured_run`'s ``out``)."""
    return measure.worker_result(out["returncode"], out["stdout"], out["stderr"])


def gradient_exclusions(contestants: list[str]) -> dict[str, str]:
    """Checks each ``torch.compile`` contestant's gradients; the ones not to time, and why."""
    excluded = {}
    for name in contestants:
        if CONTESTANTS[name] != Contestant("torch", CONTESTANTS[name].recipe, "compile"):
            continue
        command = [sys.executable, str(CONTESTANT_WORKER), f"--contestant={name}"]
        out = measure.measured_run([*command, "--check_gradients"], cwd=REPO_ROOT)
        result = measure.logged(worker_result(out))
        if "error" in result:
            excluded[name] = "the gradient check failed: " + result["error"].splitlines()[-1]
        elif reason := recipes.wrong_gradients(result["gradient_error"]):
            excluded[name] = reason
    return excluded


def run_contestant(name: str, seed: int, smoke: bool, steps_per_execution: int) -> dict:
    """One run in a fresh process and temporary directory: wall, peak RSS and its result.

    A ``warm`` contestant's compilation cache is filled first by an untimed run of another seed
    (:data:`WARM_UP_SEED_OFFSET` added): the programs are the same, the seed a runtime value.
    """
    with tempfile.TemporaryDirectory(prefix="flaxmnist-race-") as tmp:
        command, env = contestant_command(name, seed, smoke, Path(tmp), steps_per_execution)
        if CONTESTANTS[name].settings == "warm":
            overrides = flaxmnist_overrides(seed + WARM_UP_SEED_OFFSET, smoke)
            fill = end_to_end.fast_command(Path(tmp) / "warm-up", Path(tmp) / "cache", *overrides)
            measure.measured_run(fill, env={**os.environ, **env}, cwd=REPO_ROOT)
        out = measure.measured_run(command, env={**os.environ, **env}, cwd=REPO_ROOT)
        run = {"contestant": name, "seed": seed, "wall_s": out.get("wall_s")}
        run["peak_rss_mb"] = out.get("peak_rss_mb")  # both missing if the launcher failed
        if CONTESTANTS[name].framework == "flaxmnist" and not out["returncode"]:
            return {**run, **flaxmnist_result(Path(tmp) / "run")}
    if CONTESTANTS[name].framework == "flaxmnist":
        return {**run, "error": out["stderr"][-500:]}
    return {**run, **worker_result(out)}


def steady_epoch_s(run: dict) -> float:
    """The median training seconds of a run's epochs after the first (the first if alone)."""
    times = [epoch["train_s"] for epoch in run["epochs"]]
    return statistics.median(times[1:] or times)


def contestant_summary(runs: list[dict], flops_per_step: float, peak_gflops: float) -> dict:
    """Medians over one contestant's runs (failed runs counted, left out of the medians).

    Returns:
      ``runs``, ``failed``, ``reached`` (runs whose last test accuracy >= 99 %), ``wall_s``,
      ``epochs``, ``epoch_s`` (:func:`steady_epoch_s`), ``first_epoch_s``, ``gflops``,
      ``peak_fraction``, ``peak_rss_mb``, ``test_accuracy``, ``min_test_accuracy``; or ``runs``,
      ``failed`` and the first ``error`` when no run succeeded.
    """
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"runs": len(runs), "failed": len(runs), "error": runs[0]["error"]}
    epoch_s = statistics.median(steady_epoch_s(r) for r in ok)
    steps = statistics.median(r["steps_per_epoch"] for r in ok)
    achieved = flops_per_step * steps / epoch_s / 1e9
    accuracies = [r["test_accuracy"] for r in ok]
    return {
        "runs": len(runs),
        "failed": len(runs) - len(ok),
        "reached": sum(a >= recipes.TARGET_ACCURACY for a in accuracies),
        "wall_s": statistics.median(r["wall_s"] for r in ok),
        "epochs": statistics.median(len(r["epochs"]) for r in ok),
        "epoch_s": epoch_s,
        "first_epoch_s": statistics.median(r["epochs"][0]["train_s"] for r in ok),
        "gflops": achieved,
        "peak_fraction": achieved / peak_gflops,
        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in ok),
        "test_accuracy": statistics.median(accuracies),
        "min_test_accuracy": min(accuracies),
    }


def race_summary(runs: list[dict], flops: dict[str, float], peak_gflops: float) -> dict:
    """:func:`contestant_summary` per contestant, in the order they first ran.

    Each row also gets ``vs_flaxmnist`` (its median wall over ``flaxmnist_fast``'s) when that
    contestant succeeded. ``flops`` maps a recipe name to its training FLOPs per step.
    """
    summary = {}
    for name in dict.fromkeys(r["contestant"] for r in runs):
        mine = [r for r in runs if r["contestant"] == name]
        flops_per_step = flops.get(CONTESTANTS[name].recipe, 0.0)
        summary[name] = contestant_summary(mine, flops_per_step, peak_gflops)
    base = summary.get("flaxmnist_fast", {}).get("wall_s")
    for row in summary.values():
        if base and "wall_s" in row:
            row["vs_flaxmnist"] = row["wall_s"] / base
    return summary


def recipe_flops(contestants: list[str]) -> dict[str, float]:
    """XLA's training FLOPs per step of each recipe the contestants run (its model and batch)."""
    import flax_timing  # JAX, loaded only when the race runs

    names = dict.fromkeys(CONTESTANTS[name].recipe for name in contestants)
    return {
        name: flax_timing.training_flops(recipes.RECIPES[name].model, recipes.RECIPES[name].batch)
        for name in names
    }


def race_section(
    contestants: list[str],
    seeds: list[int],
    smoke: bool = False,
    steps_per_execution: int = recipes.KERAS_STEPS_PER_EXECUTION,
) -> dict:
    """Runs the race: the ``race`` entry of the results (machine, every run, the summary)."""
    machine = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "matmul_gflops": measure.matmul_peak_gflops(),
        "seeds": seeds,
        "smoke": smoke,
        "keras_steps_per_execution": steps_per_execution,
    }
    flops = recipe_flops(contestants)
    excluded = gradient_exclusions(contestants)
    timed = [name for name in contestants if name not in excluded]
    runs = [
        measure.logged(run_contestant(name, seed, smoke, steps_per_execution))
        for name, seed in interleaved(timed, seeds)
    ]
    summary = race_summary(runs, flops, machine["matmul_gflops"])
    summary.update({name: {"excluded": why} for name, why in excluded.items()})
    return {"machine": machine, "flops_per_step": flops, "runs": runs, "summary": summary}


# ------------------------------------------------------------------------------------ report


def label(name: str) -> tuple[str, str]:
    """The recipe and settings cells of contestant ``name``."""
    contestant = CONTESTANTS[name]
    return RECIPE_LABELS[contestant.recipe], SETTINGS_LABELS[contestant.settings]


def summary_row(name: str, row: dict) -> str:
    """One contestant's row of the race table."""
    recipe, settings = label(name)
    head = f"| {name} | {recipe} | {settings} |"
    if "excluded" in row:
        return f"{head} not timed: {row['excluded']} | | | | | | | | | |"
    if "error" in row:
        return f"{head} failed ({row['failed']} of {row['runs']}) | | | | | | | | | |"
    ratio = f"{row['vs_flaxmnist']:.2f}x" if "vs_flaxmnist" in row else "-"
    return (
        f"{head} {row['reached']}/{row['runs']} | {row['wall_s']:.1f} | {ratio} | "
        f"{row['epochs']:g} | {row['epoch_s']:.1f} | {row['first_epoch_s']:.1f} | "
        f"{row['gflops']:.1f} ({row['peak_fraction']:.0%}) | {row['peak_rss_mb']:.0f} | "
        f"{100 * row['test_accuracy']:.2f} / {100 * row['min_test_accuracy']:.2f} % |"
    )


def race_markdown(section: dict) -> str:
    """The race's caption and table."""
    machine = section["machine"]
    seeds = ", ".join(map(str, machine["seeds"]))
    warm_note = (
        " (but `flaxmnist_fast_warm`'s, filled by an untimed run of seed S + "
        f"{WARM_UP_SEED_OFFSET})"
        if "flaxmnist_fast_warm" in section["summary"]
        else ""
    )
    lines = [
        "### Race to 99 % test accuracy: launch to exit, fresh processes, interleaved",
        "",
        f"{machine['cpu']}, {machine['cores']} cores, matmul peak "
        f"{machine['matmul_gflops']:.0f} GFLOP/s; seeds {seeds}, the contestants taking turns, "
        f"each run a fresh process with empty compilation caches{warm_note}; medians over the "
        "seeds. "
        "Wall s: launch to exit (the references stop after the first epoch whose test "
        "accuracy reaches 99 %). s/epoch: training only, the epochs after the first (which "
        "compiles); GFLOP/s: XLA's training FLOPs of the model's step x steps per epoch / "
        "s/epoch, and its share of the matmul peak."
        + (" **Smoke run: tiny data, not a measurement.**" if machine.get("smoke") else ""),
        "",
        "| contestant | recipe | settings | reached 99 % | wall s | vs flaxmnist | epochs "
        "| s/epoch | first epoch s | GFLOP/s (of peak) | peak RSS MB "
        "| test accuracy median / min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [summary_row(name, row) for name, row in section["summary"].items()]
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    """The race section as markdown ("" when it has not run)."""
    return race_markdown(results["race"]) if "race" in results else ""
