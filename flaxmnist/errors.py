"""Exceptions, and how the command-line tools turn any failure into one line and an exit status.

User errors (:class:`FlaxmnistError`, a full, read-only or failing disk) exit 2; a signal exits
128 + its number (:func:`exit_on_signals`); anything else, any other ``OSError`` included, is an
internal error: exit 1, its traceback appended to ``DIR/error.log``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


class FlaxmnistError(Exception):
    """A problem the user can fix (bad input, bad config, missing data); never a bug."""


class ConfigError(FlaxmnistError):
    """A config value is invalid or a name does not resolve in a registry."""


class DataError(FlaxmnistError):
    """Dataset files are missing, truncated, corrupt or cannot be downloaded."""


class DivergedError(FlaxmnistError):
    """The training loss became NaN or infinite (``nan_policy="stop"``)."""


RESUME_HINT = "rerun the same command to resume from the last checkpoint"


def exit_on_signals(hint: str = "") -> None:
    """From now on SIGINT / SIGTERM end the process at once: one line, exit 128 + signal.

    ``hint`` ends the line (``flaxmnist.train`` passes :data:`RESUME_HINT`).

    Never an exception raised from a signal handler: Python swallows one that lands in a garbage
    collector callback or a ``__del__``, and the signal is lost. An immediate exit is safe because
    every file of a run is written atomically and checkpoints survive ``kill -9`` (the fault
    matrix checks both). The epoch loop swaps in a handler that saves a checkpoint first
    (:class:`flaxmnist.training.interruption.InterruptFlag`).
    """
    handler = functools.partial(stop_now, hint=hint)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler)


def stop_now(signum: int, frame, hint: str = "") -> None:
    """A signal handler: one line on stderr, then exit 128 + ``signum`` without unwinding."""
    message = f"error: stopped by {signal.Signals(signum).name}" + (f"; {hint}" if hint else "")
    os.write(2, (message + "\n").encode())
    os._exit(128 + signum)


def exit_with_error(message: str, status: int = EXIT_USER_ERROR) -> None:
    """Prints ``error: message`` on stderr and exits with ``status`` (2 by default)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def one_line(error: BaseException | str) -> str:
    """``error``'s message with its lines joined (its type's name when it has none)."""
    return " ".join(str(error).split()) or type(error).__name__


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of ``error``'s message, cut to ``limit`` characters."""
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


# The errors of the user's disk, not of the program. EMFILE (too many open files) is not one: a
# file-descriptor leak is the likelier cause, and its traceback is what finds the leak.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
CANNOT_WRITE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.ENAMETOOLONG})
# The log is appended to, never through a symlink: a planted link would aim the write elsewhere.
LOG_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def disk_error_message(error: OSError, log_dir: Path | None) -> str | None:
    """The one line for a failure of the user's disk; None for any other ``OSError``.

    A ``ConnectionError`` is never the disk, whatever its errno.
    """
    if isinstance(error, ConnectionError):
        return None
    path = error.filename or log_dir or "the disk"
    if error.errno in NO_SPACE:
        return f"no space left for {path}{_details(error)}"
    if error.errno in CANNOT_WRITE:
        return f"cannot write {path}: {error.strerror or error}"
    if error.errno == errno.EIO:
        return f"input/output error on {path}{_details(error)}"
    return None


def _details(error: OSError) -> str:
    """What ``error``'s message adds to its errno's standard text (" (...)"), or ""."""
    standard, text = os.strerror(error.errno), error.strerror or ""
    extra = text[len(standard) :].strip(" :;,-") if text.startswith(standard) else ""
    if not extra or extra.startswith("("):
        return f" {extra}".rstrip()
    return f" ({extra})"


def write_traceback(log_dir: Path | None) -> Path:
    """Appends the current exception's traceback to ``log_dir/error.log``; returns the file.

    With no ``log_dir``, or where that file cannot be written (or is a symlink), the traceback
    goes to a new private file ``flaxmnist-error-*.log`` in the temp folder; where that fails
    too, to stderr.
    """
    text = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} ---\n"
    text += traceback.format_exc()
    if log_dir is not None:
        log = log_dir / "error.log"
        with contextlib.suppress(OSError):
            log_dir.mkdir(parents=True, exist_ok=True)
            _write_and_close(os.open(log, LOG_FLAGS, 0o644), text)
            return log
    with contextlib.suppress(OSError):
        fd, name = tempfile.mkstemp(prefix="flaxmnist-error-", suffix=".log")  # mode 0600
        _write_and_close(fd, text)
        return Path(name)
    traceback.print_exc()  # nowhere to write it: the terminal is the last resort
    return Path("<stderr above>")


def _write_and_close(fd: int, text: str) -> None:
    """Appends ``text`` to the open file ``fd``, then closes it."""
    with os.fdopen(fd, "a") as f:
        f.write(text)


@contextlib.contextmanager
def reported(log_dir: Path | None) -> Iterator[None]:
    """Turns every failure inside into one line on stderr and an exit status (see the module).

    ``log_dir`` gets ``error.log`` after an internal error: the command's own output folder. A
    command that only reads (``predict``) passes None and writes nothing into the run it reads.
    """
    try:
        yield
    except FlaxmnistError as e:
        exit_with_error(str(e), getattr(e, "exit_code", EXIT_USER_ERROR))
    except Exception as e:
        disk = disk_error_message(e, log_dir) if isinstance(e, OSError) else None
        if disk:
            exit_with_error(disk)
        # A bug or a library failure: one line here, the traceback in a file.
        log = write_traceback(log_dir)
        exit_with_error(
            f"internal error ({type(e).__name__}: {first_line(e)}); full traceback in {log}",
            EXIT_INTERNAL_ERROR,
        )
