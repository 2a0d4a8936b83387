"""What the drills share: a finished command's outcome, a folder's files, a run's state."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from collections.abc import Container
from pathlib import Path

import jax
import numpy as np

import flaxmnist

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a finished command left: its exit status and output."""

    code: int
    stdout: str
    stderr: str

    @property
    def clean(self) -> bool:
        """No traceback, and a failure ends in one ``error:`` line."""
        if "Traceback" in self.stderr:
            return False
        lines = self.stderr.strip().splitlines()
        return self.code == 0 or bool(lines and lines[-1].startswith("error: "))

    def problems(self) -> list[str]:
        """What is wrong with how it failed: exit 2, one ``error:`` line, last, no traceback."""
        hung = self.stderr.endswith("\nhung")
        found = [] if self.code == 2 else ["hung (killed)" if hung else f"exit {self.code}"]
        lines = self.stderr.strip().splitlines()
        error_lines = [line for line in lines if line.startswith("error: ")]
        if "Traceback" in self.stderr or "Exception ignored" in self.stderr:
            found.append("traceback on stderr")
        if len(error_lines) != 1 or lines[-1] != error_lines[0]:
            found.append(f"{len(error_lines)} error lines, the last line is {self.last_line()!r}")
        return found

    def last_line(self) -> str:
        """The last line of stderr (or stdout), cut for reports."""
        lines = (self.stderr or self.stdout).strip().splitlines()
        return lines[-1][:200] if lines else ""


def snapshot(root: Path, skip: Container[str] = ()) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes) but those named in ``skip``."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def state_digest(workdir: Path) -> str:
    """SHA-256 of every array of a run's final state (its latest checkpoint).

    Parameters, optimizer state, BatchNorm statistics, the EMA average and the step: two runs
    with one digest continue identically. ``unloadable: ...`` where there is no readable state.
    """
    try:
        state = flaxmnist.load_run(workdir).state
    except Exception as e:  # a damaged run: no digest
        return f"unloadable: {type(e).__name__}"
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()


def untimed_records(workdir: Path) -> str:
    """A run's ``history.json`` and ``metrics.json`` without timings (fields ending in ``_s``).

    What two runs that trained the same steps must agree on; ``missing`` where either is absent.
    """
    records = []
    for name in ("history.json", "metrics.json"):
        path = workdir / name
        if not path.exists():
            return "missing"
        records.append(_without_timings(json.loads(path.read_text())))
    return json.dumps(records, sort_keys=True)


def _without_timings(value):
    if isinstance(value, list):
        return [_without_timings(item) for item in value]
    return {key: v for key, v in value.items() if not key.endswith("_s")}


def mount_tmpfs(folder: Path, size: str) -> bool:
    """Mounts a tmpfs of ``size`` (``4k``, ``256m``) on ``folder``; whether it could (root)."""
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    return subprocess.run(mount, capture_output=True).returncode == 0


def unmount(folder: Path) -> None:
    """Unmounts the tmpfs on ``folder`` (lazily: a process may still hold a file there)."""
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)
