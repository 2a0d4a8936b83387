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
    chosen = settings("--sections=tiling,time99")
    assert chosen.sections == ["time99", "tiling"]  # in the order of SECTIONS
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


def test_keras_summary_times_the_last_evaluation_from_launch():
    epochs = [
        {"epoch": 1, "test_accuracy": 0.985, "evaluated_at": 130.0},
        {"epoch": 2, "test_accuracy": 0.9905, "evaluated_at": 160.0},
    ]
    summary = end_to_end.keras_summary(epochs, launched=100.0)
    assert summary["wall_s"] == pytest.approx(60.0)
    assert (summary["epochs_completed"], summary["reached"]) == (2, True)
    assert not end_to_end.keras_summary(epochs[:1], launched=100.0)["reached"]


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


def time_to_99_result(keras_accuracy: float) -> dict:
    flax = {"wall_s": 100.0, "epochs_completed": 4, "test_accuracy": 0.9918, "reached": True}
    keras = end_to_end.keras_summary(
        [{"epoch": 7, "test_accuracy": keras_accuracy, "evaluated_at": 250.0}], launched=0.0
    )
    both = keras["reached"]
    return {
        "machine": "CPU, 2 cores",
        "target": 0.99,
        "flaxmnist": flax,
        "keras": keras,
        "keras_over_flaxmnist": 2.5 if both else None,
    }


def test_time_to_99_markdown():
    text = end_to_end.time_to_99_markdown(time_to_99_result(0.9911))
    assert "### Time to 99 % test accuracy" in text
    assert "| flaxmnist |" in text and "| 4 | 99.18 % | 100.0 |" in text
    assert "| 7 | 99.11 % | 250.0 |" in text and "Keras / flaxmnist: 2.50x" in text
    missed = end_to_end.time_to_99_markdown(time_to_99_result(0.985))
    assert "not reached (250.0)" in missed and "Keras / flaxmnist: -" in missed
    failed = time_to_99_result(0.9911)
    failed["flaxmnist"] = {"error": "boom", "reached": False}
    assert "| - | - | failed |" in end_to_end.time_to_99_markdown(failed)


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
