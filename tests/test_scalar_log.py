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


@pytest.mark.slow  # TensorFlow's import
def test_events_read_back_by_tensorflow_hold_every_scalar(tmp_path):
    tf = pytest.importorskip("tensorflow")
    written = [("train/loss", 0.5, 1), ("val/accuracy", 0.987654, 1), ("step/loss", 2.25, 300)]
    log = scalar_log.ScalarLog(tmp_path / "tb", log_every_steps=100)
    log.epoch({"epoch": 1, "train_loss": 0.5, "val_accuracy": 0.987654, "not_a_scalar": 3})
    log.steps([{"step": 299, "loss": 9.0}, {"step": 300, "loss": 2.25}])
    log.close()
    (event_file,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    events = list(tf.compat.v1.train.summary_iterator(str(event_file)))  # checks every CRC
    assert events[0].file_version == "brain.Event:2"
    read = [(v.tag, v.simple_value, e.step) for e in events[1:] for v in e.summary.value]
    assert [(tag, step) for tag, _, step in read] == [(tag, step) for tag, _, step in written]
    np.testing.assert_allclose([v for _, v, _ in read], [v for _, v, _ in written], rtol=1e-7)
    assert all(e.wall_time > 1e9 for e in events)


def test_a_disabled_log_writes_nothing(tmp_path):
    log = scalar_log.ScalarLog(tmp_path / "tb", log_every_steps=1, enabled=False)
    log.epoch({"epoch": 1, "train_loss": 0.5})
    log.close()
    assert not (tmp_path / "tb").exists()
