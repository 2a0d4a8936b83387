"""The write-fault injector: in each process of a trial, it counts writes and fails the planned one.

A generated ``sitecustomize.py`` (:func:`write_sitecustomize`) loads this file, by its path, into
every Python process started with :func:`plan_environment`'s environment, before anything else;
:func:`install_from_environment` then puts its versions of ``open``, ``os.write``,
``os.fsync``, ``os.replace`` / ``os.rename`` and ``os.mkdir`` in place. Each logs every call on a
file under the trial folder as a *site* (the call, where in flaxmnist it comes from, the file's
path generalised) and fails the planned hit of the planned site (``write_faults.py`` tells how);
:func:`read_log` reads the log back.
"""

# Only the standard library, at module level and below: every child process loads this file at
# start-up, before anything else, to install the injector.
from __future__ import annotations

import builtins
import collections
import errno
import io
import json
import os
import re
import shutil
import sys
import sysconfig
import threading
from pathlib import Path
from typing import Any

# Loaded alone into each child (by its path, see SITECUSTOMIZE): it finds the code under test
# from its own place, tests/drills/injector.py.
REPO_ROOT = Path(__file__).resolve().parents[2]
PLAN_ENV = "FLAXMNIST_WRITE_FAULTS"  # the injector's plan (JSON) for a child process
PACKAGE = str(REPO_ROOT / "flaxmnist") + os.sep
HELPERS = str(REPO_ROOT / "flaxmnist" / "storage" / "files.py")  # callers name these sites
STDLIB = sysconfig.get_paths()["stdlib"] + os.sep
ETILS = str(Path(sysconfig.get_paths()["purelib"]) / "etils")  # Orbax's file layer: not the site
KINDS = ("ENOSPC", "EIO", "full")
STICKY_OPS = frozenset({"write", "fsync", "mkdir"})  # what a full or broken disk keeps failing
WRITE_MODES = frozenset("wax+")
# Random parts of temp names (tempfile's eight characters) and numbers, generalised in patterns.
TEMP_PART = re.compile(r"(?<=[.-])[a-z0-9_]{8}(?=\.tmp$|/|$)")
INCOMPLETE = re.compile(r"incomplete\.[A-Z0-9]{6}_")  # tfds's random staging folder
DIGEST = re.compile(r"\b[0-9a-f]{16}\b")  # a tfds dataset of IDX files: their digest
NUMBER = re.compile(r"\d+")

_REAL = {
    "open": io.open,
    "write": os.write,
    "fsync": os.fsync,
    "replace": os.replace,
    "rename": os.rename,
    "mkdir": os.mkdir,
}
# What a watched call does: go on, write half (the fault fires), fail, or go on a full disk.
PASS, PARTIAL, FAIL, FILLED = "pass", "partial", "fail", "filled"


def site_pattern(relative: str) -> str:
    """``relative`` (a path under the trial folder) with temp names and numbers generalised."""
    for pattern, general in ((TEMP_PART, "*"), (INCOMPLETE, "incomplete.*_"), (DIGEST, "H")):
        relative = pattern.sub(general, relative)
    return NUMBER.sub("N", relative)


def caller_location() -> str:
    """``flaxmnist/x.py:LINE`` of the innermost flaxmnist frame outside the atomic-write helpers.

    A library's own thread (Orbax's asynchronous save) has none: then the innermost frame of a
    library other than etils (Orbax's file layer), else of etils, its path cut after
    ``site-packages/``.
    """
    found: dict[bool, str] = {}  # is etils -> the innermost such frame
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(PACKAGE) and name != HELPERS:
            return f"{name[len(str(REPO_ROOT)) + 1 :]}:{frame.f_lineno}"
        if not name.startswith((STDLIB, "<frozen")) and name != __file__:
            short = name.split("site-packages" + os.sep, 1)[-1]
            found.setdefault(name.startswith(ETILS), f"{short}:{frame.f_lineno}")
        frame = frame.f_back
    return found.get(False) or found.get(True) or "?"


class Injector:
    """Counts the write-type calls on files under ``root`` and fails the planned one.

    Args:
      plan: ``root`` (the trial folder), ``log`` (a JSON-lines file outside it, one line per
        call), and to fail a call: ``site``, ``hit`` (1-based) and ``kind`` (:data:`KINDS`);
        for ``full``, ``filler`` (the file that fills the disk).
    """

    def __init__(self, plan: dict[str, Any]):
        self.root = os.path.realpath(plan["root"])
        self.site, self.hit, self.kind = plan.get("site"), plan.get("hit", 0), plan.get("kind")
        self.filler = plan.get("filler")
        self.broken: int | None = None  # the errno every later write gets, once the fault fired
        self.hits: collections.Counter[str] = collections.Counter()
        self._lock = threading.RLock()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._log = os.open(plan["log"], flags, 0o644)

    def relative(self, path: Any) -> str | None:
        """``path`` relative to the root (a file descriptor or a path), or None outside it."""
        try:
            if isinstance(path, int):
                if path <= 2:
                    return None
                path = os.readlink(f"/proc/self/fd/{path}")
            real = os.path.realpath(os.fsdecode(path))
        except (OSError, TypeError, ValueError):
            return None
        if real == self.filler or not real.startswith(self.root + os.sep):
            return None
        return real[len(self.root) + 1 :]

    def verdict(self, op: str, path: Any) -> str:
        """What the call ``op`` on ``path`` does (:data:`PASS`, :data:`PARTIAL`, ...); logs it."""
        relative = self.relative(path)
        if relative is None:
            return PASS
        with self._lock:
            site = f"{op} {caller_location()} {site_pattern(relative)}"
            self.hits[site] += 1
            hit = self.hits[site]
            action = PASS
            if self.broken is not None and op in STICKY_OPS:
                action = FAIL
            elif site == self.site and hit == self.hit:
                action = self.fire(op)
            line = {"pid": os.getpid(), "site": site, "hit": hit, "path": relative}
            _REAL["write"](self._log, (json.dumps({**line, "action": action}) + "\n").encode())
        return action

    def fire(self, op: str) -> str:
        """Makes the planned fault happen now; returns what the call itself does."""
        if self.kind == "full":
            fill(self.filler)
            return FILLED
        self.broken = getattr(errno, self.kind)
        return PARTIAL if op == "write" else FAIL

    def error(self, path: Any = None, other: Any = None) -> OSError:
        """The ``OSError`` of the failing disk, with the call's paths as Python's has them."""
        code = self.broken or errno.EIO
        return OSError(code, os.strerror(code), path, None, other)


def fill(path: str) -> None:
    """Writes zeros to ``path`` until its disk has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    _REAL["write"](fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)


_INJECTOR: Injector | None = None


class FaultyFileIO(io.FileIO):
    """A raw file whose writes ask the injector first (every buffered write ends here)."""

    fault_path: Any = None

    def write(self, data) -> int | None:
        """Writes ``data`` unless the injector says the disk fails (see :func:`partial_write`)."""
        action = _INJECTOR.verdict("write", self.fault_path)
        if action in (PASS, FILLED):
            return super().write(data)
        return partial_write(super().write, data, action)


def partial_write(write, data, action: str) -> int:
    """Writes half of ``data`` for :data:`PARTIAL` (the short count); raises for :data:`FAIL`."""
    view = memoryview(data).cast("B")
    if action == PARTIAL and len(view) > 1:
        return write(view[: len(view) // 2])
    raise _INJECTOR.error()


def faulty_open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None,
                closefd=True, opener=None):  # fmt: skip
    """``open`` that gives the files it opens for writing under the root a :class:`FaultyFileIO`.

    The layers are stacked as ``io.open`` stacks them (raw, buffer, text).
    """
    if not WRITE_MODES & set(mode) or _INJECTOR.relative(file) is None:
        return _REAL["open"](file, mode, buffering, encoding, errors, newline, closefd, opener)
    raw = FaultyFileIO(file, mode.replace("t", ""), closefd, opener=opener)
    raw.fault_path = raw.fileno()
    binary = "b" in mode
    if buffering == 0 and binary:
        return raw
    line_buffering = buffering == 1 and not binary
    size = io.DEFAULT_BUFFER_SIZE if buffering in (-1, 1) else buffering
    buffer = (io.BufferedRandom if "+" in mode else io.BufferedWriter)(raw, size)
    if binary:
        return buffer
    text = io.TextIOWrapper(buffer, encoding, errors, newline, line_buffering)
    text.mode = mode
    return text


def faulty_write(fd: int, data) -> int:
    """``os.write`` that asks the injector first."""
    action = _INJECTOR.verdict("write", fd)
    if action in (PASS, FILLED):
        return _REAL["write"](fd, data)
    return partial_write(lambda part: _REAL["write"](fd, part), data, action)


def faulty_fsync(fd) -> None:
    """``os.fsync`` that asks the injector first."""
    number = fd if isinstance(fd, int) else fd.fileno()
    if _INJECTOR.verdict("fsync", number) == FAIL:
        raise _INJECTOR.error()
    _REAL["fsync"](fd)


def renaming(name: str):
    """``os.replace`` or ``os.rename`` (``name``) that asks the injector first."""

    def rename(src, dst, *, src_dir_fd=None, dst_dir_fd=None) -> None:
        if _INJECTOR.verdict("rename", dst) == FAIL:
            raise _INJECTOR.error(src, dst)
        _REAL[name](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    return rename


def faulty_mkdir(path, mode=0o777, *, dir_fd=None) -> None:
    """``os.mkdir`` that asks the injector first."""
    if _INJECTOR.verdict("mkdir", path) == FAIL:
        raise _INJECTOR.error(path)
    _REAL["mkdir"](path, mode, dir_fd=dir_fd)


def install(plan: dict[str, Any]) -> Injector:
    """Installs the injector of ``plan`` (see :class:`Injector`) in this process."""
    global _INJECTOR
    _INJECTOR = Injector(plan)
    builtins.open = io.open = faulty_open
    os.write, os.fsync, os.mkdir = faulty_write, faulty_fsync, faulty_mkdir
    os.replace, os.rename = renaming("replace"), renaming("rename")
    shutil._USE_CP_SENDFILE = False  # copies go through the file's write, not sendfile(2)
    return _INJECTOR


def install_from_environment() -> None:
    """Installs the injector when :data:`PLAN_ENV` holds a plan (in a trial's child process)."""
    plan = os.environ.get(PLAN_ENV)
    if plan:
        install(json.loads(plan))


SITECUSTOMIZE = '''\
"""Made by tests/drills/injector.py: loads the write-fault injector into every Python process."""
import importlib.util
import sys

_spec = importlib.util.spec_from_file_location("write_fault_injector", {path!r})
_module = sys.modules["write_fault_injector"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
_module.install_from_environment()
'''


def write_sitecustomize(folder: Path) -> None:
    """Writes ``folder/sitecustomize.py``, which loads the injector into a Python process."""
    folder.mkdir(parents=True, exist_ok=True)
    text = SITECUSTOMIZE.format(path=str(Path(__file__).resolve()))
    (folder / "sitecustomize.py").write_text(text)


def plan_environment(site: Path, plan: dict[str, Any]) -> dict[str, str]:
    """The environment of a child that loads ``plan`` from the ``sitecustomize.py`` in ``site``."""
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return {PLAN_ENV: json.dumps(plan), "PYTHONPATH": path}


def read_log(env: dict[str, str]) -> list[dict[str, Any]]:
    """The injector's log lines of the run that had ``env``."""
    log = Path(json.loads(env[PLAN_ENV])["log"])
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line]
