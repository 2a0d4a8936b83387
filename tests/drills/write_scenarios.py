"""The write-fault drill's commands: each with the trial folder it starts from, and how one runs.

A :class:`Scenario` is a command under test (training, new and resumed; evaluation; export;
comparison; tfds preparation of IDX files, of a damaged dataset and of the stock ``mnist``; a
tuning study), all on the drill's small synthetic data; :func:`run_command` runs one, killing it
when it hangs.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from drills.common import REPO_ROOT, Outcome

TIMEOUT_S = 60  # a command here takes seconds: one still running is hung
HANG_S = 10  # a command still running this long after its error line is hung


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
    folder = root / "data" / "mnist"
    return python("-m", "flaxmnist.data", "prepare", "--datasets=mnist", f"--idx_dir={folder}")


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


def temp_environment(shared: Path) -> dict[str, str]:
    """The environment of every command: its temp files (a bug's error.log) in ``shared/tmp``."""
    (shared / "tmp").mkdir(exist_ok=True)
    return {"TMPDIR": str(shared / "tmp")}
