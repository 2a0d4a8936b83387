"""Benchmark sections timed from process launch: time to 99 % test accuracy, cold vs warm start.

Both launch real training processes and time them from the outside, so interpreter start-up,
imports, data loading and XLA compilation all count:

* ``time99`` (the former method, replaced by ``race.py``'s interleaved, multi-seed race at
  each framework's best settings): ``python -m flaxmnist.train --config=fast`` with a fresh,
  empty compilation cache, launch to exit, against the Keras reference recipe (the "simple
  MNIST convnet": Adam lr 1e-3, batch 128, validation_split 0.1) at ``compile()``'s defaults,
  trained epoch by epoch in a subprocess of this file until the first epoch whose test accuracy
  reaches 99 % (at most 15 epochs), launch to that evaluation; one run each.
* ``startup``: one epoch of the ``fast`` preset with one training step per chunk, so the run's
  ``time_to_first_chunk_s`` is process start to the first step done; first with an empty
  compilation cache (cold), then again with the cache that run filled (warm).

Work directories and caches live in a temporary directory that is deleted afterwards. Run through
``benchmark.py --sections=time99,startup``; ``python end_to_end.py`` is the Keras worker.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchmark as bench
import ml_collections

TARGET_ACCURACY = 0.99
KERAS_MAX_EPOCHS = 15
KERAS_BATCH = 128
REPO_ROOT = Path(__file__).resolve().parents[2]
METRIC_KEYS = ("test_accuracy", "epochs_completed", "time_to_first_chunk_s", "total_time_s")


# ------------------------------------------------------------------------------------ flaxmnist


def fast_command(workdir: Path, cache_dir: Path, *overrides: str) -> list[str]:
    """The command line of ``python -m flaxmnist.train --config=fast`` in ``workdir``."""
    return [
        sys.executable,
        "-m",
        "flaxmnist.train",
        "--config=fast",
        f"--workdir={workdir}",
        f"--config.compilation_cache_dir={cache_dir}",
        *overrides,
    ]


def run_fast(workdir: Path, cache_dir: Path, *overrides: str) -> dict:
    """Runs ``python -m flaxmnist.train --config=fast`` to the end.

    Returns ``wall_s`` (launch to exit) and a few fields of its metrics.json, or ``{"error": ...}``.
    """
    command = fast_command(workdir, cache_dir, *overrides)
    begin = time.perf_counter()
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=bench.WORKER_TIMEOUT_S, cwd=REPO_ROOT
    )
    wall_s = time.perf_counter() - begin
    if out.returncode:
        return {"error": out.stderr[-500:]}
    metrics = json.loads((workdir / "metrics.json").read_text())
    return {"wall_s": wall_s, **{key: metrics[key] for key in METRIC_KEYS}}


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
    """Training steps in one MNIST epoch of ``config`` (its validation split held out)."""
    held_out = round(config.validation_fraction * bench.TRAIN_EXAMPLES)
    return (bench.TRAIN_EXAMPLES - held_out) // config.batch_size


def flax_time_to_99() -> dict:
    """The ``fast`` preset from launch to exit, with a cold compilation cache."""
    with tempfile.TemporaryDirectory(prefix="flaxmnist-bench-") as tmp:
        run = run_fast(Path(tmp) / "run", Path(tmp) / "cache")
    return {**run, "reached": run.get("test_accuracy", 0.0) >= TARGET_ACCURACY}


def startup(warm_runs: int) -> dict:
    """Process start to the first training step, cold and then ``warm_runs`` times warm."""
    from flaxmnist.configs import fast

    steps = steps_per_epoch(fast.get_config())
    overrides = ("--config.num_epochs=1", f"--config.chunks_per_epoch={steps}")
    with tempfile.TemporaryDirectory(prefix="flaxmnist-bench-") as tmp:
        cache = Path(tmp) / "cache"
        runs = [run_fast(Path(tmp) / f"run{i}", cache, *overrides) for i in range(1 + warm_runs)]
    return {"machine": bench.machine_name(), **startup_summary(runs)}


def startup_summary(runs: list[dict]) -> dict:
    """Cold (the first run) and warm (median of the others) start-up and launch-to-exit times."""
    errors = [run["error"] for run in runs if "error" in run]
    if errors:
        return {"error": errors[0]}
    warm = runs[1:]
    return {
        "cold_first_step_s": runs[0]["time_to_first_chunk_s"],
        "warm_first_step_s": statistics.median(r["time_to_first_chunk_s"] for r in warm),
        "warm_first_step_runs_s": [r["time_to_first_chunk_s"] for r in warm],
        "cold_wall_s": runs[0]["wall_s"],
        "warm_wall_s": statistics.median(r["wall_s"] for r in warm),
    }


# ------------------------------------------------------------------------------------ Keras


def keras_worker(max_epochs: int) -> dict:
    """Trains the Keras reference convnet one epoch at a time until test accuracy >= 99 %."""
    (x, y), (test_x, test_y) = (bench.mnist_arrays(split) for split in ("train", "test"))
    x, test_x = x.astype("float32") / 255.0, test_x.astype("float32") / 255.0
    model = bench.compiled_keras_model("convnet")
    epochs = []
    for epoch in range(1, max_epochs + 1):
        model.fit(x, y, batch_size=KERAS_BATCH, epochs=1, validation_split=0.1, verbose=0)
        accuracy = float(model.evaluate(test_x, test_y, verbose=0)[1])
        epochs.append({"epoch": epoch, "test_accuracy": accuracy, "evaluated_at": time.time()})
        if accuracy >= TARGET_ACCURACY:
            break
    return {"epochs": epochs}


def keras_time_to_99(max_epochs: int = KERAS_MAX_EPOCHS) -> dict:
    """The Keras recipe from subprocess launch to its first epoch at >= 99 % test accuracy."""
    launched = time.time()
    raw = bench.run_worker([sys.executable, __file__, "--max-epochs", str(max_epochs)])
    return raw if "error" in raw else keras_summary(raw["epochs"], launched)


def keras_summary(epochs: list[dict], launched: float) -> dict:
    """Wall time from ``launched`` (time.time()) to the last epoch's evaluation, and its result."""
    last = epochs[-1]
    return {
        "wall_s": last["evaluated_at"] - launched,
        "epochs_completed": last["epoch"],
        "test_accuracy": last["test_accuracy"],
        "reached": last["test_accuracy"] >= TARGET_ACCURACY,
        "history": epochs,
    }


# ------------------------------------------------------------------------------------ report


def time_to_99() -> dict:
    """Both frameworks' time to 99 % and the ratio Keras / flaxmnist (None unless both reach it)."""
    flax, keras = flax_time_to_99(), keras_time_to_99()
    both = flax.get("reached") and keras.get("reached")
    return {
        "machine": bench.machine_name(),
        "target": TARGET_ACCURACY,
        "flaxmnist": flax,
        "keras": keras,
        "keras_over_flaxmnist": keras["wall_s"] / flax["wall_s"] if both else None,
    }


def outcome(run: dict) -> list[str]:
    """The epochs, test accuracy and time cells of one framework's time-to-99 row."""
    if "error" in run:
        return ["-", "-", "failed"]
    accuracy = f"{100 * run['test_accuracy']:.2f} %"
    seconds = f"{run['wall_s']:.1f}" if run["reached"] else f"not reached ({run['wall_s']:.1f})"
    return [str(run["epochs_completed"]), accuracy, seconds]


def time_to_99_markdown(result: dict) -> str:
    """The time-to-99 % table."""
    recipes = {
        "flaxmnist": "`--config=fast` (convnet_small), cold compilation cache, launch to exit",
        "keras": "simple MNIST convnet, Adam 1e-3, batch 128, launch to the epoch's test eval",
    }
    lines = [
        f"### Time to {100 * result['target']:.0f} % test accuracy, from process launch",
        "",
        f"{result['machine']}.",
        "",
        "| framework | recipe | epochs | test accuracy | wall s |",
        "|---|---|---|---|---|",
    ]
    for name, recipe in recipes.items():
        lines.append(f"| {name} | {recipe} | " + " | ".join(outcome(result[name])) + " |")
    ratio = result["keras_over_flaxmnist"]
    lines += ["", f"Keras / flaxmnist: {f'{ratio:.2f}x' if ratio else '-'}"]
    return "\n".join(lines) + "\n"


def startup_markdown(result: dict) -> str:
    """The cold vs warm start table."""
    lines = [
        "### Cold vs warm start (`--config=fast`, one epoch, one step per chunk)",
        "",
        f"{result['machine']}.",
        "",
    ]
    if "error" in result:
        return "\n".join([*lines, f"failed: {result['error']}"]) + "\n"
    warm = f"warm (median of {len(result['warm_first_step_runs_s'])})"
    lines += [
        "| compilation cache | process start to first step s | launch to exit s |",
        "|---|---|---|",
        f"| cold (empty) | {result['cold_first_step_s']:.1f} | {result['cold_wall_s']:.1f} |",
        f"| {warm} | {result['warm_first_step_s']:.1f} | {result['warm_wall_s']:.1f} |",
    ]
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    """The markdown of this module's sections that have results ("" when none has)."""
    return bench.sections_markdown(
        results, {"time_to_99": time_to_99_markdown, "startup": startup_markdown}
    )


def main() -> None:
    """Worker entry: trains the Keras recipe to 99 % and prints its RESULT line."""
    parser = argparse.ArgumentParser(description="Keras time-to-99 % worker")
    parser.add_argument("--max-epochs", type=int, default=KERAS_MAX_EPOCHS)
    bench.emit_result(keras_worker(parser.parse_args().max_epochs))


if __name__ == "__main__":
    main()
