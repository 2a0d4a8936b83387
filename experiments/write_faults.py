"""Write failures at every write site: each write of each command fails midway, then is judged.

    python experiments/write_faults.py                   # every site, ENOSPC, EIO and a full disk
    python experiments/write_faults.py --only=train      # one command's sites
    python experiments/write_faults.py --kinds=ENOSPC --hits=first
    python experiments/write_faults.py --only=train --sites=orbax   # sites matching a regex

The sites are found, not listed: every command (training, new and resumed; evaluation; export;
comparison; tfds preparation of IDX files, of a damaged dataset and of the stock ``mnist``; a
tuning study; all on small synthetic data) first runs with an injector loaded into its process
at start-up (a generated ``sitecustomize.py``) that counts every write-type call on a file under
the trial folder: ``write`` (on the raw file under any ``open``, ``os.fdopen``, ``Path.write_*``,
``shutil`` copy, or ``os.write``), ``fsync``, ``rename`` / ``replace`` and ``mkdir``. A site is
the call, where in flaxmnist it comes from (the innermost frame in ``flaxmnist/`` other than the
atomic-write helpers; a library's frame for a library's own threads) and the file's path with its
temp-name and digits generalised. Then each site is made to fail, in a fresh copy of the trial
folder, at its first and at its last hit, in three ways:

* ``ENOSPC`` / ``EIO``: the write at that hit writes half its bytes and returns the short count,
  as Linux does on a disk filling up, and the next raises ``OSError``; from then on every write,
  ``fsync`` and ``mkdir`` under the folder fails the same way (the disk stays full or broken). A
  ``fsync``, ``rename`` or ``mkdir`` site raises at once.
* ``full``: at that hit the folder's own tmpfs is filled to the last byte and the call goes on:
  the kernel fails whatever comes next, the writes of native code included (Orbax's TensorStore,
  TensorFlow's record writers, SQLite), which no Python-level injector sees.

A trial passes when the command exits 2 with its last stderr line the only ``error: ...`` line and
no traceback; every file there before is byte-identical or a complete newer version; no file
ends truncated under its final name (checked by its format: JSON, CSV, TFRecord framing and
CRCs, PNG end chunk, ``np.load``, ``jax.export.deserialize``, SQLite's integrity check, ...;
checkpoints by restoring them); no temp file or staging folder is left (an unfinished Orbax
checkpoint folder must be gone after the rerun); and a rerun without faults exits 0 with every
output an uninterrupted run writes the same way byte-identical to it (for training: ``steps.csv``
and the final parameters; for a study, whose failed trial stays failed, every output complete).
A fault that fires in a run that still exits 0 passes only when every output is complete and
equal to the uninterrupted run's. A command still running 10 s after its error line is hung.

Writes ``experiments/results/write_faults.json`` and ``.md`` (``--noreport``: neither); exits 1
when any trial failed. The ``full`` trials mount tmpfs folders and need root; elsewhere they are
skipped. Not covered: the JAX compilation cache (kept outside the trial folder: the fault
matrix's cache torture fills it and makes it read-only) and other processes than the command's
own (a hit is counted per process).
"""

# Only the standard library at module level: every child process imports this module at
# start-up, before anything else, to install the injector.
from __future__ import annotations

import builtins
import collections
import contextlib
import csv
import dataclasses
import errno
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
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


# --- the driver ----------------------------------------------------------------------------------
# It imports numpy, JAX and flaxmnist inside its functions: a child imports this module first.

RESULTS_JSON = REPO_ROOT / "experiments" / "results" / "write_faults.json"
RESULTS_MD = REPO_ROOT / "experiments" / "results" / "write_faults.md"
TIMEOUT_S = 60  # a command here takes seconds: one still running is hung
HANG_S = 10  # a command still running this long after its error line is hung
TMPFS_SIZE = "256m"
# Names of temp files and staging folders: flaxmnist's own (gone once the command ends) and
# Orbax's (an unfinished checkpoint, which the next run's CheckpointManager removes).
OWN_TEMP = re.compile(r"^\..+\.tmp$|^\.flaxmnist-staging-|^\..+\.old$")
LIBRARY_TEMP = re.compile(r"orbax-checkpoint-tmp")
EXAMPLES = re.compile(r"\.(tfrecord|array_record)-\d+-of-\d+$")  # a tfds dataset's examples
HIT_CHOICES = ("first", "last")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a finished command left: its exit status and output."""

    code: int
    stdout: str
    stderr: str

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


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A command under test: how its trial folder starts, and its command line.

    ``setup(root, shared)`` fills the empty trial folder ``root`` with what exists before the
    command (running real commands, without faults); ``argv(root, shared)`` is the command.
    ``covered`` sites (a regex) are failed by another scenario already: here only the full
    disk, whose failures reach this command's own native writers. Unless ``exact``, a rerun
    after a failure need not end byte-identical to an uninterrupted run, only complete: a
    study's failed trial stays failed, and the rerun runs a new one.
    """

    name: str
    setup: Callable[[Path, Path], None]
    argv: Callable[[Path, Path], list[str]]
    timeout: float = TIMEOUT_S
    covered: str = "^$"  # sites (a regex) another scenario makes fail: only "full" here
    exact: bool = True


@dataclasses.dataclass(frozen=True)
class Site:
    """A write site: ``op location pattern`` and how often an uninterrupted run hits it."""

    key: str
    hits: int


@dataclasses.dataclass
class Trial:
    """One planned fault and its verdict (no problems: passed)."""

    scenario: str
    site: str
    hit: int
    kind: str
    fired: bool = False
    code: int | None = None
    last_line: str = ""
    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def result(self) -> str:
        """``pass``, ``FAIL`` or ``not reached`` (the site was not hit this time)."""
        if not self.fired:
            return "not reached"
        return "FAIL" if self.problems else "pass"


@dataclasses.dataclass
class Reference:
    """What an uninterrupted command leaves, and which of its files it always writes alike."""

    files: dict[str, bytes]
    paths: set[str]
    deterministic: set[str]
    digests: dict[str, str]  # run directory -> digest of its final parameters


# --- commands ------------------------------------------------------------------------------------


def python(*args: str) -> list[str]:
    """A ``python`` command line of this interpreter."""
    return [sys.executable, *args]


def train_argv(workdir: Path, shared: Path, epochs: int) -> list[str]:
    """Training ``dense`` for ``epochs`` on the shared synthetic data and compilation cache."""
    return python(
        "-m",
        "flaxmnist.train",
        "--config=dense",
        f"--config.num_epochs={epochs}",
        "--config.log_every_steps=4",
        f"--config.data_dir={shared / 'data'}",
        f"--config.compilation_cache_dir={shared / 'cache'}",
        f"--workdir={workdir}",
    )


def must_run(argv: list[str], shared: Path) -> None:
    """Runs a set-up command without faults; raises unless it exits 0."""
    outcome = run_command(argv, temp_environment(shared))
    if outcome.code != 0:
        raise RuntimeError(f"set-up command {argv[1:4]} failed: {outcome.last_line()}")


def nothing(root: Path, shared: Path) -> None:
    """An empty trial folder."""


def trained(*runs: tuple[str, int]) -> Callable[[Path, Path], None]:
    """A set-up that trains run directories ``(name, epochs)`` in the trial folder."""

    def setup(root: Path, shared: Path) -> None:
        for name, epochs in runs:
            must_run(train_argv(root / name, shared, epochs), shared)

    return setup


def then(first: Callable[[Path, Path], None], argv) -> Callable[[Path, Path], None]:
    """A set-up: ``first``, then the command ``argv(root, shared)`` (an earlier output)."""

    def setup(root: Path, shared: Path) -> None:
        first(root, shared)
        must_run(argv(root, shared), shared)

    return setup


def evaluate_argv(root: Path, shared: Path) -> list[str]:
    """``flaxmnist.evaluate`` of the run ``root/run``."""
    return python("-m", "flaxmnist.evaluate", f"--workdir={root / 'run'}")


def export_argv(root: Path, shared: Path) -> list[str]:
    """``flaxmnist.export`` of ``root/run`` as StableHLO."""
    return python("-m", "flaxmnist.export", f"--workdir={root / 'run'}", "--format=stablehlo")


def compare_argv(root: Path, shared: Path) -> list[str]:
    """``flaxmnist.compare`` of ``root/run1`` and ``root/run2`` into ``root/comparison``."""
    runs = [str(root / "run1"), str(root / "run2")]
    return python("-m", "flaxmnist.compare", *runs, f"--out={root / 'comparison'}")


def idx_data(root: Path, shared: Path) -> None:
    """The synthetic IDX files in ``root/data/mnist`` (a copy of the shared ones)."""
    shutil.copytree(shared / "data", root / "data")


def prepare_idx_argv(root: Path, shared: Path) -> list[str]:
    """The tfds dataset of ``root/data``'s IDX files (what the tfds and grain pipelines read)."""
    return python("-m", "flaxmnist.data.tfds_prepare", "mnist", str(root / "data"))


def damaged_dataset(root: Path, shared: Path) -> None:
    """The IDX files of :func:`idx_data` and their tfds dataset, damaged: its metadata gone.

    A prepare writes the dataset again and replaces this one.
    """
    idx_data(root, shared)
    must_run(prepare_idx_argv(root, shared), shared)
    next(root.glob("data/mnist/tfds/*/mnist/*/dataset_info.json")).unlink()


def prepare_stock_argv(root: Path, shared: Path) -> list[str]:
    """``flaxmnist.data prepare``: the stock ``mnist`` from the vendored files, into root/tfds."""
    return python("-m", "flaxmnist.data", "prepare", f"--data_dir={root / 'tfds'}",
                  "--datasets=mnist")  # fmt: skip


TUNE_CONFIG = """\
from flaxmnist.configs import dense


def get_config():
    config = dense.get_config()
    config.num_epochs, config.validation_fraction = 1, 0.1
    config.data_dir, config.compilation_cache_dir = {data!r}, {cache!r}
    return config
"""


def tune_argv(trials: int) -> Callable[[Path, Path], list[str]]:
    """``flaxmnist.tune`` until the study in ``root/study`` holds ``trials`` 1-epoch trials."""

    def argv(root: Path, shared: Path) -> list[str]:
        return python("-m", "flaxmnist.tune", f"--workdir={root / 'study'}",
                      f"--config={shared / 'tune_config.py'}", f"--trials={trials}",
                      "--seed=0")  # fmt: skip

    return argv


def one_trial_study(root: Path, shared: Path) -> None:
    """A study of one trial in ``root/study`` (and its trials' config in ``shared``)."""
    config = TUNE_CONFIG.format(data=str(shared / "data"), cache=str(shared / "cache"))
    (shared / "tune_config.py").write_text(config)
    must_run(tune_argv(1)(root, shared), shared)


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("train", nothing, lambda root, shared: train_argv(root / "run", shared, 2)),
        Scenario(
            "train_resumed",
            trained(("run", 1)),
            lambda root, shared: train_argv(root / "run", shared, 2),
        ),
        Scenario("evaluate", then(trained(("run", 2)), evaluate_argv), evaluate_argv),
        Scenario("export", then(trained(("run", 2)), export_argv), export_argv),
        Scenario("compare", then(trained(("run1", 1), ("run2", 2)), compare_argv), compare_argv),
        Scenario("prepare_idx", idx_data, prepare_idx_argv),
        Scenario("prepare_idx_damaged", damaged_dataset, prepare_idx_argv),
        # A trial's run directory: the train scenarios' sites.
        Scenario("tune", one_trial_study, tune_argv(2), covered=" study/trials/", exact=False),
        Scenario("prepare_stock", nothing, prepare_stock_argv, timeout=4 * TIMEOUT_S),
    )
}


# --- running commands -------------------------------------------------------------------------

SITECUSTOMIZE = '''\
"""Made by experiments/write_faults.py: loads its injector into every Python process."""
import importlib.util
import sys

_spec = importlib.util.spec_from_file_location("write_faults", {path!r})
_module = sys.modules["write_faults"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
_module.install_from_environment()
'''


def run_command(argv: list[str], env: dict[str, str], timeout: float = TIMEOUT_S) -> Outcome:
    """Runs ``argv`` in the repository with ``env`` added to this environment.

    A command still running ``timeout`` seconds after its start, or :data:`HANG_S` after it
    printed an ``error:`` line, is killed: exit -9, ``hung`` as its last stderr line.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=out,
            stderr=err,
            start_new_session=True,  # a hung command's children are killed with it
        )
        hung = wait_or_kill(process, err, timeout)
        stdout, stderr = (contents(f).decode(errors="replace") for f in (out, err))
    return Outcome(-9 if hung else process.returncode, stdout, stderr + ("\nhung" if hung else ""))


def contents(file) -> bytes:
    """Everything written so far to the open ``file``."""
    return os.pread(file.fileno(), os.fstat(file.fileno()).st_size, 0)


def wait_or_kill(process: subprocess.Popen, err, timeout: float) -> bool:
    """Waits for ``process``, its stderr going to the file ``err``; whether it was killed.

    When the drill itself is stopped meanwhile, the command is killed too.
    """
    deadline, erred = time.monotonic() + timeout, None
    try:
        while process.poll() is None:
            now = time.monotonic()
            if erred is None and b"\nerror: " in b"\n" + contents(err):
                erred = now
            if now > deadline or (erred is not None and now - erred > HANG_S):
                kill(process)
                return True
            time.sleep(0.05)
    except BaseException:
        kill(process)
        raise
    return False


def kill(process: subprocess.Popen) -> None:
    """Kills ``process`` and its children (its process group), and reaps it."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class Workspace:
    """The drill's folders: shared data and cache, and the trial folder on a tmpfs of its own.

    The trial folder ``disk/trial`` is where every command writes; ``disk`` is a tmpfs when it
    can be mounted (root), so that ``full`` trials fill it and not the machine's disk.
    """

    def __init__(self, shared: Path):
        from flaxmnist.testing import write_idx_dataset

        self.shared = shared
        self.disk, self.root = shared / "disk", shared / "disk" / "trial"
        self.filler = self.disk / "filler"
        self.disk.mkdir(parents=True)
        mount = ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(self.disk)]
        self.tmpfs = subprocess.run(mount, capture_output=True).returncode == 0
        write_idx_dataset(shared / "data" / "mnist", num_train=512, num_test=100)
        write_sitecustomize(shared / "site")
        self._logs = 0

    def close(self) -> None:
        """Unmounts the tmpfs (if one was mounted)."""
        if self.tmpfs:
            subprocess.run(["umount", "-l", str(self.disk)], capture_output=True)

    def reset(self, template: Path | None) -> None:
        """Empties the trial folder, then copies ``template`` into it (if given)."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.filler.unlink(missing_ok=True)
        if template is None:
            self.root.mkdir()
        else:
            shutil.copytree(template, self.root, symlinks=True)

    def keep(self, name: str) -> Path:
        """Copies the trial folder to ``shared/name`` (a template or a reference); returns it."""
        target = self.shared / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.root, target, symlinks=True)
        return target

    def plan(self, site: str | None = None, hit: int = 0, kind: str | None = None) -> dict:
        """The environment that loads the injector with a fresh log (and a fault, if given)."""
        self._logs += 1
        log = self.shared / "logs" / f"{self._logs:04d}.jsonl"
        log.parent.mkdir(exist_ok=True)
        plan = {"root": str(self.root), "log": str(log), "site": site, "hit": hit, "kind": kind}
        plan_env = plan_environment(self.shared / "site", {**plan, "filler": str(self.filler)})
        return {**temp_environment(self.shared), **plan_env}


def temp_environment(shared: Path) -> dict[str, str]:
    """The environment of every command: its temp files (a bug's error.log) in ``shared/tmp``."""
    (shared / "tmp").mkdir(exist_ok=True)
    return {"TMPDIR": str(shared / "tmp")}


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


def sites_of(lines: list[dict[str, Any]]) -> list[Site]:
    """The sites of a log, in the order they were first hit, with their hit counts."""
    counts = collections.Counter(line["site"] for line in lines)
    return [Site(key, counts[key]) for key in dict.fromkeys(line["site"] for line in lines)]


# --- the judge --------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def all_paths(root: Path) -> set[str]:
    """Every file and folder under ``root``, relative."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def in_checkpoint(relative: str) -> bool:
    """Whether ``relative`` lies in an Orbax checkpoint (judged whole, by restoring it)."""
    return "checkpoints/" in relative


def json_problem(data: bytes) -> str | None:
    """Why ``data`` is no complete JSON document, or None."""
    try:
        json.loads(data)
    except ValueError as e:
        return f"not JSON ({e})"
    return None


def csv_problem(data: bytes) -> str | None:
    """Why ``data`` is no complete CSV file (an empty one is complete), or None."""
    text = data.decode(errors="replace")
    if text and not text.endswith("\n"):
        return "ends mid-line"
    widths = {len(row) for row in csv.reader(io.StringIO(text))}
    return None if len(widths) <= 1 else f"rows of {sorted(widths)} fields"


def text_problem(data: bytes) -> str | None:
    """Why ``data`` is no complete text file (UTF-8, ending with a newline), or None."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return "not UTF-8"
    return None if text.endswith("\n") or not text else "ends mid-line"


def html_problem(data: bytes) -> str | None:
    """Why ``data`` is no complete HTML page, or None."""
    return None if data.rstrip().endswith(b"</html>") else "no closing </html>"


def png_problem(data: bytes) -> str | None:
    """Why ``data`` is no complete PNG (its signature, then its IEND chunk last), or None."""
    whole = data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
    return None if whole else "no PNG end chunk"


def npz_problem(data: bytes) -> str | None:
    """Why ``data`` is no complete ``.npz`` archive (every array read, CRCs checked), or None."""
    import numpy as np

    try:
        with np.load(io.BytesIO(data)) as archive:
            for name in archive.files:
                archive[name]
    except Exception as e:  # zipfile and numpy raise many kinds for a cut archive
        return f"does not load ({type(e).__name__})"
    return None


def tfrecords(data: bytes) -> list[bytes]:
    """The records of a TFRecord file; ValueError for a cut record or a wrong CRC."""
    from flaxmnist.storage.scalar_log import masked_crc32c

    records, at = [], 0
    while at < len(data):
        header = data[at : at + 8]
        end = at + 12 + (struct.unpack("<Q", header)[0] if len(header) == 8 else len(data)) + 4
        if end > len(data):
            raise ValueError(f"ends mid-record at byte {at}")
        (header_crc,) = struct.unpack("<I", data[at + 8 : at + 12])
        body = data[at + 12 : end - 4]
        (body_crc,) = struct.unpack("<I", data[end - 4 : end])
        if header_crc != masked_crc32c(header) or body_crc != masked_crc32c(body):
            raise ValueError(f"bad CRC in the record at byte {at}")
        records.append(body)
        at = end
    return records


def tfrecord_problem(data: bytes) -> str | None:
    """Why ``data`` is no complete TFRecord file (every frame whole, every CRC right), or None."""
    try:
        tfrecords(data)
    except ValueError as e:
        return str(e)
    return None


def array_records(data: bytes) -> list[bytes]:
    """The records of an ArrayRecord file; the reader's RuntimeError / ValueError when cut."""
    from array_record.python import array_record_module

    with tempfile.NamedTemporaryFile(suffix=".array_record") as copy:
        copy.write(data)
        copy.flush()
        return list(array_record_module.ArrayRecordReader(copy.name).read_all())


def array_record_problem(data: bytes) -> str | None:
    """Why ``data`` is no complete ArrayRecord file (every record read back), or None."""
    try:
        array_records(data)
    except (RuntimeError, ValueError) as e:
        return f"does not read ({type(e).__name__}: {str(e)[:80]})"
    return None


def stablehlo_problem(data: bytes) -> str | None:
    """Why ``data`` is no complete serialized ``jax.export`` module, or None."""
    import jax

    try:
        jax.export.deserialize(bytearray(data))
    except Exception as e:  # flatbuffers raise anything on cut bytes
        return f"does not deserialize ({type(e).__name__})"
    return None


def sqlite_problem(data: bytes) -> str | None:
    """Why ``data`` is no sound SQLite database (its ``PRAGMA integrity_check``), or None."""
    import sqlite3

    with tempfile.NamedTemporaryFile(suffix=".db") as copy:
        copy.write(data)
        copy.flush()
        try:
            with contextlib.closing(sqlite3.connect(copy.name)) as db:
                (verdict,) = db.execute("PRAGMA integrity_check").fetchone()
        except sqlite3.DatabaseError as e:
            return f"not a SQLite database ({e})"
    return None if verdict == "ok" else f"integrity check: {verdict}"


def empty_problem(data: bytes) -> str | None:
    """A lock file: empty."""
    return None if not data else "a lock file with contents"


VALIDATORS: tuple[tuple[re.Pattern, Callable[[bytes], str | None]], ...] = (
    (re.compile(r"\.json$"), json_problem),
    (re.compile(r"\.csv$"), csv_problem),
    (re.compile(r"\.(txt|md|py)$"), text_problem),
    (re.compile(r"\.html$"), html_problem),
    (re.compile(r"\.png$"), png_problem),
    (re.compile(r"\.npz$"), npz_problem),
    (re.compile(r"(^|/)events\.out\.tfevents\.|\.tfrecord-\d+-of-\d+$"), tfrecord_problem),
    (re.compile(r"\.array_record-\d+-of-\d+$"), array_record_problem),
    (re.compile(r"\.stablehlo$"), stablehlo_problem),
    (re.compile(r"\.db$"), sqlite_problem),
    (re.compile(r"(^|/)\.[^/]*lock$"), empty_problem),
)


def incomplete(relative: str, data: bytes, reference: Reference) -> str | None:
    """Why the file ``relative`` holding ``data`` is not a complete version of itself, or None.

    Its format's check decides; a file of no known format must equal an uninterrupted run's.
    Files in checkpoints are judged by restoring the checkpoint (:func:`checkpoint_problems`).
    """
    if in_checkpoint(relative):
        return None
    for pattern, check in VALIDATORS:
        if pattern.search(relative):
            return check(data)
    if relative in reference.deterministic:
        same = alike(relative, data, reference.files[relative])
        return None if same else "differs from an uninterrupted run's"
    return "no format check, and an uninterrupted run writes it differently each time"


def alike(relative: str, data: bytes | None, other: bytes) -> bool:
    """Whether ``data`` holds what ``other`` holds (tfds example files: the same examples).

    TensorFlow serializes an ``Example``'s features in no fixed order: their records are
    compared after a deterministic serialization.
    """
    if data is None or data == other:
        return data is not None
    if EXAMPLES.search(relative):
        return examples(relative, data) == examples(relative, other)
    return False


def examples(relative: str, data: bytes) -> list[bytes] | None:
    """A tfds TFRecord / ArrayRecord file's ``Example`` records, serialized deterministically.

    None when they do not read.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up notes
    from tensorflow.core.example import example_pb2

    try:
        records = array_records(data) if "array_record" in relative else tfrecords(data)
    except (ValueError, RuntimeError):
        return None
    canonical = []
    for record in records:
        example = example_pb2.Example()
        example.ParseFromString(record)
        canonical.append(example.SerializeToString(deterministic=True))
    return canonical


def leftovers(root: Path, allowed: set[str], library: bool) -> list[str]:
    """Temp files and staging folders under ``root`` (the topmost of each), as problems.

    flaxmnist's own temp names always count; a hidden name counts unless its site pattern is
    one of ``allowed`` paths' (an uninterrupted run's, or those there before); Orbax's
    unfinished checkpoints count when ``library`` is true (after a rerun, whose checkpoint
    manager removes them).
    """
    found, known = [], {site_pattern(relative) for relative in allowed}
    for folder, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            relative = str((Path(folder) / name).relative_to(root))
            hidden = name.startswith(".") and site_pattern(relative) not in known
            if OWN_TEMP.search(name) or hidden or (library and LIBRARY_TEMP.search(name)):
                found.append(f"left {relative}")
                if name in dirs:
                    dirs.remove(name)
    return sorted(found)


def run_directories(root: Path) -> list[Path]:
    """The run directories under ``root`` holding a ``checkpoints`` folder."""
    return sorted(p.parent for p in root.rglob("checkpoints") if p.is_dir())


def checkpoint_problems(root: Path, before: dict[str, bytes]) -> list[str]:
    """Every finished checkpoint under ``root`` new since ``before`` that does not restore.

    Restoring checks the checksum of its arrays.
    """
    import flaxmnist

    problems = []
    for workdir in run_directories(root):
        for step in sorted(p for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()):
            if unchanged(step, root, before):
                continue
            try:
                flaxmnist.load_run(workdir, checkpoint=int(step.name))
            except Exception as e:  # any failure to restore is the verdict
                where = step.relative_to(root)
                problems.append(f"checkpoint {where} does not restore ({type(e).__name__})")
    return problems


def unchanged(folder: Path, root: Path, before: dict[str, bytes]) -> bool:
    """Whether ``folder`` holds exactly the files it held in the snapshot ``before``."""
    prefix = f"{folder.relative_to(root)}/"
    now = {prefix + relative: data for relative, data in snapshot(folder).items()}
    return now == {
        relative: data for relative, data in before.items() if relative.startswith(prefix)
    }


def digests(root: Path) -> dict[str, str]:
    """The final parameters' digest of every run directory under ``root``."""
    digest = fault_matrix().params_digest
    return {str(w.relative_to(root)): digest(w) for w in run_directories(root)}


def fault_matrix():
    """``experiments/faults.py`` as a module (its ``params_digest``)."""
    import importlib.util

    if "faults" not in sys.modules:
        path = Path(__file__).with_name("faults.py")
        spec = importlib.util.spec_from_file_location("faults", path)
        module = sys.modules["faults"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["faults"]


def state_problems(root: Path, before: dict[str, bytes], reference: Reference) -> list[str]:
    """What a failed command did wrong to ``root``: lost, cut or left files, bad checkpoints."""
    after = snapshot(root)
    problems = [f"lost {relative}" for relative in before.keys() - after.keys()]
    for relative, data in after.items():
        if before.get(relative) != data and (why := incomplete(relative, data, reference)):
            problems.append(f"{relative}: {why}")
    problems += leftovers(root, reference.paths | set(before), library=False)
    return problems + checkpoint_problems(root, before)


def output_patterns(files: dict[str, bytes]) -> set[str]:
    """The site patterns of ``files`` outside checkpoints (names with times, pids generalised)."""
    return {site_pattern(relative) for relative in files if not in_checkpoint(relative)}


def final_problems(root: Path, reference: Reference, exact: bool) -> list[str]:
    """How ``root`` differs from an uninterrupted run's end: outputs, temp files, parameters.

    Unless ``exact``, its files must be complete, not equal to the uninterrupted run's.
    """
    files = snapshot(root)
    if exact:
        problems = [
            f"{relative} {'differs from' if relative in files else 'missing, unlike'} an "
            "uninterrupted run's"
            for relative in sorted(reference.deterministic)
            if not alike(relative, files.get(relative), reference.files[relative])
        ]
    else:
        problems = [
            f"{relative}: {why}"
            for relative, data in files.items()
            if (why := incomplete(relative, data, reference))
        ]
    problems += [
        f"no {pattern}, unlike an uninterrupted run"
        for pattern in sorted(output_patterns(reference.files) - output_patterns(files))
    ]
    problems += leftovers(root, reference.paths, library=True)
    found = digests(root) if exact else reference.digests
    problems += [
        f"{workdir}: final parameters differ from an uninterrupted run's"
        for workdir, digest in reference.digests.items()
        if found.get(workdir) != digest
    ]
    return problems


# --- trials -----------------------------------------------------------------------------------


def make_template(ws: Workspace, scenario: Scenario) -> Path:
    """The trial folder as it is before ``scenario``'s command (kept under the shared folder)."""
    ws.reset(None)
    scenario.setup(ws.root, ws.shared)
    return ws.keep(f"template-{scenario.name}")


def discover(ws: Workspace, scenario: Scenario, template: Path) -> tuple[list[Site], Reference]:
    """The write sites of ``scenario``'s command, and what two uninterrupted runs of it leave.

    The first run counts the sites; files both runs write byte-identical are deterministic.
    """
    runs = []
    for count in (True, False):
        ws.reset(template)
        env = ws.plan() if count else temp_environment(ws.shared)
        outcome = run_command(scenario.argv(ws.root, ws.shared), env, scenario.timeout)
        if outcome.code != 0:
            raise RuntimeError(f"{scenario.name}: uninterrupted run failed: {outcome.last_line()}")
        runs.append(snapshot(ws.root))
        if count:
            sites, paths, found = sites_of(read_log(env)), all_paths(ws.root), digests(ws.root)
            if not sites:
                raise RuntimeError(f"{scenario.name}: the injector saw no write (not loaded?)")
    first, second = runs
    same = {
        relative for relative, data in first.items() if alike(relative, second.get(relative), data)
    }
    return sites, Reference(first, paths, same, found)


def hits_to_fail(site: Site, choices: tuple[str, ...]) -> list[int]:
    """The hits of ``site`` to fail: its ``first`` and / or ``last``."""
    return sorted({1 if choice == "first" else site.hits for choice in choices})


def run_trial(
    ws: Workspace, scenario: Scenario, template: Path, reference: Reference, trial: Trial
) -> Trial:
    """Runs ``scenario``'s command with ``trial``'s fault, judges it, reruns it; fills ``trial``."""
    start = time.monotonic()
    ws.reset(template)
    before = snapshot(ws.root)
    argv = scenario.argv(ws.root, ws.shared)
    env = ws.plan(trial.site, trial.hit, trial.kind)
    outcome = run_command(argv, env, scenario.timeout)
    ws.filler.unlink(missing_ok=True)  # the disk has room again
    trial.fired = any(
        line["site"] == trial.site and line["hit"] == trial.hit and line["action"] != PASS
        for line in read_log(env)
    )
    trial.code, trial.last_line = outcome.code, outcome.last_line()
    if trial.fired:
        trial.problems = state_problems(ws.root, before, reference)
        if outcome.code == 0:  # the fault was absorbed: only whole, equal outputs will do
            trial.notes.append("exit 0 after the fault")
            trial.problems += final_problems(ws.root, reference, scenario.exact)
        else:
            trial.problems += outcome.problems()
            trial.problems += rerun_problems(ws, scenario, reference)
    trial.seconds = time.monotonic() - start
    return trial


def rerun_problems(ws: Workspace, scenario: Scenario, reference: Reference) -> list[str]:
    """Reruns the command without faults: it must exit 0 and end as an uninterrupted run."""
    outcome = run_command(
        scenario.argv(ws.root, ws.shared), temp_environment(ws.shared), scenario.timeout
    )
    if outcome.code != 0:
        return [f"rerun: exit {outcome.code}: {outcome.last_line()}"]
    return [f"rerun: {p}" for p in final_problems(ws.root, reference, scenario.exact)]


@dataclasses.dataclass(frozen=True)
class Choice:
    """Which trials to run: the kinds of fault, the hits of each site, the sites (a regex)."""

    kinds: tuple[str, ...] = KINDS
    hits: tuple[str, ...] = HIT_CHOICES
    sites: str = ""


def planned_trials(scenario: Scenario, sites: list[Site], choice: Choice) -> list[Trial]:
    """A trial for every chosen site, kind and hit (only ``full`` at ``covered`` sites)."""
    return [
        Trial(scenario.name, site.key, hit, kind)
        for site in sites
        if re.search(choice.sites, site.key)
        for kind in choice.kinds
        if kind == "full" or not re.search(scenario.covered, site.key)
        for hit in hits_to_fail(site, choice.hits)
    ]


def run_scenario(
    ws: Workspace, scenario: Scenario, choice: Choice
) -> tuple[list[Site], list[Trial]]:
    """Finds ``scenario``'s sites and runs its trials, printing each verdict as it lands.

    Without a tmpfs, the ``full`` trials are left out.
    """
    from flaxmnist import console

    template = make_template(ws, scenario)
    sites, reference = discover(ws, scenario, template)
    console.say(f"[write faults] {scenario.name}: {len(sites)} write sites")
    if not ws.tmpfs:
        choice = dataclasses.replace(choice, kinds=tuple(k for k in choice.kinds if k != "full"))
    trials = planned_trials(scenario, sites, choice)
    for trial in trials:
        run_trial(ws, scenario, template, reference, trial)
        console.say(
            f"[write faults]   {trial.result:<11} {trial.kind:<6} hit {trial.hit} {trial.site}"
            + (f": {'; '.join(trial.problems)[:400]}" if trial.problems else "")
        )
    return sites, trials


# --- report -----------------------------------------------------------------------------------


def cell(trials: list[Trial]) -> str:
    """One table cell: the verdicts of a site's trials of one kind (first hit, then last)."""
    if not trials:
        return "-"
    return ", ".join(f"{t.result} (hit {t.hit})" if len(trials) > 1 else t.result for t in trials)


def table(sites: dict[str, list[Site]], trials: list[Trial], kinds: tuple[str, ...]) -> str:
    """The markdown table: a row per site, a column per kind of fault."""
    lines = [
        "| command | site | hits | " + " | ".join(kinds) + " |",
        "|---|---|---|" + "---|" * len(kinds),
    ]
    for scenario, found in sites.items():
        for site in found:
            mine = [t for t in trials if t.scenario == scenario and t.site == site.key]
            cells = [cell([t for t in mine if t.kind == kind]) for kind in kinds]
            lines.append(f"| {scenario} | `{site.key}` | {site.hits} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(sites: dict[str, list[Site]], trials: list[Trial]) -> str:
    """The markdown table of each command's sites and trial verdicts."""
    lines = [
        "| command | sites | trials | passed | failed | not reached | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for scenario, found in sites.items():
        mine = [t for t in trials if t.scenario == scenario]
        counts = collections.Counter(t.result for t in mine)
        lines.append(
            f"| {scenario} | {len(found)} | {len(mine)} | {counts['pass']} | {counts['FAIL']} "
            f"| {counts['not reached']} | {sum(t.seconds for t in mine) / 60:.0f} |"
        )
    return "\n".join(lines)


def summary(trials: list[Trial]) -> str:
    """``N trials: P passed, F failed, U not reached``."""
    counts = collections.Counter(t.result for t in trials)
    return (
        f"{len(trials)} trials: {counts['pass']} passed, {counts['FAIL']} failed, "
        f"{counts['not reached']} not reached"
    )


def revision() -> str:
    """The code's commit, ``-dirty`` when the working tree differs ("" outside a checkout)."""
    described = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    return described.stdout.strip()


def write_report(
    sites: dict[str, list[Site]], trials: list[Trial], kinds: tuple[str, ...], command: str
) -> None:
    """Writes the JSON results and the markdown table (``experiments/results/write_faults.*``)."""
    from flaxmnist.storage import files
    from flaxmnist.testing import machine_name

    header = {
        "command": command,
        "machine": machine_name(),
        "date": time.strftime("%Y-%m-%d"),
        "commit": revision(),
        "summary": summary(trials),
    }
    files.write_json_atomic(
        RESULTS_JSON,
        {
            **header,
            "sites": {
                name: [dataclasses.asdict(s) for s in found] for name, found in sites.items()
            },
            "trials": [{**dataclasses.asdict(t), "result": t.result} for t in trials],
        },
    )
    failures = [
        f"- {t.scenario}, {t.kind} at hit {t.hit} of `{t.site}`: exit {t.code}; "
        + "; ".join(t.problems)
        for t in trials
        if t.result == "FAIL"
    ]
    text = [
        "# Write faults",
        "",
        f"`{command}` on {header['machine']}, {header['date']} (commit {header['commit']}): "
        f"{header['summary']}.",
        "",
        summary_table(sites, trials),
        "",
        table(sites, trials, kinds),
        "",
        *(failures or ["No trial failed."]),
    ]
    files.write_text_atomic(RESULTS_MD, "\n".join(text) + "\n")


# --- command line -----------------------------------------------------------------------------


def define_flags(flag_values) -> None:
    """Defines the command's flags in ``flag_values`` (``flags.FLAGS`` when run as a script)."""
    from absl import flags

    flags.DEFINE_list("only", list(SCENARIOS), "Comma-separated commands.", flag_values=flag_values)
    flags.DEFINE_list("kinds", list(KINDS), "Comma-separated faults.", flag_values=flag_values)
    flags.DEFINE_list(
        "hits", list(HIT_CHOICES), "Which hit of each site fails.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "sites", "", "Only the sites matching this regular expression.", flag_values=flag_values
    )
    flags.DEFINE_boolean("keep", False, "Keep the drill's folder.", flag_values=flag_values)
    flags.DEFINE_boolean(
        "report", True, "Write experiments/results/write_faults.*.", flag_values=flag_values
    )


def check_choices(flag_values) -> None:
    """Raises ConfigError for an unknown command, kind or hit choice, or a bad ``--sites``."""
    from flaxmnist.errors import ConfigError

    for name, valid in (("only", SCENARIOS), ("kinds", KINDS), ("hits", HIT_CHOICES)):
        unknown = sorted(set(getattr(flag_values, name)) - set(valid))
        if unknown:
            raise ConfigError(f"--{name}: unknown {', '.join(unknown)}; valid: {', '.join(valid)}")
    try:
        re.compile(flag_values.sites)
    except re.error as e:
        raise ConfigError(f"--sites: not a regular expression ({e})") from None


def drill(flag_values) -> list[Trial]:
    """Runs the trials the parsed ``flag_values`` ask for; prints and writes the report."""
    from absl import logging

    from flaxmnist import console

    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint it restores
    choice = Choice(tuple(flag_values.kinds), tuple(flag_values.hits), flag_values.sites)
    shared = Path(tempfile.mkdtemp(prefix="flaxmnist-write-faults-"))
    ws = Workspace(shared)
    sites: dict[str, list[Site]] = {}
    trials: list[Trial] = []
    try:
        for name in flag_values.only:
            sites[name], mine = run_scenario(ws, SCENARIOS[name], choice)
            trials += mine
    finally:
        ws.close()
        if not flag_values.keep:
            shutil.rmtree(shared, ignore_errors=True)
    console.say(table(sites, trials, choice.kinds))
    console.say(summary(trials))
    if flag_values.report:
        write_report(sites, trials, choice.kinds, " ".join(["python", *sys.argv]))
    return trials


def main(argv: list[str]) -> None:
    """Runs the drill the command-line flags describe; exits 1 when a trial failed."""
    from absl import flags

    from flaxmnist import errors

    del argv  # cli.run refuses positional arguments
    sys.stdout.reconfigure(line_buffering=True)  # each verdict as it lands, even through a pipe
    with errors.reported(RESULTS_JSON.parent):
        check_choices(flags.FLAGS)
        trials = drill(flags.FLAGS)
    if any(t.result == "FAIL" for t in trials):
        sys.exit(1)


if __name__ == "__main__":
    from absl import flags

    from flaxmnist import cli

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwinds: the tmpfs is unmounted
    define_flags(flags.FLAGS)
    cli.run(main)
