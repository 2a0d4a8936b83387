"""``python -m flaxmnist.train --config=fast`` timed from process launch, and the start-up section.

:func:`run_fast` launches a real training process and times it from the outside, so interpreter
start-up, imports, data loading and XLA compilation all count (``race.py`` and ``fast_seeds.py``
use it too). The ``startup`` section: one epoch of the ``fast`` preset with one training step per
chunk, so the run's ``time_to_first_chunk_s`` is process start to the first step done; first with
an empty compilation cache (cold), then again with the cache that run filled (warm). Work
directories and caches live in a temporary directory that is deleted afterwards. Run through
``benchmark.py --sections=startup``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import measure
import ml_collections
import recipes
import report

from flaxmnist.cpu import machine_name

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
        command, capture_output=True, text=True, timeout=measure.WORKER_TIMEOUT_S, cwd=REPO_ROOT
    )
    wall_s = time.perf_counter() - begin
    if out.returncode:
        return {"error": out.stderr[-500:]}
    metrics = json.loads((workdir / "metrics.json").read_text())
    return {"wall_s": wall_s, **{key: metrics[key] for key in METRIC_KEYS}}


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
    """Training steps in one MNIST epoch of ``config`` (its validation split held out)."""
    held_out = round(config.validation_fraction * recipes.TRAIN_EXAMPLES)
    return (recipes.TRAIN_EXAMPLES - held_out) // config.batch_size


def startup(warm_runs: int) -> dict:
    """Process start to the first training step, cold and then ``warm_runs`` times warm."""
    from flaxmnist.configs import fast

    steps = steps_per_epoch(fast.get_config())
    overrides = ("--config.num_epochs=1", f"--config.chunks_per_epoch={steps}")
    with tempfile.TemporaryDirectory(prefix="flaxmnist-bench-") as tmp:
        cache = Path(tmp) / "cache"
        runs = [run_fast(Path(tmp) / f"run{i}", cache, *overrides) for i in range(1 + warm_runs)]
    return {"machine": machine_name(), **startup_summary(runs)}


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
    return report.sections_markdown(results, {"startup": startup_markdown})
