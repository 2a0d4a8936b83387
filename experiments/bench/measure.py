"""What the benchmark measures with: worker processes, clocks, memory and the data they train on.

A worker is a fresh process that trains one thing and prints its result as one ``RESULT {json}``
line (:func:`emit_result`); a section runs it with :func:`run_worker` (the worker reports its own
peak RSS) or :func:`measured_run` (launch-to-exit wall and peak RSS from outside, through
``launcher.py``) and reads that line back (:func:`worker_result`).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

START = time.perf_counter()
WORKER_TIMEOUT_S = 1800
LAUNCHER = Path(__file__).resolve().with_name("launcher.py")
RESULT_PREFIX = "RESULT "
MATMUL_SIZE = 1024


def mnist_arrays(split: str = "train", tile: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A vendored MNIST split: uint8 images [N, 28, 28, 1] and int32 labels, repeated ``tile``×."""
    from flaxmnist.data import datasets

    arrays = getattr(datasets.load_dataset("mnist"), split)
    return np.tile(arrays.images, (tile, 1, 1, 1)), np.tile(arrays.labels, tile)


def process_age_s() -> float:
    """Seconds since this process started (``/proc``; since this module's import elsewhere)."""
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except OSError:
        return time.perf_counter() - START
    return uptime - int(stat[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time in ticks


def peak_rss_mb() -> float:
    """The peak resident size of this process since its ``exec``, MiB (``VmHWM``).

    ``getrusage``'s ``ru_maxrss`` would include the parent's size at the spawn (Linux carries the
    pre-``exec`` high-water mark over): a driver that has loaded TensorFlow would raise it.
    """
    try:
        status = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kib = [line.split()[1] for line in status if line.startswith("VmHWM:")]
    return int(kib[0]) / 1024


def time_repeats(
    run: Callable, state, repeats: int, flops: float, steps: int, first_step: Callable
) -> dict:
    """Times the first step from process start, then ``repeats`` runs after a warm-up run.

    Args:
      run: ``run(state, epoch) -> state`` trains ``steps`` steps (blocking until done).
      state: what ``run`` and ``first_step`` thread through (None for PyTorch).
      repeats: timed runs.
      flops: training FLOPs per step (0 when the framework does not count them).
      steps: steps per run.
      first_step: ``first_step(state) -> state`` trains one step, compiling what it needs.

    Returns:
      ``startup_s`` (process start to the first step done), ``run_s`` (each timed run),
      ``run_steps`` and ``flops_per_step``.
    """
    state = first_step(state)
    startup = process_age_s()
    state = run(state, 0)  # warm-up: compiles the timed program, fills the caches
    times = []
    for epoch in range(1, repeats + 1):
        begin = time.perf_counter()
        state = run(state, epoch)
        times.append(time.perf_counter() - begin)
    return {"startup_s": startup, "run_s": times, "run_steps": steps, "flops_per_step": flops}


def matmul_peak_gflops() -> float:
    """The float32 matmul speed here (1024^3 with numpy/BLAS, best of 5)."""
    a = np.random.default_rng(0).random((MATMUL_SIZE, MATMUL_SIZE), dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        begin = time.perf_counter()
        _ = a @ a
        best = min(best, time.perf_counter() - begin)
    return 2 * MATMUL_SIZE**3 / best / 1e9


def gflops(flops_per_step: float, step_ms: float) -> float:
    """Achieved GFLOP/s of a step of ``flops_per_step`` FLOPs taking ``step_ms`` milliseconds."""
    return flops_per_step / step_ms / 1e6


def emit_result(result: dict) -> None:
    """Prints a worker's result as the ``RESULT {json}`` line its driver reads."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def worker_result(returncode: int, stdout: str, stderr: str) -> dict:
    """A finished worker's last ``RESULT`` line as a dict, or ``{"error": its stderr's tail}``."""
    if returncode:
        return {"error": stderr[-500:]}
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        return {"error": "no RESULT line: " + stderr[-400:]}
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def run_worker(command: list[str]) -> dict:
    """Runs a worker subprocess to its end: :func:`worker_result` of its output."""
    out = subprocess.run(command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    return worker_result(out.returncode, out.stdout, out.stderr)


def measured_run(command: list[str], timeout_s: float = WORKER_TIMEOUT_S, **popen) -> dict:
    """Runs ``command`` to its end: exit status, output, wall and peak RSS of that child alone.

    ``launcher.py`` starts and times the command (see there why a launcher): its ``os.wait4``
    gives the child's own usage, whose ``ru_maxrss`` includes the processes the child waited for
    itself (compiler workers; the maximum, not the sum). A command still running after
    ``timeout_s`` is killed (exit status -9).

    Returns:
      ``returncode``, ``stdout``, ``stderr``, ``wall_s`` (launch to exit), ``peak_rss_mb``.
    """
    with tempfile.TemporaryDirectory(prefix="flaxmnist-run-") as tmp:
        report, out, err = (Path(tmp) / name for name in ("report.json", "stdout", "stderr"))
        with out.open("w") as stdout, err.open("w") as stderr:
            launcher = [sys.executable, str(LAUNCHER), str(report), str(timeout_s), *command]
            subprocess.run(launcher, stdout=stdout, stderr=stderr, check=False, **popen)
        result = json.loads(report.read_text()) if report.exists() else {"returncode": -9}
        return {**result, "stdout": out.read_text(), "stderr": err.read_text()}


def logged(row: dict) -> dict:
    """Prints ``row`` as one JSON line (progress) and returns it."""
    print(json.dumps(row), flush=True)
    return row
