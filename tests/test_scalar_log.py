"""The TensorBoard event files: their checksums and encoding, read back by TensorFlow."""

import numpy as np
import pytest

from flaxmnist.storage import scalar_log


def test_crc32c_of_the_standard_check_string():
    # CRC-32C("123456789") = 0xE3069283 (RFC 3720 appendix B.4); masked as TFRecord masks it.
    crc = 0xE3069283
    assert scalar_log.masked_crc32c(b"123456789") == (
        (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    )


HISTORY = [{"epoch": 1, "train_loss": 0.5, "val_accuracy": 0.987654, "not_a_scalar": 3}]
STEPS = [{"step": 299, "loss": 9.0}, {"step": 300, "loss": 2.25}]


@pytest.mark.slow  # TensorFlow's import
def test_events_read_back_by_tensorflow_hold_every_scalar_of_the_log(tmp_path):
    tf = pytest.importorskip("tensorflow")
    written = [("train/loss", 0.5, 1), ("val/accuracy", 0.987654, 1), ("step/loss", 2.25, 300)]
    scalar_log.write_event_file(tmp_path / "tb", HISTORY, STEPS, log_every_steps=100)
    (event_file,) = (tmp_path / "tb").glob("*tfevents*")
    events = list(tf.compat.v1.train.summary_iterator(str(event_file)))  # checks every CRC
    assert events[0].file_version == "brain.Event:2"
    read = [(v.tag, v.simple_value, e.step) for e in events[1:] for v in e.summary.value]
    assert [(tag, step) for tag, _, step in read] == [(tag, step) for tag, _, step in written]
    np.testing.assert_allclose([v for _, v, _ in read], [v for _, v, _ in written], rtol=1e-7)
    assert all(e.wall_time > 1e9 for e in events)


def test_the_event_file_is_rewritten_whole_from_the_log_each_time(tmp_path):
    logdir = tmp_path / "tb"
    scalar_log.write_event_file(logdir, HISTORY, STEPS, log_every_steps=100)
    first = (logdir / scalar_log.EVENT_FILE).read_bytes()
    longer = [*HISTORY, {"epoch": 2, "train_loss": 0.25}]
    scalar_log.write_event_file(logdir, longer, STEPS, log_every_steps=100)
    second = (logdir / scalar_log.EVENT_FILE).read_bytes()
    assert [p.name for p in logdir.iterdir()] == [scalar_log.EVENT_FILE]  # one file, no temp
    records = scalar_log.event_records(longer, STEPS, log_every_steps=100)
    assert len(second) == sum(len(r) for r in records) and len(records) == 1 + 3 + 1
    assert len(second) > len(first)
    assert len(scalar_log.event_records(HISTORY, STEPS, log_every_steps=0)) == 1 + 2
