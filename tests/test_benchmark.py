"""The benchmark's pure helpers and report tables (experiments/bench); no timings are checked."""

import importlib
import sys

import pytest
from helpers import REPO_ROOT, parsed_flags, run_script

from flaxmnist.configs import default
from flaxmnist.errors import ConfigError, FlaxmnistError

BENCH_DIR = REPO_ROOT / "experiments" / "bench"


def load(name: str):
    # The benchmark modules import each other by name, as they do when run as scripts.
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module(name)


benchmark, end_to_end, fast_seeds, scaling = (
    load(name) for name in ("benchmark", "end_to_end", "fast_seeds", "scaling")
)


def pair_row(model="cnn_simple", batch=32, tile=1, timed_s=2.0, **extra):
    return {
        "framework": "flaxmnist",
        "model": model,
        "batch": batch,
        "tile": tile,
        "epoch_s": 5.0,
        "examples_per_s": 12_000.0,
        "startup_s": 7.0,
        "peak_rss_mb": 400.0,
        "flops_per_step": 2e9,
        "step_ms": 1000.0,
        "timed_s": timed_s,
        **extra,
    }


def settings(*args: str):
    return benchmark.settings(parsed_flags(benchmark, *args))


def test_settings_fill_section_defaults():
    assert settings().sections == list(benchmark.SECTIONS)
    quick = settings("--quick")
    assert quick.sections == list(benchmark.QUICK_SECTIONS)
    assert (quick.steps, quick.repeats, quick.models) == (30, 2, None)
    chosen = settings("--sections=tiling,startup")
    assert chosen.sections == ["startup", "tiling"]  # in the order of SECTIONS
    spaced = settings("--sections", "pipelines", "--repeats", "3", "--epochs", "3")
    assert (spaced.sections, spaced.repeats, spaced.epochs) == (["pipelines"], 3, 3)
    assert settings("--worker=pipeline,grain", "--tile=2").worker == ["pipeline", "grain"]
    for args, message in [
        (["--sections=models,nonsense"], "--sections: unknown 'nonsense'; choose from models,"),
        (["--frameworks=jax"], "--frameworks: unknown 'jax'"),
        (["--worker=pipeline"], "--worker: expected FRAMEWORK,MODEL"),
    ]:
        with pytest.raises(ConfigError, match=message):
            settings(*args)


@pytest.mark.slow  # a subprocess
def test_a_bad_flag_is_one_line_and_exit_2():
    result = run_script("experiments/bench/benchmark.py", "--sections=nonsense")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: --sections: unknown 'nonsense'")
    assert result.stderr.count("\n") == 1
    result = run_script("experiments/bench/benchmark.py", "--repeats=0")
    assert (result.returncode, result.stderr) == (
        2,
        "error: --repeats: 0 is not a positive integer\n",
    )


@pytest.mark.slow  # two subprocesses
def test_op_profile_bad_input_is_one_line_and_exit_2(tmp_path):
    result = run_script(
        "experiments/bench/op_profile.py", "--models=convnet,nope", f"--out={tmp_path}"
    )
    assert (result.returncode, result.stderr) == (2, "error: --models: unknown presets nope\n")
    result = run_script("experiments/bench/op_profile.py", "--steps=0", f"--out={tmp_path}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: --steps:")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_run_worker_reads_the_last_result_line_or_the_error():
    ok = "print('noise'); print('RESULT {\"a\": 1}'); print('RESULT {\"a\": 2}')"
    assert benchmark.run_worker([sys.executable, "-c", ok]) == {"a": 2}
    failed = benchmark.run_worker([sys.executable, "-c", "raise SystemExit('boom')"])
    assert "boom" in failed["error"]


def test_mnist_arrays_tiles_the_split():
    images, labels = benchmark.mnist_arrays("test", tile=2)
    once_images, once_labels = benchmark.mnist_arrays("test")
    assert images.shape == (2 * len(once_images), *once_images.shape[1:])
    assert (images[len(once_images) :] == once_images).all()
    assert (labels[: len(once_labels)] == once_labels).all()


def test_gflops_and_steps_for():
    assert benchmark.gflops(2e9, 1000.0) == pytest.approx(2.0)
    assert scaling.steps_for(32, 12_800) == 400
    assert scaling.steps_for(1024, 12_800) == 12
    assert scaling.steps_for(128, 10**6) == 60_000 // 128  # at most one epoch
    assert scaling.steps_for(4096, 100) == 1


def test_steps_per_epoch_holds_out_the_validation_split():
    config = default.get_config()  # batch 128, validation_fraction 0.1
    assert end_to_end.steps_per_epoch(config) == 54_000 // 128
    config.validation_fraction = 0.0
    assert end_to_end.steps_per_epoch(config) == 468


def test_epoch_ratios_are_relative_to_the_first_row():
    rows = [pair_row(tile=t, timed_s=s) for t, s in ((1, 2.0), (2, 4.2), (4, 8.0))]
    assert scaling.epoch_ratios(rows) == pytest.approx([1.0, 2.1, 4.0])
    rows[1] = {"tile": 2, "error": "x"}
    assert scaling.epoch_ratios(rows) == [1.0, None, 4.0]
    assert scaling.epoch_ratios([{"tile": 1, "error": "x"}, rows[2]]) == [None, None]


def test_startup_summary_takes_the_median_of_the_warm_runs():
    runs = [
        {"time_to_first_chunk_s": first, "wall_s": wall}
        for first, wall in ((20.0, 60.0), (9.0, 50.0), (7.0, 48.0), (8.0, 49.0))
    ]
    summary = end_to_end.startup_summary(runs)
    assert (summary["cold_first_step_s"], summary["warm_first_step_s"]) == (20.0, 8.0)
    assert (summary["cold_wall_s"], summary["warm_wall_s"]) == (60.0, 49.0)
    assert summary["warm_first_step_runs_s"] == [9.0, 7.0, 8.0]
    assert end_to_end.startup_summary([*runs, {"error": "bad"}]) == {"error": "bad"}


def test_startup_markdown():
    result = {
        "machine": "CPU, 2 cores",
        "cold_first_step_s": 20.04,
        "warm_first_step_s": 8.0,
        "warm_first_step_runs_s": [9.0, 7.0, 8.0],
        "cold_wall_s": 60.0,
        "warm_wall_s": 49.0,
    }
    text = end_to_end.startup_markdown(result)
    assert "| cold (empty) | 20.0 | 60.0 |" in text
    assert "| warm (median of 3) | 8.0 | 49.0 |" in text
    failed = end_to_end.startup_markdown({"machine": "CPU", "error": "boom"})
    assert "failed: boom" in failed


def test_batch_and_tiling_markdown():
    batch = {
        "machine": "CPU, 2 cores",
        "examples_per_run": 12_800,
        "repeats": 3,
        "rows": [pair_row(batch=64), {"model": "convnet", "batch": 1024, "error": "x"}],
    }
    text = scaling.batch_markdown(batch)
    assert "| cnn_simple | 64 | 12,000 | 1000.0 | 2.0 | 400 |" in text
    assert "| convnet | 1024 | failed |" in text
    tiling = {
        "machine": "CPU, 2 cores",
        "model": "cnn_simple",
        "batch": 32,
        "rows": [pair_row(tile=1, timed_s=5.0), pair_row(tile=4, timed_s=21.0)],
    }
    text = scaling.tiling_markdown(tiling)
    assert "| 1x | 60,000 | 5.0 | 1.00 | 5.0 | 400 |" in text
    assert "| 4x | 240,000 | 21.0 | 4.20 | 5.2 | 400 |" in text


def test_document_shows_only_sections_with_results():
    machine = {"cpu": "CPU", "cores": 2, "matmul_gflops": 100.0, "steps": 10, "repeats": 2}
    tiling = {"machine": "CPU", "model": "cnn_simple", "batch": 32, "rows": [pair_row()]}
    text = benchmark.document({"machine": machine, "rows": [pair_row()], "tiling": tiling})
    assert "| model | batch | framework |" in text and "### Epoch time vs training-set" in text
    assert "### Time to" not in text and "### Throughput" not in text
    assert benchmark.document({"startup": {"machine": "CPU", "error": "x"}}).startswith("### Cold")


def test_throughput_chart_is_written(tmp_path):
    rows = [pair_row(model=m, batch=b) for m in ("convnet", "cnn_simple") for b in (32, 1024)]
    path = tmp_path / "throughput.png"
    scaling.chart({"machine": "CPU, 2 cores", "rows": [*rows, {"error": "x"}]}, path)
    assert path.stat().st_size > 0


def pipeline_run(pipeline, epoch_s, rss, accuracy=0.98):
    return {
        "pipeline": pipeline,
        "setup_s": 1.0,
        "epoch_s": epoch_s,
        "eval_s": 0.5,
        "peak_rss_mb": rss,
        "test_accuracy": accuracy,
    }


def test_pipelines_summary_takes_medians_of_the_epochs_after_the_first():
    runs = [
        pipeline_run("device", [30.0, 10.0, 12.0], 600.0),
        pipeline_run("tfds", [40.0, 11.0], 900.0),
        pipeline_run("grain", [35.0, 14.3], 715.0),
        pipeline_run("device", [31.0, 14.0, 16.0], 700.0),
        pipeline_run("tfds", [42.0, 13.0], 1100.0),
        {"pipeline": "tfds", "error": "boom"},
    ]
    summary = benchmark.pipelines_summary(runs)
    assert summary["device"]["epoch_s"] == 13.0  # median of 10, 12, 14, 16
    assert summary["device"]["first_epoch_s"] == 30.5
    assert (summary["tfds"]["epoch_s"], summary["tfds"]["runs"]) == (12.0, 2)
    assert summary["tfds"]["epoch_ratio"] == pytest.approx(12.0 / 13.0)
    assert summary["tfds"]["rss_ratio"] == pytest.approx(1000.0 / 650.0)
    assert summary["grain"]["rss_ratio"] == pytest.approx(1.1)
    assert summary["device"]["epoch_ratio"] == 1.0
    text = benchmark.pipelines_markdown(
        {
            "pipelines": {
                "machine": {"cpu": "CPU X", "cores": 2, "repeats": 2, "epochs": 2},
                "summary": summary,
            }
        }
    )
    assert "CPU X, 2 cores" in text and "| tfds | 12.0 | 0.92x |" in text
    assert "| grain | 14.3 | 1.10x |" in text and "| 715 | 1.10x |" in text
    assert benchmark.pipelines_markdown({}) == ""
    assert "epoch_ratio" not in benchmark.pipelines_summary(runs[1:3])["tfds"]
    assert "| tfds | 11.0 | - |" in benchmark.pipelines_table(
        {
            "machine": {"cpu": "C", "cores": 2, "repeats": 1, "epochs": 2},
            "summary": benchmark.pipelines_summary(runs[1:2]),
        }
    )


def test_the_pipelines_table_goes_between_the_markers_of_the_data_doc(tmp_path):
    section = {
        "machine": {"cpu": "CPU X", "cores": 2, "repeats": 1, "epochs": 2},
        "summary": benchmark.pipelines_summary([pipeline_run("device", [3.0, 2.0], 600.0)]),
    }
    doc = tmp_path / "data.md"
    doc.write_text(f"intro\n{benchmark.DOC_BEGIN}\nold table\n{benchmark.DOC_END}\nrest\n")
    benchmark.write_data_doc_table({"pipelines": section}, doc)
    benchmark.write_data_doc_table({"pipelines": section}, doc)  # again: the same text
    text = doc.read_text()
    assert text.startswith(f"intro\n{benchmark.DOC_BEGIN}\nCPU X, 2 cores;")
    assert text.count(benchmark.DOC_BEGIN) == 1 and "| device | 2.0 | 1.00x |" in text
    assert "old table" not in text and text.endswith(f"|\n{benchmark.DOC_END}\nrest\n")
    doc.write_text("no markers\n")
    with pytest.raises(FlaxmnistError, match="lacks the markers"):
        benchmark.write_data_doc_table({"pipelines": section}, doc)
    real = (REPO_ROOT / "docs" / "data.md").read_text()
    assert benchmark.DOC_BEGIN in real and benchmark.DOC_END in real


def test_fast_seeds_summary_takes_the_lowest_accuracy_and_the_median_times():
    runs = [
        {"seed": s, "test_accuracy": a, "cold_wall_s": c, "warm_wall_s": w}
        for s, a, c, w in [(10, 0.9921, 30, 12), (11, 0.9904, 20, 11), (12, 0.993, 25, 15)]
    ]
    result = fast_seeds.summarize(runs, ["batch_size=64"], "CPU X")
    assert result["command"].endswith("--config.seed=S --config.batch_size=64")
    assert (result["min_test_accuracy"], result["median_cold_wall_s"]) == (0.9904, 25.0)
    assert result["median_warm_wall_s"] == 12.0
    assert result["mean_test_accuracy"] == pytest.approx((0.9921 + 0.9904 + 0.993) / 3)
    table = fast_seeds.markdown(result)
    assert "| 11 | 99.04 % | 20.0 | 11.0 |" in table  # seconds to one decimal
    assert table.splitlines()[-1] == "| median / min | min 99.04 % (mean 99.18 %) | 25.0 | 12.0 |"


# ------------------------------------------------------------------------ fair settings, race

recipes, race = load("recipes"), load("race")


def test_the_recipes_architectures_are_flaxmnists():
    from flaxmnist import models

    for name, architecture in recipes.ARCHITECTURES.items():
        assert models.MODELS.get(name).keywords == architecture, name


def test_layers_follow_flaxmnists_cnn():
    assert recipes.layers("convnet_fast") == [
        ("conv", 16), ("pool",), ("relu",), ("batch_norm", 0.9),
        ("conv", 32), ("pool",), ("relu",), ("batch_norm", 0.9),
        ("flatten",), ("dense", 128), ("relu",), ("batch_norm", 0.9), ("dense", 10),
    ]  # fmt: skip
    assert recipes.layers("cnn_dropout") == [  # pytorch/examples mnist's Net
        ("conv", 32), ("relu",), ("conv", 64), ("relu",), ("pool",), ("dropout", 0.25),
        ("flatten",), ("dense", 128), ("relu",), ("dropout", 0.5), ("dense", 10),
    ]  # fmt: skip
    assert recipes.layers("convnet") == [
        ("conv", 32), ("relu",), ("pool",), ("conv", 64), ("relu",), ("pool",),
        ("flatten",), ("dropout", 0.5), ("dense", 10),
    ]  # fmt: skip


def test_the_fast_recipe_is_the_fast_config():
    fast = recipes.RECIPES["fast"]
    assert (fast.model, fast.batch, fast.max_epochs, fast.optimizer) == (
        "convnet_fast",
        128,
        2,
        "adam",
    )
    assert (fast.learning_rate, fast.adam_betas, fast.epsilon) == (8e-3, (0.7, 0.9), 1e-7)
    assert (fast.schedule, fast.warmup_epochs, fast.validation_fraction) == (
        "warmup_cosine",
        0.2,
        0.0,
    )
    assert not fast.stop_at_target and fast.glorot_init


def test_learning_rate_matches_flaxmnists_schedule():
    from flaxmnist import optimizers
    from flaxmnist.configs import fast

    schedule = optimizers.create_schedule(fast.get_config(), 468)
    recipe = recipes.RECIPES["fast"]
    assert recipes.warmup_steps(recipe, 468) == 93
    for step in (0, 1, 50, 92, 93, 94, 400, 935, 936, 2000):
        expected = float(schedule(step))
        assert recipes.learning_rate(recipe, step, 468) == pytest.approx(expected, abs=1e-9)
    assert recipes.learning_rate(recipe, 93, 468) == pytest.approx(8e-3)
    assert recipes.learning_rate(recipe, 93 + (936 - 93) // 2, 468) == pytest.approx(4e-3, rel=3e-3)
    torch_ref = recipes.RECIPES["torch_reference"]  # StepLR(gamma 0.7) stepped once an epoch
    assert [recipes.learning_rate(torch_ref, s, 938) for s in (0, 937, 938, 1876)] == (
        pytest.approx([1.0, 1.0, 0.7, 0.49])
    )
    assert recipes.learning_rate(recipes.RECIPES["keras_reference"], 5000, 422) == 1e-3


def test_steps_per_epoch_and_when_recipes_test_and_stop():
    fast, keras_ref, torch_ref = (recipes.RECIPES[n] for n in recipes.RECIPES)
    assert recipes.steps_per_epoch(fast, 60_000, drop_remainder=True) == 468
    assert recipes.steps_per_epoch(fast, 60_000, drop_remainder=False) == 469
    assert recipes.steps_per_epoch(keras_ref, 60_000, drop_remainder=False) == 422  # 54,000
    assert recipes.steps_per_epoch(torch_ref, 60_000, drop_remainder=False) == 938
    assert [recipes.tests_after(fast, e) for e in (1, 2)] == [False, True]
    assert recipes.tests_after(keras_ref, 1)
    assert not recipes.stops_after(fast, 1, None) and recipes.stops_after(fast, 2, 0.95)
    assert not recipes.stops_after(keras_ref, 3, 0.9899)
    assert recipes.stops_after(keras_ref, 3, 0.99) and recipes.stops_after(keras_ref, 15, 0.98)
    assert recipes.epoch_record(2, 3.5, (0.991, 0.4)) == {
        "epoch": 2, "train_s": 3.5, "test_accuracy": 0.991, "eval_s": 0.4,
    }  # fmt: skip
    assert recipes.epoch_record(1, 3.5, None) == {"epoch": 1, "train_s": 3.5}


def test_interleaved_rotates_the_contestants_per_seed():
    order = race.interleaved(["a", "b", "c"], [10, 11, 12, 13])
    assert order == [
        ("a", 10), ("b", 10), ("c", 10),
        ("b", 11), ("c", 11), ("a", 11),
        ("c", 12), ("a", 12), ("b", 12),
        ("a", 13), ("b", 13), ("c", 13),
    ]  # fmt: skip
    assert race.interleaved(["a"], [1, 2]) == [("a", 1), ("a", 2)]


def test_contestant_commands_keep_their_caches_fresh(tmp_path):
    command, env = race.contestant_command("flaxmnist_fast", 12, False, tmp_path, 50)
    assert command[1:4] == ["-m", "flaxmnist.train", "--config=fast"]
    assert f"--config.compilation_cache_dir={tmp_path / 'cache'}" in command
    assert command[-1] == "--config.seed=12"
    smoke, _ = race.contestant_command("flaxmnist_fast", 12, True, tmp_path, 50)
    assert smoke[-1] == "--config.num_epochs=1"
    command, env = race.contestant_command("torch_fast", 11, True, tmp_path, 25)
    assert command[1].endswith("race.py") and command[2:] == [
        "--contestant=torch_fast", "--seed=11", "--smoke=True", "--keras_steps_per_execution=25",
    ]  # fmt: skip
    assert env == {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}


def race_run(name, seed, wall, accuracy, epochs=(10.0, 6.0), rss=500.0, steps=468):
    history = [{"epoch": i + 1, "train_s": s} for i, s in enumerate(epochs)]
    history[-1]["test_accuracy"] = accuracy
    return {
        "contestant": name, "seed": seed, "wall_s": wall, "peak_rss_mb": rss, "epochs": history,
        "steps_per_epoch": steps, "test_accuracy": accuracy,
    }  # fmt: skip


def race_runs():
    return [
        race_run("flaxmnist_fast", 10, 20.0, 0.992),
        race_run("keras_fast", 10, 50.0, 0.991, epochs=(30.0, 12.0), rss=900.0),
        race_run("keras_fast", 11, 70.0, 0.989, epochs=(30.0, 14.0), rss=1100.0),
        race_run("flaxmnist_fast", 11, 30.0, 0.993, epochs=(10.0, 8.0)),
        {"contestant": "keras_fast", "seed": 12, "wall_s": 5.0, "error": "boom"},
        {"contestant": "torch_reference", "seed": 10, "wall_s": 5.0, "error": "Killed"},
    ]


def test_race_summary_takes_medians_and_ratios_to_flaxmnist():
    flops = {"fast": 1e9}
    summary = race.race_summary(race_runs(), flops, peak_gflops=100.0)
    assert list(summary) == ["flaxmnist_fast", "keras_fast", "torch_reference"]
    flax, keras = summary["flaxmnist_fast"], summary["keras_fast"]
    assert (flax["wall_s"], flax["epoch_s"], flax["first_epoch_s"]) == (25.0, 7.0, 10.0)
    assert (flax["reached"], flax["runs"], flax["failed"], flax["vs_flaxmnist"]) == (2, 2, 0, 1.0)
    assert flax["gflops"] == pytest.approx(1e9 * 468 / 7.0 / 1e9)
    assert flax["peak_fraction"] == pytest.approx(flax["gflops"] / 100.0)
    assert (keras["wall_s"], keras["epoch_s"], keras["peak_rss_mb"]) == (60.0, 13.0, 1000.0)
    assert (keras["reached"], keras["runs"], keras["failed"]) == (1, 3, 1)
    assert keras["vs_flaxmnist"] == pytest.approx(60.0 / 25.0)
    assert keras["test_accuracy"] == pytest.approx(0.990) and keras["min_test_accuracy"] == 0.989
    assert summary["torch_reference"] == {"runs": 1, "failed": 1, "error": "Killed"}
    assert race.steady_epoch_s({"epochs": [{"train_s": 9.0}]}) == 9.0  # one epoch: that one
    no_flax = race.race_summary(race_runs()[1:3], flops, 100.0)
    assert "vs_flaxmnist" not in no_flax["keras_fast"]


def test_race_markdown():
    section = {
        "machine": {"cpu": "CPU X", "cores": 2, "matmul_gflops": 100.0, "seeds": [10, 11]},
        "summary": race.race_summary(race_runs(), {"fast": 1e9}, 100.0),
    }
    text = race.markdown({"race": section})
    assert text.startswith("### Race to 99 % test accuracy") and "seeds 10, 11" in text
    assert "CPU X, 2 cores, matmul peak 100 GFLOP/s" in text and "Smoke" not in text
    assert "| flaxmnist_fast | fast (convnet_fast," in text
    assert "| 2/2 | 25.0 | 1.00x | 2 | 7.0 | 10.0 | 66.9 (67%) | 500 | 99.25 / 99.20 % |" in text
    assert "| jit_compile, steps_per_execution | 1/3 | 60.0 | 2.40x |" in text
    assert "| torch.compile | failed (1 of 1) |" in text
    assert race.markdown({}) == ""
    section["machine"]["smoke"] = True
    assert "Smoke run" in race.race_markdown(section)


def test_a_contestant_with_wrong_compiled_gradients_is_not_timed(monkeypatch):
    checked, timed = [], []

    def measured_run(command, **_):
        checked.append(command[2])
        error = 1.0 if command[2] == "--contestant=torch_reference" else 1e-6
        return {"returncode": 0, "stdout": f'RESULT {{"gradient_error": {error}}}\n'}

    def run_contestant(name, seed, *_):
        timed.append((name, seed))
        return race_run(name, seed, 20.0, 0.992)

    monkeypatch.setattr(race.bench, "measured_run", measured_run)
    monkeypatch.setattr(race.bench, "matmul_peak_gflops", lambda: 100.0)
    monkeypatch.setattr(race, "recipe_flops", lambda names: {"fast": 1e9})
    monkeypatch.setattr(race, "run_contestant", run_contestant)
    names = ["flaxmnist_fast", "torch_fast", "torch_reference", "torch_reference_eager"]
    section = race.race_section(names, [10, 11])
    assert checked == ["--contestant=torch_fast", "--contestant=torch_reference"]  # compiled only
    assert {name for name, _ in timed} == {"flaxmnist_fast", "torch_fast", "torch_reference_eager"}
    assert len(timed) == 6
    assert section["summary"]["torch_reference"] == {
        "excluded": "torch.compile's gradients differ from eager ones "
        "(max relative error 1.00 on one batch)"
    }
    assert "| torch.compile | not timed: torch.compile's gradients differ" in race.markdown(
        {"race": section}
    )


def test_flaxmnist_result_reads_the_run_directory(tmp_path):
    (tmp_path / "metrics.json").write_text(
        '{"test_accuracy": 0.9921, "steps": 936, "epochs_completed": 2, '
        '"time_to_first_chunk_s": 4.5}'
    )
    (tmp_path / "history.json").write_text(
        '[{"epoch": 1, "epoch_time_s": 9.0}, {"epoch": 2, "epoch_time_s": 6.0}]'
    )
    result = race.flaxmnist_result(tmp_path)
    assert result["epochs"] == [
        {"epoch": 1, "train_s": 9.0}, {"epoch": 2, "train_s": 6.0, "test_accuracy": 0.9921},
    ]  # fmt: skip
    assert (result["steps_per_epoch"], result["test_accuracy"]) == (468, 0.9921)


def test_smoke_limits_cut_epochs_and_images():
    recipe, limits = race.smoke_limits(recipes.RECIPES["torch_reference"])
    assert recipe.max_epochs == race.SMOKE_MAX_EPOCHS and recipe.batch == 64
    assert limits == {"examples": race.SMOKE_EXAMPLES, "test_examples": race.SMOKE_TEST_EXAMPLES}


def test_race_worker_flags():
    values = race.worker_settings(parsed_flags(race, "--contestant=torch_fast", "--seed=12"))
    assert values == {
        "contestant": "torch_fast", "seed": 12, "smoke": False, "keras_steps_per_execution": 50,
        "check_gradients": False,
    }  # fmt: skip
    for args in ([], ["--contestant=flaxmnist_fast"], ["--contestant=jax_fast"]):
        with pytest.raises(ConfigError, match="--contestant: expected one of keras_fast"):
            race.worker_settings(parsed_flags(race, *args))


def test_settings_of_the_race_and_smoke_runs():
    args = settings()
    assert (args.seeds, args.contestants) == ([10, 11, 12, 13, 14], list(race.DEFAULT_CONTESTANTS))
    assert args.keras_steps_per_execution == 50 and "race" in args.sections
    chosen = settings("--sections=race", "--seeds=3,1,3", "--contestants=keras_fast,torch_fast")
    assert (chosen.seeds, chosen.contestants) == ([3, 1], ["keras_fast", "torch_fast"])
    smoke = settings("--smoke")
    assert (smoke.sections, smoke.steps, smoke.repeats) == (["models", "race"], 4, 1)
    assert settings("--smoke", "--sections=race", "--repeats=2").repeats == 2
    for args, message in [
        (["--seeds=1,x"], "--seeds: expected non-negative integers, got '1,x'"),
        (["--contestants=keras_fast,jax"], "--contestants: unknown 'jax'"),
        (["--frameworks=keras_xla"], "--frameworks: unknown 'keras_xla'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            settings(*args)


def test_pair_timings_scale_a_timed_run_to_an_epoch():
    raw = {"run_s": [2.0, 4.0, 3.0], "run_steps": 100, "startup_s": 5.0, "peak_rss_mb": 400.0,
           "flops_per_step": 1e9}  # fmt: skip
    timings = benchmark.pair_timings(raw, batch=32)
    assert timings["timed_s"] == 3.0 and timings["step_ms"] == pytest.approx(30.0)
    assert timings["epoch_s"] == pytest.approx(0.03 * 1875)
    assert timings["examples_per_s"] == pytest.approx(32 / 0.03)


def test_models_table_compares_with_each_frameworks_faster_settings():
    machine = {"cpu": "CPU", "cores": 2, "matmul_gflops": 100.0, "steps": 10, "repeats": 2,
               "keras_steps_per_execution": 50}  # fmt: skip
    epoch_s = {"flaxmnist": 2.0, "keras": 4.0, "keras_default": 8.0, "torch": 6.0,
               "torch_eager": 5.0}  # fmt: skip
    rows = [{**pair_row(), "framework": f, "epoch_s": s} for f, s in epoch_s.items()]
    rows.append({"framework": "flaxmnist_tfds", "model": "cnn_simple", "error": "x"})
    reason = benchmark.wrong_gradients(1.0)
    rows.append({"framework": "torch", "model": "dense", "error": f"not timed: {reason}"})
    text = benchmark.markdown(rows, machine)
    assert f"| dense | 32 | torch | torch.compile | not timed: {reason} |" in text
    lines = text.splitlines()
    frameworks = [line.split(" | ")[2] for line in lines if line.startswith("| cnn_simple")]
    assert frameworks == ["flaxmnist", "flaxmnist_tfds", "keras", "keras_default", "torch",
                          "torch_eager"]  # fmt: skip
    assert "| flaxmnist | lax.scan, device-resident | 2.00 |" in text
    assert text.count("| 2.00x | 2.50x |") == 1  # flaxmnist: 4 / 2 and 5 / 2
    assert "| keras | jit_compile, 50 steps/execution | 4.00 |" in text
    assert "| keras_default | compile() defaults | 8.00 |" in text and "| 0.50x | 0.62x |" in text
    assert (
        "| torch | torch.compile | 6.00 |" in text
        and "| flaxmnist_tfds | tf.data streaming | failed |" in text
    )
    old = {key: value for key, value in machine.items() if key != "keras_steps_per_execution"}
    assert "| keras | old: defaults, eager; fit per 200 steps |" in benchmark.markdown(rows, old)


def test_process_age_counts_from_the_process_start():
    import time

    age = benchmark.process_age_s()
    assert age >= time.perf_counter() - benchmark.START - 0.05 and age < 24 * 3600


@pytest.mark.slow  # subprocesses
def test_measured_run_gives_the_childs_own_peak_rss():
    grow = "import sys; b = bytearray(200 * 2**20); print('out'); sys.exit(3)"
    big = benchmark.measured_run([sys.executable, "-c", grow])
    assert (big["returncode"], big["stdout"]) == (3, "out\n") and big["peak_rss_mb"] > 200
    small = benchmark.measured_run([sys.executable, "-c", "import sys; sys.stderr.write('e')"])
    assert (small["returncode"], small["stderr"]) == (0, "e") and small["peak_rss_mb"] < 150
    assert small["wall_s"] > 0
    slept = benchmark.measured_run([sys.executable, "-c", "import time; time.sleep(30)"], 0.5)
    assert slept["returncode"] == -9 and slept["wall_s"] < 10


@pytest.mark.slow  # imports and trains PyTorch
def test_torch_recipes_build_flaxmnists_models_and_train():
    pytest.importorskip("torch", reason="PyTorch is in the bench extra, not the dev one")
    torch_recipe = load("torch_recipe")

    def count(name):
        model = torch_recipe.build_model(recipes.RECIPES[name])
        return sum(p.numel() for p in model.parameters())

    assert (count("fast"), count("torch_reference")) == (108_970, 1_199_882)
    recipe = dataclasses_replace(recipes.RECIPES["torch_reference"], max_epochs=2)
    result = torch_recipe.train(recipe, "eager", 0, examples=256, test_examples=200)
    assert [e["epoch"] for e in result["epochs"]] == [1, 2]
    assert result["steps_per_epoch"] == 4 and 0 <= result["test_accuracy"] <= 1
    assert result["first_step_s"] > 0 and "eval_s" in result["epochs"][0]


@pytest.mark.slow  # imports PyTorch and compiles a model
def test_the_gradient_check_passes_a_right_compile_and_catches_a_wrong_one(monkeypatch):
    torch = pytest.importorskip("torch", reason="PyTorch is in the bench extra, not the dev one")
    torch_recipe = load("torch_recipe")
    x, y = torch.randn(8, 1, 6, 6), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Flatten(),
            torch.nn.Linear(32, 3),
        )  # fmt: skip

    assert torch_recipe.model_gradient_error(model(), x, y) < benchmark.GRADIENT_TOLERANCE
    assert benchmark.wrong_gradients(1e-4) is None

    def detached_convolution(module):  # what Inductor did to the pytorch/examples Net
        module[0].weight.register_hook(torch.zeros_like)
        return module

    monkeypatch.setattr(torch, "compile", detached_convolution)
    assert torch_recipe.model_gradient_error(model(), x, y) == pytest.approx(1.0)
    assert "max relative error 1.00" in benchmark.wrong_gradients(1.0)


@pytest.mark.slow  # imports and trains Keras
def test_keras_recipes_build_flaxmnists_models_and_train():
    pytest.importorskip("keras", reason="Keras is in the tf extra")
    keras_recipe = load("keras_recipe")

    def count(name):
        model = keras_recipe.build_model(recipes.RECIPES[name])
        return sum(int(w.numpy().size) for w in model.trainable_weights)

    assert (count("fast"), count("keras_reference")) == (108_970, 34_826)
    fast = recipes.RECIPES["fast"]
    schedule = keras_recipe.learning_rate(fast, 468)
    for step in (0, 50, 93, 400, 936):
        assert float(schedule(step)) == pytest.approx(recipes.learning_rate(fast, step, 468))
    assert keras_recipe.compile_settings("xla", 7) == {
        "jit_compile": True,
        "steps_per_execution": 7,
    }
    assert keras_recipe.compile_settings("default") == {}
    recipe = dataclasses_replace(fast, max_epochs=1)
    result = keras_recipe.train(recipe, "default", 0, examples=256, test_examples=200)
    assert result["steps_per_epoch"] == 2 and len(result["epochs"]) == 1
    assert 0 <= result["test_accuracy"] <= 1 and result["epochs"][0]["val_s"] == 0.0


def dataclasses_replace(recipe, **changes):
    import dataclasses

    return dataclasses.replace(recipe, **changes)


def test_peak_rss_is_this_process():
    import resource

    peak = benchmark.peak_rss_mb()
    assert 10 < peak <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + 1


op_profile = load("op_profile")

HLO = """\
%fused_computation.1 (param_0: f32[4]) -> f32[4] {
  %mul.1 = f32[4]{0} multiply(%param_0, %param_0), metadata={op_name="jit(f)/jvp(CNN)/Conv_0/mul"}
  ROOT %max.1 = f32[4]{0} maximum(%mul.1, %mul.1), metadata={op_name="jit(f)/jvp(CNN)/relu/max"}
}

ENTRY %main.2 (p: f32[4]) -> f32[4] {
  %relu_fusion = f32[4]{0} fusion(%p), calls=%fused_computation.1, metadata={op_name="jit(f)/max"}
  %dot.3 = f32[4]{0} dot(%relu_fusion, %p), metadata={op_name="jit(f)/transpose(jvp(CNN))/head/dot"}
  ROOT %add.4 = f32[4]{0} add(%dot.3, %p), metadata={op_name="jit(f)/adam/add"}
}
"""


def test_op_profile_names_each_op_by_its_layer_and_pass():
    metadata = op_profile.op_metadata(HLO)
    assert metadata["relu_fusion"] == ("jit(f)/jvp(CNN)/Conv_0/mul", "jit(f)/max")  # layer, root
    passes = {name: op_profile.layer_and_pass(layer) for name, (layer, _) in metadata.items()}
    assert passes["relu_fusion"] == ("Conv_0", "forward")
    assert passes["dot.3"] == ("head", "backward")
    assert passes["add.4"] == ("adam", "rest")


def test_op_profile_overrides_are_model_fields():
    assert op_profile.model_overrides(["pool_impl=fast", "dtype=bfloat16"]) == {
        "pool_impl": "fast",
        "dtype": "bfloat16",
    }
    for bad in ("pool_impl", "learning_rate=0.1"):  # no '=', not a model field
        with pytest.raises(ConfigError, match=f"--set '{bad}': expected FIELD=VALUE"):
            op_profile.model_overrides([bad])


def test_op_profile_counts_self_time_once_per_op():
    def event(name, ts, dur, tid=1):
        return {"ph": "X", "name": name, "ts": ts, "dur": dur, "tid": tid}

    events = [
        event("while.1", 0, 100),  # a loop around two ops: 30 us of its own
        event("dot.1", 10, 40),
        event("fusion.1", 60, 30),
        event("dot.1", 200, 20),  # the same op again, later
        event("fusion.1", 0, 50, tid=2),  # another thread
        event("ThunkExecutor::Execute", 0, 500),  # not an op of the program: ignored
    ]
    known = dict.fromkeys(["while.1", "dot.1", "fusion.1"])
    assert op_profile.self_times(events, known) == {"while.1": 30, "dot.1": 60, "fusion.1": 80}
