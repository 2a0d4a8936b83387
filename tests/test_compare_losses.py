import json
import subprocess

import pytest
from helpers import load_experiment

compare_losses = load_experiment("compare_losses")


def test_parse_loss_and_up_front_checks():
    assert compare_losses.parse_loss("focal:gamma=1.0,") == ("focal", "gamma=1.0,")
    assert compare_losses.parse_loss("hinge") == ("hinge", "")
    compare_losses.check_losses(["focal:gamma=1.0", "scheduled_smoothing:steps=10"])
    with pytest.raises(SystemExit):  # argparse error, before any training
        compare_losses.parse_args(["--losses", "focal:alpha=1"])


@pytest.mark.slow
def test_compare_losses_end_to_end_on_synthetic_data(
    synthetic_data_dir, tmp_path, monkeypatch, capsys
):
    argv = [
        "--epochs=1",
        f"--runs={tmp_path / 'runs'}",
        f"--out={tmp_path / 'results'}",
        "--losses",
        "cross_entropy",
        "scheduled_smoothing:start=0.2,end=0.0,steps=10",
        "--set",
        f"data_dir={synthetic_data_dir}",
        "batch_size=32",
        "eval_batch_size=50",
        "compilation_cache_dir=",
    ]
    compare_losses.main(argv)
    table = capsys.readouterr().out
    assert "| `scheduled_smoothing:start=0.2,end=0.0,steps=10` |" in table
    record = json.loads((tmp_path / "results" / "loss_comparison.json").read_text())
    rows = record["rows"]
    assert [r["loss"] for r in rows] == ["cross_entropy", argv[5]]
    for row in rows:
        (run,) = row["runs"]
        trained = json.loads(
            (
                tmp_path / "runs" / "cnn_simple-1ep" / f"{row['loss']}-seed0" / "metrics.json"
            ).read_text()
        )
        assert run["test_accuracy"] == pytest.approx(trained["test_accuracy"])  # same checkpoint
        assert 0.0 <= row["ece"] <= 1.0 and row["test_nll"] > 0.0
        assert sum(row["reliability"]["count"]) == 100  # every synthetic test image, one bin each
    assert (tmp_path / "results" / "loss_comparison.md").read_text().count("\n| `") == 2
    assert (tmp_path / "results" / "loss_comparison.png").stat().st_size > 10_000

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(subprocess, "run", no_training)
    compare_losses.main(argv)  # resumes: every run is reused
    assert json.loads((tmp_path / "results" / "loss_comparison.json").read_text()) == record
