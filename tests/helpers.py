"""Helpers the tests share: the repository root, experiment scripts as modules, the train CLI."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from absl import flags

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_experiment(name: str) -> ModuleType:
    """Imports the script ``experiments/<name>.py`` as a module (experiments/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def with_cpu_devices(count: int) -> dict[str, str]:
    """This process's environment for a child that sees ``count`` CPU devices (XLA_FLAGS kept)."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}"
    return {**os.environ, "XLA_FLAGS": flags.strip()}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Runs ``python -m flaxmnist.train ARGS`` in ``cwd`` and returns its captured output."""
    return run_module("train", *args, cwd=cwd)


def run_module(
    command: str, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Runs ``python -m flaxmnist.COMMAND ARGS`` in ``cwd`` (unbuffered) and captures its output."""
    return subprocess.run(
        [sys.executable, "-m", f"flaxmnist.{command}", *args],
        cwd=cwd,
        env={**(env or os.environ), "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def parsed_flags(script: ModuleType, *args: str) -> flags.FlagValues:
    """An experiment script's flags parsed from ``args``.

    Into fresh ``FlagValues``, not absl's global ``FLAGS``: the scripts share flag names.
    """
    flag_values = flags.FlagValues()
    script.define_flags(flag_values)
    flag_values([f"{script.__name__}.py", *args])
    return flag_values


def run_script(path: str, *args: str) -> subprocess.CompletedProcess:
    """Runs ``python PATH ARGS`` in the repository root and returns its captured output."""
    return subprocess.run(
        [sys.executable, path, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )


def assert_same_step_losses(run: Path, reference: Path) -> None:
    """Asserts that two runs logged the same steps with the same losses (within float noise)."""
    import numpy as np

    def steps(path: Path) -> np.ndarray:
        return np.genfromtxt(path / "steps.csv", delimiter=",", names=True)

    mine, theirs = steps(run), steps(reference)
    np.testing.assert_array_equal(mine["step"], theirs["step"])
    np.testing.assert_allclose(mine["loss"], theirs["loss"], rtol=1e-5, atol=1e-6)


def require_browser() -> tuple[str, str]:
    """Chromium's and chromedriver's paths, or a skip naming what is missing.

    On CI (``$CI`` set; ``.ci/run`` installs both) a missing one fails the test instead.
    """
    found = {
        "chromium": shutil.which("chromium") or shutil.which("chromium-browser"),
        "chromedriver": shutil.which("chromedriver"),
    }
    missing = [name for name, path in found.items() if path is None]
    if missing:
        message = f"no {' or '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; on CI the browser tests must run")
        pytest.skip(message)
    return found["chromium"], found["chromedriver"]
