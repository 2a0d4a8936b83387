"""The ``models`` section: every (framework, model) pair timed in a fresh worker process.

Each pair runs ``pair_worker.py`` once (:func:`run_pair`), one after another, on the vendored
MNIST arrays in memory, with Adam (lr 1e-3) and sparse cross-entropy at the model's reference
batch size (``recipes.BENCHMARK_MODELS``); the Keras and PyTorch models are the twins
``keras_recipe`` and ``torch_recipe`` build from ``recipes.layers``. Seconds per epoch are the
median time per step times the steps of a 60,000-image epoch (:func:`pair_timings`); the table
(:func:`table`) compares each row with the faster of each framework's variants. The ``batch``
and ``tiling`` sections (``scaling.py``) run their points through :func:`run_pair` too.

Frameworks (:data:`FRAMEWORK_SETTINGS`): ``flaxmnist`` (device-resident ``lax.scan`` path),
``flaxmnist_tfds`` (tf.data streaming path), ``keras`` (Keras 3 on TensorFlow, ``model.fit``
with ``jit_compile=True`` and ``--keras_steps_per_execution``), ``keras_default`` (the same at
``compile()``'s defaults: no XLA, one step per call), ``torch`` (``torch.compile``) and
``torch_eager`` (eager PyTorch).
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import measure
import numpy as np
import recipes

from flaxmnist.cpu import cpu_model, machine_name

PAIR_WORKER = Path(__file__).resolve().with_name("pair_worker.py")
FRAMEWORK_SETTINGS = {
    "flaxmnist": "lax.scan, device-resident",
    "flaxmnist_tfds": "tf.data streaming",
    "keras": "jit_compile, {spe} steps/execution",
    "keras_default": "compile() defaults",
    "torch": "torch.compile",
    "torch_eager": "eager",
}
FRAMEWORKS = tuple(FRAMEWORK_SETTINGS)
# The reference columns: each framework's faster variant ("where it pays").
REFERENCES = {"Keras": ("keras", "keras_default"), "PyTorch": ("torch", "torch_eager")}
QUICK_MODELS = ("dense", "cnn_simple", "convnet")
OLD_SETTINGS = "old: defaults, eager; fit per 200 steps"  # results from before the settings


def worker_command(framework: str, model: str, **flag_values) -> list[str]:
    """The command line of one (framework, model) worker (``pair_worker.py``)."""
    command = [sys.executable, str(PAIR_WORKER), f"--framework={framework}", f"--model={model}"]
    return command + [f"--{flag}={value}" for flag, value in flag_values.items()]


def run_pair(
    framework: str,
    model: str,
    steps: int,
    repeats: int,
    batch: int | None = None,
    tile: int = 1,
    **worker_flags,
) -> dict:
    """Runs one worker subprocess and summarises its timings.

    ``batch`` defaults to the model's reference batch; ``tile`` repeats the training set (flaxmnist
    frameworks only); ``worker_flags`` go to the worker (``smoke``,
    ``keras_steps_per_execution``). ``timed_s`` is the median time of one timed run (``steps``
    steps; Keras: a whole epoch).
    """
    batch = batch or recipes.BENCHMARK_MODELS[model]
    pair = {"framework": framework, "model": model, "batch": batch, "tile": tile}
    flag_values = {"batch": batch, "tile": tile, "steps": steps, "repeats": repeats}
    raw = measure.run_worker(worker_command(framework, model, **flag_values, **worker_flags))
    if "error" in raw:
        return {**pair, "error": raw["error"]}
    return {**pair, **pair_timings(raw, batch)}


def pair_timings(raw: dict, batch: int) -> dict:
    """A worker's raw result (``run_s`` of ``run_steps`` steps each) as per-epoch figures."""
    timed_s = statistics.median(raw["run_s"])
    step_s = timed_s / raw["run_steps"]
    return {
        "epoch_s": step_s * (recipes.TRAIN_EXAMPLES // batch),
        "examples_per_s": batch / step_s,
        "startup_s": raw["startup_s"],
        "peak_rss_mb": raw["peak_rss_mb"],
        "flops_per_step": raw["flops_per_step"],
        "step_ms": 1e3 * step_s,
        "timed_s": timed_s,
    }


def models_section(
    models: list[str],
    frameworks: list[str],
    steps: int,
    repeats: int,
    keras_steps_per_execution: int = recipes.KERAS_STEPS_PER_EXECUTION,
    smoke: bool = False,
) -> dict:
    """Every (framework, model) pair: the ``machine`` and ``rows`` entries of the results."""
    machine = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "matmul_gflops": measure.matmul_peak_gflops(),
        "steps": steps,
        "repeats": repeats,
        "keras_steps_per_execution": keras_steps_per_execution,
        "smoke": smoke,
    }
    worker_flags = {"keras_steps_per_execution": keras_steps_per_execution, "smoke": smoke}
    rows = [
        measure.logged(run_pair(framework, model, steps, repeats, **worker_flags))
        for model in models
        for framework in frameworks
    ]
    return {"machine": machine, "rows": rows}


# ------------------------------------------------------------------------------------ report


def framework_settings(framework: str, machine: dict) -> str:
    """The settings cell of ``framework``'s rows (results older than the settings: "old")."""
    if "keras_steps_per_execution" not in machine and framework in ("keras", "torch"):
        return OLD_SETTINGS
    spe = machine.get("keras_steps_per_execution", recipes.KERAS_STEPS_PER_EXECUTION)
    return FRAMEWORK_SETTINGS.get(framework, "").format(spe=spe)


def failure(row: dict) -> str:
    """The cell of a row without timings: why it was not timed, or "failed"."""
    reason = row.get("error", "")
    return reason if reason.startswith("not timed") else "failed"


def best_epoch_s(by_pair: dict, model: str, variants: tuple[str, ...]) -> float | None:
    """The fastest seconds per epoch of ``model`` among a framework's ``variants`` (None: none)."""
    times = [by_pair[(v, model)]["epoch_s"] for v in variants if (v, model) in by_pair]
    return min(times) if times else None


def caption(machine: dict) -> str:
    """The line above the models table: the machine and how the rows were timed."""
    timing = (
        f"{machine['steps']} timed steps x {machine['repeats']} repeats (Keras: "
        f"{machine['repeats']} whole epochs in one fit, after a warm-up epoch)"
    )
    return (
        f"Measured on {machine['cpu']}, {machine['cores']} cores, matmul peak "
        f"{machine['matmul_gflops']:.0f} GFLOP/s; {timing}, medians; startup: process start to "
        "the first compiled step done. vs Keras / vs PyTorch: the faster of each framework's "
        "settings over the row's s/epoch."
    )


def model_rows(model: str, rows: list[dict], machine: dict) -> list[str]:
    """The table rows of ``model``: one per framework that ran it, in :data:`FRAMEWORKS` order."""
    by_pair = {(r["framework"], r["model"]): r for r in rows if "error" not in r}
    flops = by_pair.get(("flaxmnist", model), {}).get("flops_per_step", 0.0)
    best = [best_epoch_s(by_pair, model, variants) for variants in REFERENCES.values()]
    ran = {r["framework"]: r for r in rows if r["model"] == model}
    lines = []
    for framework in [f for f in FRAMEWORKS if f in ran]:
        cells = f"| {model} | {recipes.BENCHMARK_MODELS[model]} | {framework} | "
        cells += f"{framework_settings(framework, machine)} |"
        r = by_pair.get((framework, model))
        if r is None:
            lines.append(f"{cells} {failure(ran[framework])} | | | | | | |")
            continue
        ratios = [f"{b / r['epoch_s']:.2f}x" if b else "-" for b in best]
        lines.append(
            f"{cells} {r['epoch_s']:.2f} | {r['examples_per_s']:,.0f} | {r['startup_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {measure.gflops(flops, r['step_ms']):.1f} | "
            f"{' | '.join(ratios)} |"
        )
    return lines


def table(rows: list[dict], machine: dict) -> str:
    """The results as a markdown table with per-model speed-up ratios.

    The ratios divide the faster of a framework's variants (Keras with XLA or at its defaults,
    PyTorch compiled or eager) by the row's seconds per epoch.
    """
    lines = [
        caption(machine),
        "",
        "| model | batch | framework | settings | s/epoch | examples/s | startup s | peak RSS MB "
        "| GFLOP/s | vs Keras | vs PyTorch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        lines += model_rows(model, rows, machine)
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    """The models section as markdown ("" when it has not run)."""
    return table(results["rows"], results["machine"]) if results.get("rows") else ""


def chart(rows: list[dict], path: Path) -> None:
    """Grouped bars of seconds per epoch, one group per model."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4.5), layout="constrained")
    ax = figure.subplots()
    by_pair = {(r["framework"], r["model"]): r["epoch_s"] for r in rows if "error" not in r}
    models = list(dict.fromkeys(r["model"] for r in rows))
    frameworks = [f for f in FRAMEWORKS if any(r["framework"] == f for r in rows)]
    x = np.arange(len(models))
    width = 0.8 / len(frameworks)
    for i, framework in enumerate(frameworks):
        heights = [by_pair.get((framework, m), np.nan) for m in models]
        ax.bar(x - 0.4 + (i + 0.5) * width, heights, width, label=framework)
    ax.set_xticks(x, [f"{m}\n(batch {recipes.BENCHMARK_MODELS[m]})" for m in models])
    ax.set_ylabel("seconds per epoch (lower is better)")
    ax.set_yscale("log")
    ax.set_title(f"Training speed on {machine_name()}")
    ax.legend()
    figure.savefig(path, dpi=110)
