"""The run's TensorBoard event file (``WORKDIR/tensorboard``), derived from its history.

View it with ``tensorboard --logdir runs/``. Scalars: per epoch ``train/loss``,
``train/accuracy``, ``val/loss``, ``val/accuracy``, ``learning_rate``, ``epoch_time_s`` (x-axis:
epoch), and ``step/loss`` every ``log_every_steps`` optimizer steps (x-axis: step).

The run's log is its history (``history.json``) and per-step log (``steps.csv``); the event file
holds nothing else. :func:`write_event_file` writes it whole from them, atomically, each time
they are written: one file per run, whose scalars are always those of ``history.json`` (a
resumed run rewrites it with every epoch, never a second file with some of them).

The file is written here, not by a library, because none writes it without TensorFlow or
PyTorch: ``tensorboard``'s own ``EventFileWriter`` reaches its file system through
``tensorboard.compat.tf``, which imports TensorFlow wherever it is installed (tensorboard 2.21:
writing one event imported it), and tensorboardX imports PyTorch wherever that is installed
(Colab, a benchmark machine); either import would add seconds to every run's start-up. An event
file of scalars is little: TFRecord framing (length, masked CRC-32C) around ``Event`` protocol
buffers with three fields, encoded below as the protobuf wire format defines them.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

from flaxmnist.storage import files

EPOCH_SCALARS = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "val_loss": "val/loss",
    "val_accuracy": "val/accuracy",
    "learning_rate": "learning_rate",
    "epoch_time_s": "epoch_time_s",
}


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # Castagnoli, reflected
        table.append(crc)
    return table


CRC32C_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C of ``data``, rotated and offset."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """``data`` framed as one TFRecord."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    """One protobuf field: its key, then ``payload`` (length-prefixed for wire type 2)."""
    if wire_type == 2:
        payload = _varint(len(payload)) + payload
    return _varint(number << 3 | wire_type) + payload


def event(wall_time: float, *, step: int = 0, tag: str = "", value: float = 0.0) -> bytes:
    """An ``Event`` holding one scalar ``tag`` (or, without a tag, the file-version event).

    ``Event``: wall_time = 1 (double), step = 2 (int64), file_version = 3, summary = 5;
    ``Summary``: value = 1; ``Summary.Value``: tag = 1, simple_value = 2 (float).
    """
    message = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if not tag:
        return message + _field(3, 2, b"brain.Event:2")
    scalar = _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", value))
    return message + _field(5, 2, _field(1, 2, scalar))


EVENT_FILE = "events.out.tfevents.flaxmnist"  # TensorBoard reads files named *tfevents*


def event_records(
    history: list[dict[str, Any]], step_log: list[dict[str, Any]], log_every_steps: int
) -> list[bytes]:
    """The events of a run's scalars, each framed as a TFRecord, the file-version event first.

    Args:
      history: the per-epoch records (``history.json``'s).
      step_log: the per-step rows (``steps.csv``'s).
      log_every_steps: the step interval of ``step/loss`` (0: none).

    Returns:
      The records in order: each epoch's scalars, then every ``log_every_steps``-th step's loss.
      Their wall time is the time of writing.
    """
    now = time.time()
    scalars = [
        (tag, record[field], record["epoch"])
        for record in history
        for field, tag in EPOCH_SCALARS.items()
        if field in record
    ]
    if log_every_steps > 0:
        scalars += [
            ("step/loss", row["loss"], row["step"])
            for row in step_log
            if row["step"] % log_every_steps == 0
        ]
    events = [event(now), *(event(now, step=s, tag=tag, value=float(v)) for tag, v, s in scalars)]
    return [tfrecord(e) for e in events]


def write_event_file(
    logdir: Path,
    history: list[dict[str, Any]],
    step_log: list[dict[str, Any]],
    log_every_steps: int,
) -> None:
    """Writes ``logdir/`` :data:`EVENT_FILE` whole from the run's log, atomically.

    A failed write (a full disk) leaves the file as it was.
    """
    logdir.mkdir(parents=True, exist_ok=True)
    records = event_records(history, step_log, log_every_steps)
    files.write_bytes_atomic(logdir / EVENT_FILE, b"".join(records))
