import pytest
from absl import flags
from helpers import load_experiment, parsed_flags, run_script

sweep = load_experiment("sweep")


def parsed(*args: str) -> flags.FlagValues:
    return parsed_flags(sweep, *args)


def test_parse_values_and_points():
    assert sweep.parse_values("learning_rate=0.001,0.01") == ("learning_rate", [0.001, 0.01])
    assert sweep.parse_values("schedule=cosine,constant") == ("schedule", ["cosine", "constant"])
    grid = {"a": [1, 2], "b": ["x", "y", "z"]}
    points = sweep.sweep_points(grid, None, 0)
    assert len(points) == 6 and {"a": 2, "b": "z"} in points
    sampled = sweep.sweep_points(grid, 3, seed=1)
    assert len(sampled) == 3 and sampled == sweep.sweep_points(grid, 3, seed=1)
    assert sweep.run_name({"lr": 0.1, "b": 2}) == "b=2,lr=0.1"


def test_flags_repeat_per_field_and_bad_fields_fail_before_training(tmp_path, capsys):
    flag_values = parsed(
        f"--out={tmp_path}", "--grid=learning_rate=0.001,0.003", "--grid=batch_size=32,128"
    )
    assert flag_values.grid == ["learning_rate=0.001,0.003", "batch_size=32,128"]
    assert (flag_values.config, flag_values.set, flag_values.random) == ("default", [], None)
    for args, message in [
        (["--grid=learning_rate"], "error: --grid: expected FIELD=VALUE[,VALUE...]"),
        (["--grid=learning_rate=1", "--set=num_epochs"], "error: --set: expected FIELD=VALUE"),
        (["--grid=no_such_field=1"], "error: preset 'default' has no config field no_such_field"),
        (["--grid=learning_rate=1", "--config=nope"], "error: --config: unknown preset 'nope'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            sweep.sweep(parsed(f"--out={tmp_path}", *args))
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.startswith(message)
    assert list(tmp_path.iterdir()) == []  # nothing trained


@pytest.mark.slow
def test_a_bad_flag_is_one_line_and_exit_2():
    result = run_script("experiments/sweep.py", "--out=unused", "--grid=a=1", "--random=x")
    assert result.returncode == 2
    assert result.stderr == "error: --random: expected an integer, got 'x'\n"


@pytest.mark.slow
def test_sweep_trains_each_point_once_and_sorts_by_validation(synthetic_data_dir, tmp_path):
    fixed = {
        "data_dir": str(synthetic_data_dir),
        "num_epochs": 1,
        "batch_size": 32,
        "eval_batch_size": 64,
        "compilation_cache_dir": "",
    }
    points = sweep.sweep_points({"learning_rate": [1e-4, 3e-3]}, None, 0)
    rows = sweep.run_sweep("cnn_simple", tmp_path, points, fixed)
    assert [r["val_accuracy"] for r in rows] == sorted(
        (r["val_accuracy"] for r in rows), reverse=True
    )
    assert (tmp_path / "results.md").read_text().startswith("| learning_rate | val_accuracy |")
    again = sweep.run_sweep("cnn_simple", tmp_path, points, fixed)  # resumes: nothing retrained
    assert again == rows
