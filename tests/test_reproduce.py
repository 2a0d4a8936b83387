import json

import pytest
from absl import flags
from helpers import load_experiment, parsed_flags, run_script

reproduce = load_experiment("reproduce")


def parsed(*args: str) -> flags.FlagValues:
    return parsed_flags(reproduce, *args)


def _metrics(accuracy: float, train_time: float, backend: str = "cpu") -> dict:
    return {
        "test_accuracy": accuracy,
        "num_params": 308_746,
        "train_time_s": train_time,
        "total_time_s": train_time + 10,
        "backend": backend,
        "device_kind": "NVIDIA H200" if backend == "gpu" else "cpu",
    }


def test_summarize_takes_mean_std_and_the_fastest_seed():
    results = [_metrics(0.9971, 89.1, "gpu"), _metrics(0.9965, 48.8, "gpu"), _metrics(0.9967, 48.6)]
    row = reproduce.summarize("resnet_mnist", results)
    assert row["accuracy_mean"] == pytest.approx(99.67666, abs=1e-4)
    # Sample standard deviation of 99.71, 99.65, 99.67: sqrt((0.0011² + ...)/2) = 0.0306.
    assert row["accuracy_std"] == pytest.approx(0.030551, abs=1e-5)
    assert row["train_time_s"] == 48.6 and row["total_time_s"] == 58.6 and row["seeds"] == 3
    assert row["device"] == "NVIDIA H200 (gpu)"
    assert row["reported"] == ">= 99.6 % (goal)" and row["reported_min"] == 99.6
    assert "warmup_cosine" in row["recipe"] and row["recipe"].endswith("30 epochs, augmented")


def test_markdown_table_marks_met_goals_and_names_the_device():
    met = {**reproduce.summarize("fast", [_metrics(0.9918, 120.0)]), "preset": "fast"}
    missed = {**met, "preset": "convnet", "reported_min": 99.25, "accuracy_mean": 99.19}
    unreported = {**missed, "preset": "mlp", "reported_min": None, "device": "AMD EPYC, 2 cores"}
    lines = reproduce.markdown_table([met, missed, unreported]).splitlines()
    assert lines[2].startswith("| `fast` | 308,746 |") and lines[2].endswith("cores | yes |")
    assert "| 99.18 % | 1 | 120 s |" in lines[2]
    assert lines[3].endswith("| no |")
    assert lines[4].endswith("| AMD EPYC, 2 cores | - |")


def test_run_all_groups_concurrent_runs_by_preset(monkeypatch, tmp_path):
    calls = []

    def fake_run(preset, seed, runs, log_to_file=False):
        calls.append((preset, seed, log_to_file))
        return {"preset": preset, "seed": seed}

    monkeypatch.setattr(reproduce, "run_preset", fake_run)
    grouped = reproduce.run_all(["a", "b"], [0, 1], tmp_path, jobs=3)
    assert grouped == {
        "a": [{"preset": "a", "seed": 0}, {"preset": "a", "seed": 1}],
        "b": [{"preset": "b", "seed": 0}, {"preset": "b", "seed": 1}],
    }
    assert sorted(calls) == [("a", 0, True), ("a", 1, True), ("b", 0, True), ("b", 1, True)]
    calls.clear()
    reproduce.run_all(["a"], [0], tmp_path, jobs=1)
    assert calls == [("a", 0, False)]


def test_run_preset_logs_to_a_file_and_reuses_finished_runs(monkeypatch, tmp_path):
    seen = {}

    def fake_subprocess_run(command, check, stdout=None, stderr=None, env=None):
        seen.update(command=command, env=env, log=stdout.name)
        workdir = tmp_path / "dense-seed4"
        workdir.mkdir()
        (workdir / "metrics.json").write_text(json.dumps({"test_accuracy": 0.97}))

    monkeypatch.setattr(reproduce.subprocess, "run", fake_subprocess_run)
    assert reproduce.run_preset("dense", 4, tmp_path, log_to_file=True) == {"test_accuracy": 0.97}
    assert seen["command"][-3:] == [
        "--config=dense",
        "--config.seed=4",
        f"--workdir={tmp_path / 'dense-seed4'}",
    ]
    assert seen["env"]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert seen["log"] == str(tmp_path / "dense-seed4.log")

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(reproduce.subprocess, "run", must_not_run)
    assert reproduce.run_preset("dense", 4, tmp_path)["test_accuracy"] == 0.97


@pytest.mark.parametrize(
    ("presets", "args", "message"),
    [
        (["dense", "nope"], [], "error: unknown preset 'nope' (choose from cnn3, "),
        (["dense"], ["--jobs=0"], "error: --jobs: must be >= 1, got 0\n"),
    ],
)
def test_bad_presets_and_jobs_fail_before_training(presets, args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        reproduce.reproduce(presets, parsed(f"--runs={tmp_path}", *args))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(message)
    assert list(tmp_path.iterdir()) == []


def test_tables_only_rewrites_the_tables_from_the_json(tmp_path, monkeypatch, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("")
    row = reproduce.summarize("fast", [_metrics(0.9918, 31.6)])
    (tmp_path / "reproduction.json").write_text(json.dumps([row]))
    monkeypatch.setattr(reproduce, "README", readme)
    monkeypatch.setattr(reproduce, "RESULTS_DIR", tmp_path)
    flag_values = parsed("--tables_only", "--seeds=0", "--seeds=1")
    assert flag_values.seeds == [0, 1] and flag_values.jobs == 1
    reproduce.reproduce(["dense"], flag_values)  # --tables_only: no training
    assert capsys.readouterr().out.splitlines()[2].startswith("| `fast` | 308,746 |")
    assert "| `fast` | 308,746 | mnist | 99.18 % (1) |" in readme.read_text()
    assert (tmp_path / "reproduction.md").read_text().startswith("Regenerate with `python ")


@pytest.mark.slow
def test_a_bad_flag_is_one_line_and_exit_2():
    result = run_script("experiments/reproduce.py", "dense", "--jobs=many")
    assert (result.returncode, result.stderr) == (
        2,
        "error: --jobs: expected an integer, got 'many'\n",
    )


def test_the_readme_presets_table_is_written_between_its_markers(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    begin = "<!-- presets:begin (written by experiments/reproduce.py) -->"
    readme.write_text(f"intro\n{begin}\nold table\n<!-- presets:end -->\nrest\n")
    monkeypatch.setattr(reproduce, "README", readme)
    row = reproduce.summarize("fast", [_metrics(0.9918, 31.6), _metrics(0.9912, 40.0)])
    reproduce.write_readme_table(reproduce.presets_table([row]))
    text = readme.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("\nrest\n")
    assert "| `fast` | 308,746 | mnist | 99.15 % ± 0.04 (2) | 32 s |" in text
