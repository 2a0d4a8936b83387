"""The benchmark's driver, measuring helpers and report tables (experiments/bench).

No timings are checked. The race, its recipes and the Keras and PyTorch twins: test_bench_race.py.
"""

import importlib
import json
import sys

import pytest
from absl import flags
from helpers import REPO_ROOT, parsed_flags, run_script

from flaxmnist.configs import default
from flaxmnist.errors import ConfigError

BENCH_DIR = REPO_ROOT / "experiments" / "bench"


def load(name: str):
    # The benchmark modules import each other by name, as they do when run as scripts.
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module(name)


benchmark, end_to_end, fast_seeds, scaling = (
    load(name) for name in ("benchmark", "end_to_end", "fast_seeds", "scaling")
)
measure, models_section, pipelines, pair_worker = (
    load(name) for name in ("measure", "models_section", "pipelines", "pair_worker")
)
race, recipes, op_profile, kernels, report = (
    load(name) for name in ("race", "recipes", "op_profile", "kernels", "report")
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
    for args, message in [
        (["--sections=models,nonsense"], "--sections: unknown 'nonsense'; choose from models,"),
        (["--frameworks=jax"], "--frameworks: unknown 'jax'"),
        (["--models=resnet"], "--models: unknown 'resnet'; choose from dense,"),
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


def test_kernels_names_auto_over_the_fastest_and_keeps_every_cpus_table(tmp_path):
    record = {
        "command": "python experiments/bench/kernels.py",
        "machine": "CPU, 2 cores",
        "date": "2026-12-07",
        "commit": "abc1234",
        "steps": 10,
        "rounds": 3,
    }
    step_ms = {"fused": 8.0, "im2col": 6.0, "xla": 20.0}
    row = {"preset": "fast", "batch_size": 128, "step_ms": step_ms}
    row |= kernels.verdict(step_ms, "fused")
    assert (row["fastest"], row["auto"], row["auto_over_fastest"]) == ("im2col", "fused", 8 / 6)
    by_cpu = {"Zen (AVX2)": {**record, "rows": [row]}, "Xeon (AVX-512)": {**record, "rows": []}}
    text = kernels.markdown(by_cpu)
    assert text.index("## Xeon (AVX-512)") < text.index("## Zen (AVX2)")
    assert "| `fast` | 128 | 8.0 | 6.0 | 20.0 | im2col | fused | 1.33 |" in text
    (tmp_path / "kernels.json").write_text(json.dumps({"cpus": by_cpu}))
    assert report.results_by_cpu(tmp_path / "kernels.json") == by_cpu
    assert report.results_by_cpu(tmp_path / "none.json") == {}


@pytest.mark.parametrize("flags", [{"avx2", "avx512f"}, {"avx2"}])
def test_the_variant_kernels_calls_auto_is_what_the_layers_run(monkeypatch, flags):
    import jax
    import jax.numpy as jnp

    from flaxmnist import cpu
    from flaxmnist.models import layers

    monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(flags))
    x, kernel = jnp.ones((1, 6, 6, 1)), jnp.ones((3, 3, 1, 2))
    auto = kernels.VARIANTS[kernels.AUTO_VARIANT[cpu.fused_pool_pays()]]

    def program(**impls):
        return str(jax.make_jaxpr(lambda x, k: layers.conv2d_max_pool(x, k, 2, **impls))(x, kernel))

    assert program() == program(impl=auto["conv_impl"], pool_impl=auto["pool_impl"])


@pytest.mark.slow  # a subprocess
def test_kernels_bad_input_is_one_line_and_exit_2(tmp_path):
    result = run_script("experiments/bench/kernels.py", "--models=fast,nope", f"--out={tmp_path}")
    assert (result.returncode, result.stderr) == (2, "error: --models: unknown presets nope\n")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_pair_worker_flags_default_to_the_models_reference_batch():
    args = pair_worker.settings(parsed_flags(pair_worker, "--framework=keras", "--model=convnet"))
    assert (args.framework, args.model, args.batch, args.steps, args.repeats) == (
        "keras",
        "convnet",
        128,
        200,
        3,
    )
    assert (
        pair_worker.settings(
            parsed_flags(pair_worker, "--framework=torch", "--model=dense", "--batch=64")
        ).batch
        == 64
    )
    with pytest.raises(flags.Error, match="framework"):
        parsed_flags(pair_worker, "--model=dense")
    with pytest.raises(flags.Error, match="jax"):
        parsed_flags(pair_worker, "--framework=jax", "--model=dense")


def test_worker_commands_name_the_worker_scripts():
    command = models_section.worker_command("torch_eager", "cnn3", batch=32, smoke=True)
    assert command[1].endswith("experiments/bench/pair_worker.py")
    assert command[2:] == ["--framework=torch_eager", "--model=cnn3", "--batch=32", "--smoke=True"]
    assert pipelines.PIPELINE_WORKER.is_file() and measure.LAUNCHER.is_file()


@pytest.mark.slow
def test_run_worker_reads_the_last_result_line_or_the_error():
    ok = "print('noise'); print('RESULT {\"a\": 1}'); print('RESULT {\"a\": 2}')"
    assert measure.run_worker([sys.executable, "-c", ok]) == {"a": 2}
    failed = measure.run_worker([sys.executable, "-c", "raise SystemExit('boom')"])
    assert "boom" in failed["error"]
    silent = measure.run_worker([sys.executable, "-c", "import sys; sys.stderr.write('quiet')"])
    assert silent == {"error": "no RESULT line: quiet"}


def test_mnist_arrays_tiles_the_split():
    images, labels = measure.mnist_arrays("test", tile=2)
    once_images, once_labels = measure.mnist_arrays("test")
    assert images.shape == (2 * len(once_images), *once_images.shape[1:])
    assert (images[len(once_images) :] == once_images).all()
    assert (labels[: len(once_labels)] == once_labels).all()


def test_gflops_and_steps_for():
    assert measure.gflops(2e9, 1000.0) == pytest.approx(2.0)
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
    summary = pipelines.pipelines_summary(runs)
    assert summary["device"]["epoch_s"] == 13.0  # median of 10, 12, 14, 16
    assert summary["device"]["first_epoch_s"] == 30.5
    assert (summary["tfds"]["epoch_s"], summary["tfds"]["runs"]) == (12.0, 2)
    assert summary["tfds"]["epoch_ratio"] == pytest.approx(12.0 / 13.0)
    assert summary["tfds"]["rss_ratio"] == pytest.approx(1000.0 / 650.0)
    assert summary["grain"]["rss_ratio"] == pytest.approx(1.1)
    assert summary["device"]["epoch_ratio"] == 1.0
    text = pipelines.markdown(
        {
            "pipelines": {
                "machine": {"cpu": "CPU X", "cores": 2, "repeats": 2, "epochs": 2},
                "summary": summary,
            }
        }
    )
    assert "CPU X, 2 cores" in text and "| tfds | 12.0 | 0.92x |" in text
    assert "| grain | 14.3 | 1.10x |" in text and "| 715 | 1.10x |" in text
    assert pipelines.markdown({}) == ""
    assert "epoch_ratio" not in pipelines.pipelines_summary(runs[1:3])["tfds"]
    assert "| tfds | 11.0 | - |" in pipelines.pipelines_table(
        {
            "machine": {"cpu": "C", "cores": 2, "repeats": 1, "epochs": 2},
            "summary": pipelines.pipelines_summary(runs[1:2]),
        }
    )


def test_the_pipelines_table_goes_between_the_markers_of_the_data_doc(tmp_path):
    section = {
        "machine": {"cpu": "CPU X", "cores": 2, "repeats": 1, "epochs": 2},
        "summary": pipelines.pipelines_summary([pipeline_run("device", [3.0, 2.0], 600.0)]),
    }
    begin = "<!-- pipelines:begin (written by experiments/bench/benchmark.py) -->"
    end = "<!-- pipelines:end -->"
    doc = tmp_path / "data.md"
    doc.write_text(f"intro\n{begin}\nold table\n{end}\nrest\n")
    pipelines.write_data_doc_table({"pipelines": section}, doc)
    pipelines.write_data_doc_table({"pipelines": section}, doc)  # again: the same text
    text = doc.read_text()
    assert text.startswith(f"intro\n{begin}\nCPU X, 2 cores;")
    assert text.count(begin) == 1 and "| device | 2.0 | 1.00x |" in text
    assert "old table" not in text and text.endswith(f"|\n{end}\nrest\n")
    real = (REPO_ROOT / "docs" / "data.md").read_text()
    assert real.count(begin) == 1 and real.count(end) == 1  # the benchmark writes there


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
    timings = models_section.pair_timings(raw, batch=32)
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
    reason = recipes.wrong_gradients(1.0)
    rows.append({"framework": "torch", "model": "dense", "error": f"not timed: {reason}"})
    text = models_section.table(rows, machine)
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
    assert "| keras | old: defaults, eager; fit per 200 steps |" in models_section.table(rows, old)


def test_process_age_counts_from_the_process_start():
    import time

    age = measure.process_age_s()
    assert age >= time.perf_counter() - measure.START - 0.05 and age < 24 * 3600


@pytest.mark.slow  # subprocesses
def test_measured_run_gives_the_childs_own_peak_rss():
    grow = "import sys; b = bytearray(200 * 2**20); print('out'); sys.exit(3)"
    big = measure.measured_run([sys.executable, "-c", grow])
    assert (big["returncode"], big["stdout"]) == (3, "out\n") and big["peak_rss_mb"] > 200
    small = measure.measured_run([sys.executable, "-c", "import sys; sys.stderr.write('e')"])
    assert (small["returncode"], small["stderr"]) == (0, "e") and small["peak_rss_mb"] < 150
    assert small["wall_s"] > 0
    slept = measure.measured_run([sys.executable, "-c", "import time; time.sleep(30)"], 0.5)
    assert slept["returncode"] == -9 and slept["wall_s"] < 10


def test_peak_rss_is_this_process():
    import resource

    peak = measure.peak_rss_mb()
    assert 10 < peak <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + 1


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
