"""TensorBoard event files for a run (``WORKDIR/tensorboard``).

View them with ``tensorboard --logdir runs/``. Scalars: per epoch ``train/loss``,
``train/accuracy``, ``val/loss``, ``val/accuracy``, ``learning_rate``, ``epoch_time_s`` (x-axis:
epoch), and ``step/loss`` every ``log_every_steps`` optimizer steps (x-axis: step).

The file is written here, not by a library, because none writes it without TensorFlow or
PyTorch: ``tensorboard``'s own ``EventFileWriter`` reaches its file system through
``tensorboard.compat.tf``, which imports TensorFlow wherever it is installed (tensorboard 2.21:
writing one event imported it), and tensorboardX imports PyTorch wherever that is installed
(Colab, a benchmark machine); either import would add seconds to every run's start-up. An event
file of scalars is little: TFRecord framing (length, masked CRC-32C) around ``Event`` protocol
buffers with three fields, encoded below as the protobuf wire format defines them. It is
rewritten whole and atomically at each flush, so a failed write leaves the last flushed file.
"""

from __future__ import annotations

import os
import socket
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


class EventFile:
    """A TensorBoard event file, one per process (named as TensorFlow names them).

    Its records are kept in memory and each :meth:`flush` rewrites the whole file atomically
    (temp file + rename), so a crash or a full disk leaves the last flushed version, never a cut
    record. A run's scalars take some kilobytes (about 40 bytes a scalar).
    """

    def __init__(self, logdir: Path):
        logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = logdir / name
        self._records = bytearray(tfrecord(event(time.time())))
        self._flushed = 0  # how many bytes of the records the file holds

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        """Adds one scalar (to the file at the next flush)."""
        self._records += tfrecord(event(time.time(), step=step, tag=tag, value=float(value)))

    def flush(self) -> None:
        """Rewrites the file with every record so far (atomically), if any is new."""
        if len(self._records) > self._flushed:
            files.write_bytes_atomic(self.path, bytes(self._records))
            self._flushed = len(self._records)

    def close(self) -> None:
        """Flushes the file."""
        self.flush()


class ScalarLog:
    """Appends epoch and step scalars to the run's TensorBoard log (``enabled=False``: nothing).

    The event file is created with the first scalar, so a run refused at start leaves none.
    """

    def __init__(self, logdir: Path, log_every_steps: int, *, enabled: bool = True):
        self.logdir, self.enabled = logdir, enabled
        self.log_every_steps = log_every_steps
        self._writer = None

    def writer(self) -> EventFile:
        """The event file, made on first use (at the end of the first epoch)."""
        if self._writer is None:
            self._writer = EventFile(self.logdir)
        return self._writer

    def epoch(self, record: dict[str, Any]) -> None:
        """Writes one history record's scalars at x = its epoch."""
        if not self.enabled:
            return
        writer = self.writer()
        for field, tag in EPOCH_SCALARS.items():
            if field in record:
                writer.add_scalar(tag, record[field], record["epoch"])
        writer.flush()

    def steps(self, rows: list[dict[str, Any]]) -> None:
        """Writes the loss of every ``log_every_steps``-th step among ``rows``."""
        if not self.enabled or self.log_every_steps <= 0:
            return
        writer = self.writer()
        for row in rows:
            if row["step"] % self.log_every_steps == 0:
                writer.add_scalar("step/loss", row["loss"], row["step"])
        writer.flush()

    def close(self) -> None:
        """Flushes the event file (if one was made)."""
        if self._writer is not None:
            self._writer.close()
