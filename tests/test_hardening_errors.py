"""Error logs never follow a planted symlink; only the user's disk is a user error (exit 2)."""

import errno
import os
import stat
import tempfile
from pathlib import Path

import pytest

from flaxmnist import errors


def _log_a_traceback(log_dir: Path) -> Path:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        return errors.write_traceback(log_dir)


@pytest.fixture
def private_tempdir(tmp_path, monkeypatch) -> Path:
    """The folder ``tempfile`` uses, inside the test's own."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_a_symlinked_error_log_is_not_written_through(tmp_path, private_tempdir):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "error.log").symlink_to(victim)
    log = _log_a_traceback(tmp_path / "run")
    assert victim.read_text() == "precious"
    assert log.parent == private_tempdir and log.name.startswith("flaxmnist-error-")
    assert log.suffix == ".log" and "RuntimeError: boom" in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_the_fallback_log_is_a_fresh_file_not_a_planted_symlink(tmp_path, private_tempdir):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (private_tempdir / f"flaxmnist-error-{os.getpid()}.log").symlink_to(victim)
    (tmp_path / "file").write_text("a file where the run folder should be")
    log = _log_a_traceback(tmp_path / "file" / "run")
    assert victim.read_text() == "precious"
    assert not log.is_symlink() and "RuntimeError: boom" in log.read_text()


def test_a_new_error_log_is_created_with_mode_644_less_the_umask(tmp_path):
    old_mask = os.umask(0o022)
    try:
        log = _log_a_traceback(tmp_path / "run")
    finally:
        os.umask(old_mask)
    assert log == tmp_path / "run" / "error.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o644


def _exit_of(failure: BaseException, log_dir, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_info, errors.reported(log_dir):
        raise failure
    return exit_info.value.code, capsys.readouterr().err.splitlines()


def _os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code), "/d/ckpt")


@pytest.mark.parametrize(
    ("code", "line"),
    [
        (errno.ENOSPC, "error: no space left for /d/ckpt"),
        (errno.EDQUOT, "error: no space left for /d/ckpt"),
        (errno.EROFS, "error: cannot write /d/ckpt: Read-only file system"),
        (errno.EACCES, "error: cannot write /d/ckpt: Permission denied"),
        (errno.EPERM, "error: cannot write /d/ckpt: Operation not permitted"),
        (errno.EIO, "error: input/output error on /d/ckpt"),
        (errno.EFBIG, "error: cannot write /d/ckpt: File too large"),
        (errno.ENAMETOOLONG, "error: cannot write /d/ckpt: File name too long"),
    ],
)
def test_a_disk_failure_is_one_line_by_its_cause_and_exit_2(code, line, tmp_path, capsys):
    status, lines = _exit_of(_os_error(code), tmp_path, capsys)
    assert status == 2 and lines == [line]
    assert not (tmp_path / "error.log").exists()


@pytest.mark.parametrize(
    ("strerror", "line"),
    [
        (
            "No space left on device (a checkpoint needs about 2299 KiB, 24 KiB free)",
            "error: no space left for /d/ckpt (a checkpoint needs about 2299 KiB, 24 KiB free)",
        ),
        ("No space left on device: 3 KiB free", "error: no space left for /d/ckpt (3 KiB free)"),
        ("disk full", "error: no space left for /d/ckpt"),
    ],
)
def test_a_full_disk_keeps_what_its_message_adds_to_the_standard_text(strerror, line, capsys):
    status, lines = _exit_of(OSError(errno.ENOSPC, strerror, "/d/ckpt"), "/run", capsys)
    assert status == 2 and lines == [line]


def test_a_disk_failure_without_a_file_name_names_the_log_folder(tmp_path, capsys):
    status, lines = _exit_of(OSError(errno.ENOSPC, "No space left"), tmp_path, capsys)
    assert status == 2 and lines == [f"error: no space left for {tmp_path}"]


@pytest.mark.parametrize(
    ("failure", "name"),
    [
        (_os_error(errno.ENOENT), "FileNotFoundError"),
        (_os_error(errno.EMFILE), "OSError"),
        (OSError(errno.ECONNREFUSED, "Connection refused"), "ConnectionRefusedError"),
        (ConnectionError(errno.EIO, "Input/output error"), "ConnectionError"),
        (OSError("no errno at all"), "OSError"),
    ],
    ids=["ENOENT", "EMFILE", "ECONNREFUSED", "connection-with-disk-errno", "no-errno"],
)
def test_any_other_os_error_is_an_internal_error_with_its_traceback(
    failure, name, tmp_path, capsys
):
    status, lines = _exit_of(failure, tmp_path, capsys)
    log = tmp_path / "error.log"
    assert status == 1 and len(lines) == 1
    assert lines[0].startswith(f"error: internal error ({name}: ")
    assert lines[0].endswith(f"); full traceback in {log}")
    assert f"{name}:" in log.read_text()
