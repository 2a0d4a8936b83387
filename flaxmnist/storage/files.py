"""Atomic file writes (temp file + rename), so a crash or full disk never leaves half a file.

And :func:`disk_errors`, which gives a library's error for a failing disk its ``OSError``.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from flaxmnist.errors import FlaxmnistError

# The strerror texts that libraries writing files in native code (TensorFlow, TensorStore,
# ArrayRecord) put in the messages of the errors they raise for a failing disk.
DISK_ERROR_TEXTS = {
    os.strerror(code): code
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO)
}


def write_text_atomic(path: Path, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically, as :func:`write_bytes_atomic`."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())  # mkstemp creates 0600; use the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _current_umask() -> int:
    """The process umask; on Linux read from /proc, which leaves it untouched for other threads."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)  # elsewhere the only way to read it is to set it and put it back
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, obj: Any) -> None:
    """Writes ``obj`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_csv_atomic(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Writes dict rows (keys of the first row as the header) as CSV, atomically."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


@contextlib.contextmanager
def disk_errors(path: Path, texts: dict[str, int] = DISK_ERROR_TEXTS) -> Iterator[None]:
    """Turns an error whose message names a failing disk into ``OSError`` for ``path``.

    TensorFlow raises ``RuntimeError("... No space left on device")`` and the like for a write
    that fails in native code: as ``OSError`` it is the user's disk (one line, exit 2), not a
    bug. The texts looked for are ``texts`` (default :data:`DISK_ERROR_TEXTS`); a
    ``FlaxmnistError`` keeps its own message.
    """
    try:
        yield
    except (OSError, FlaxmnistError):
        raise
    except Exception as e:
        code = next((c for text, c in texts.items() if text in str(e)), None)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from None
