"""How every failure of a command ends: one line on stderr and an exit status."""

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from flaxmnist import errors
from flaxmnist.errors import ConfigError


def _exit_of(failure: BaseException, log_dir, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_info, errors.reported(log_dir):
        raise failure
    return exit_info.value.code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize(
    ("failure", "status", "line"),
    [
        (ConfigError("batch_size must be positive, got 0"), 2, "error: batch_size must be"),
        (OSError(28, "No space left on device", "/d/ckpt"), 2, "error: no space left for /d/ckpt"),
    ],
)
def test_user_errors_end_in_one_line_and_exit_2(failure, status, line, tmp_path, capsys):
    code, lines = _exit_of(failure, tmp_path, capsys)
    assert code == status
    assert len(lines) == 1 and lines[0].startswith(line)
    assert not (tmp_path / "error.log").exists()


def test_an_internal_error_ends_in_one_line_and_keeps_its_traceback_in_error_log(tmp_path, capsys):
    code, lines = _exit_of(RuntimeError("boom\nsecond line"), tmp_path / "run", capsys)
    log = tmp_path / "run" / "error.log"
    assert code == 1
    assert lines == [f"error: internal error (RuntimeError: boom); full traceback in {log}"]
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "second line" in text


def test_a_second_internal_error_is_appended_to_the_log(tmp_path, capsys):
    for message in ("first", "second"):
        _exit_of(ValueError(message), tmp_path, capsys)
    text = (tmp_path / "error.log").read_text()
    assert text.count("Traceback") == 2 and "first" in text and "second" in text


def test_an_unwritable_log_folder_falls_back_to_a_temp_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))  # not the machine's /tmp
    (tmp_path / "temp").mkdir()
    (tmp_path / "file").write_text("a file where the run folder should be")
    code, lines = _exit_of(RuntimeError("boom"), tmp_path / "file" / "run", capsys)
    log = Path(lines[0].rsplit("full traceback in ", 1)[1])
    assert code == 1 and log.parent == tmp_path / "temp" and log.name.startswith("flaxmnist-error-")
    assert "RuntimeError: boom" in log.read_text()


def test_first_line_cuts_long_messages():
    assert errors.first_line(ValueError("x" * 300), limit=20) == "x" * 17 + "..."
    assert errors.first_line(ValueError("")) == ""


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("hint", ["", "rerun it"])
def test_a_signal_ends_the_process_at_once_in_one_line(signum, status, hint):
    code = (
        "import gc, os, time\n"
        "from flaxmnist import errors\n"
        f"errors.exit_on_signals({hint!r})\n"
        # Where an exception raised by a handler would be swallowed: a gc callback.
        f"gc.callbacks.append(lambda *args: os.kill(os.getpid(), {int(signum)}))\n"
        "gc.collect()\n"
        "time.sleep(5)\n"
        "print('still running')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == status
    assert result.stdout == ""
    suffix = f"; {hint}" if hint else ""
    assert result.stderr == f"error: stopped by {signal.Signals(signum).name}{suffix}\n"
