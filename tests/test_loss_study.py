import json
import subprocess

import pytest
from absl import flags
from helpers import load_experiment, parsed_flags, run_script

loss_study = load_experiment("loss_study")


def parsed(*args: str) -> flags.FlagValues:
    return parsed_flags(loss_study, *args)


def test_parse_loss_and_up_front_checks(tmp_path, capsys):
    assert loss_study.parse_loss("focal:gamma=1.0,") == ("focal", "gamma=1.0,")
    assert loss_study.parse_loss("hinge") == ("hinge", "")
    loss_study.check_losses(["focal:gamma=1.0", "scheduled_smoothing:steps=10"])
    assert parsed().losses == list(loss_study.DEFAULT_LOSSES) and parsed().seeds == [0]
    for args, message in [
        (["--losses=focal:alpha=1"], "error: loss 'focal' rejects options"),
        (["--preset=nope"], "error: --preset: unknown preset 'nope'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:  # before any training
            loss_study.loss_study(parsed(f"--runs={tmp_path}", f"--out={tmp_path}", *args))
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.startswith(message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_bad_flag_is_one_line_and_exit_2():
    result = run_script("experiments/loss_study.py", "--seeds=0", "--seeds=one")
    assert (result.returncode, result.stderr) == (
        2,
        "error: --seeds: expected an integer, got 'one'\n",
    )


@pytest.mark.slow
def test_loss_study_end_to_end_on_synthetic_data(synthetic_data_dir, tmp_path, monkeypatch, capsys):
    smoothing = "scheduled_smoothing:start=0.2,end=0.0,steps=10"
    flag_values = parsed(
        "--epochs=1",
        f"--runs={tmp_path / 'runs'}",
        f"--out={tmp_path / 'results'}",
        "--losses=cross_entropy",
        f"--losses={smoothing}",
        f"--set=data_dir={synthetic_data_dir}",
        "--set=batch_size=32",
        "--set=eval_batch_size=50",
        "--set=compilation_cache_dir=",
    )
    loss_study.loss_study(flag_values)
    table = capsys.readouterr().out
    assert f"| `{smoothing}` |" in table
    record = json.loads((tmp_path / "results" / "loss_comparison.json").read_text())
    rows = record["rows"]
    assert [r["loss"] for r in rows] == ["cross_entropy", smoothing]
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
    loss_study.loss_study(flag_values)  # resumes: every run is reused
    assert json.loads((tmp_path / "results" / "loss_comparison.json").read_text()) == record
