import pytest
from helpers import load_experiment

sweep = load_experiment("sweep")


def test_parse_values_and_points():
    assert sweep.parse_values("learning_rate=0.001,0.01") == ("learning_rate", [0.001, 0.01])
    assert sweep.parse_values("schedule=cosine,constant") == ("schedule", ["cosine", "constant"])
    grid = {"a": [1, 2], "b": ["x", "y", "z"]}
    points = sweep.sweep_points(grid, None, 0)
    assert len(points) == 6 and {"a": 2, "b": "z"} in points
    sampled = sweep.sweep_points(grid, 3, seed=1)
    assert len(sampled) == 3 and sampled == sweep.sweep_points(grid, 3, seed=1)
    assert sweep.run_name({"lr": 0.1, "b": 2}) == "b=2,lr=0.1"


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
