"""The write-fault drill's judge: what a failed command left, and how a rerun ends.

Every file is checked by its format (JSON, CSV, TFRecord framing and CRCs, PNG end chunk,
``np.load``, ``jax.export.deserialize``, SQLite's integrity check, ...; a file of no known format
must equal an uninterrupted run's), checkpoints by restoring them; temp files and staging folders
left behind are problems too. :func:`state_problems` judges a trial folder right after the
failed command, :func:`final_problems` after a command or its rerun exits 0.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import re
import sqlite3
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

import flaxmnist
from drills.common import snapshot, state_digest
from drills.injector import site_pattern
from flaxmnist.storage.scalar_log import masked_crc32c

OWN_TEMP = re.compile(r"^\..+\.tmp$|^\.flaxmnist-staging-|^\..+\.old$")
LIBRARY_TEMP = re.compile(r"orbax-checkpoint-tmp")
EXAMPLES = re.compile(r"\.(tfrecord|array_record)-\d+-of-\d+$")  # a tfds dataset's examples


@dataclasses.dataclass
class Reference:
    """What an uninterrupted command leaves, and which of its files it always writes alike."""

    files: dict[str, bytes]
    paths: set[str]
    deterministic: set[str]
    digests: dict[str, str]  # run directory -> digest of its final parameters


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
    try:
        with np.load(io.BytesIO(data)) as archive:
            for name in archive.files:
                archive[name]
    except Exception as e:  # zipfile and numpy raise many kinds for a cut archive
        return f"does not load ({type(e).__name__})"
    return None


def tfrecords(data: bytes) -> list[bytes]:
    """The records of a TFRecord file; ValueError for a cut record or a wrong CRC."""
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
    try:
        jax.export.deserialize(bytearray(data))
    except Exception as e:  # flatbuffers raise anything on cut bytes
        return f"does not deserialize ({type(e).__name__})"
    return None


def sqlite_problem(data: bytes) -> str | None:
    """Why ``data`` is no sound SQLite database (its ``PRAGMA integrity_check``), or None."""
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
    """The final state's digest of every run directory under ``root``."""
    return {str(w.relative_to(root)): state_digest(w) for w in run_directories(root)}


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
