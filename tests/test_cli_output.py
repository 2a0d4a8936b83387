"""What commands leave behind when their output or their work fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from flaxmnist import errors
from flaxmnist.training import loop

SAYS_A_LOT = """
from absl import logging
from flaxmnist import cli, console

def main(argv):
    logging.set_verbosity(logging.WARNING)  # as every command does
    for i in range(100_000):
        console.say(f"line {i}")

cli.run(main)
"""


@pytest.mark.slow
def test_output_piped_into_a_reader_that_stops_early_ends_quietly():
    process = subprocess.Popen(
        [sys.executable, "-c", SAYS_A_LOT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline() == "line 0\n"
    process.stdout.close()  # as `| head -1` does
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 141
    assert stderr == ""


def test_without_a_log_folder_the_traceback_goes_to_a_private_temp_file(capsys):
    with pytest.raises(SystemExit) as exited, errors.reported(None):
        raise ZeroDivisionError("a bug")
    assert exited.value.code == 1
    line = capsys.readouterr().err.strip()
    log = Path(line.rsplit("full traceback in ", 1)[1])
    assert log.name.startswith("flaxmnist-error-") and "ZeroDivisionError" in log.read_text()
    assert log.stat().st_mode & 0o777 == 0o600
    log.unlink()


@pytest.mark.slow
def test_predict_failing_inside_writes_nothing_into_the_run_it_reads(tiny_config, tmp_path):
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    before = sorted(p.relative_to(tmp_path / "run") for p in (tmp_path / "run").rglob("*"))
    np.save(tmp_path / "digit.npy", np.zeros((28, 28), np.uint8))
    failing = (
        "import runpy\n"
        "from flaxmnist.evaluation import prediction\n"
        "prediction.predict_files = lambda *args, **kwargs: 1 / 0  # a bug inside\n"
        "runpy.run_module('flaxmnist.predict', run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", failing, f"--workdir={tmp_path / 'run'}", "digit.npy"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert "internal error (ZeroDivisionError" in result.stderr
    log = Path(result.stderr.strip().rsplit("full traceback in ", 1)[1])
    assert log.parent != tmp_path / "run" and log.exists()
    log.unlink()
    assert sorted(p.relative_to(tmp_path / "run") for p in (tmp_path / "run").rglob("*")) == before
