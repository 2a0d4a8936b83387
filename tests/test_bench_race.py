"""The race (experiments/bench/race.py, contestant.py), its recipes, the Keras and PyTorch twins."""

import dataclasses

import pytest
from helpers import parsed_flags
from test_benchmark import load

from flaxmnist.configs import default
from flaxmnist.errors import ConfigError

recipes, race, contestant = (load(name) for name in ("recipes", "race", "contestant"))


def test_the_recipes_architectures_are_flaxmnists():
    from flaxmnist import models

    for name, architecture in recipes.ARCHITECTURES.items():
        registered = models.MODELS.get(name)
        assert registered.keywords == architecture, name
        assert registered.func is (models.CNN if "blocks" in architecture else models.MLP), name
    assert set(recipes.BENCHMARK_MODELS) <= set(recipes.ARCHITECTURES)
    assert set(race.CONTESTANTS[name].recipe for name in race.CONTESTANTS) == set(recipes.RECIPES)


def flax_param_count(name: str) -> int:
    """The Flax model's parameter count (batch statistics aside), from shapes alone."""
    import jax
    import jax.numpy as jnp

    from flaxmnist import models

    config = default.get_config()
    config.model = name
    model = models.create_model(config, recipes.NUM_CLASSES)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    return models.count_params(shapes["params"])


@pytest.mark.slow  # imports Keras
def test_the_keras_twins_have_the_flax_models_parameters():
    pytest.importorskip("keras", reason="Keras is in the tf extra")
    keras_recipe = load("keras_recipe")
    for name in recipes.ARCHITECTURES:
        model = keras_recipe.build_model(recipes.adam_recipe(name, batch=32))
        keras_count = sum(int(w.numpy().size) for w in model.trainable_weights)
        assert keras_count == flax_param_count(name), name


@pytest.mark.slow  # imports PyTorch
def test_the_torch_twins_have_the_flax_models_parameters():
    pytest.importorskip("torch", reason="PyTorch is in the bench extra, not the dev one")
    torch_recipe = load("torch_recipe")
    for name in recipes.ARCHITECTURES:
        model = torch_recipe.build_model(recipes.adam_recipe(name, batch=32))
        torch_count = sum(p.numel() for p in model.parameters())
        assert torch_count == flax_param_count(name), name


def test_layers_follow_flaxmnists_cnn_and_mlp():
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
    assert recipes.layers("mlp_dropout") == [
        ("flatten",), ("dense", 128), ("relu",), ("dropout", 0.3),
        ("dense", 64), ("relu",), ("dropout", 0.3), ("dense", 10),
    ]  # fmt: skip
    assert recipes.layers("dense") == [("flatten",), ("dense", 128), ("relu",), ("dense", 10)]


def test_the_models_sections_recipe_is_adam_at_keras_defaults():
    recipe = recipes.adam_recipe("convnet")
    assert (recipe.model, recipe.batch, recipe.optimizer, recipe.learning_rate) == (
        "convnet",
        128,
        "adam",
        1e-3,
    )
    assert (recipe.adam_betas, recipe.epsilon, recipe.schedule) == ((0.9, 0.999), 1e-7, "constant")
    changed = recipes.adam_recipe("dense", 64, max_epochs=10, validation_fraction=0.1)
    assert (changed.batch, changed.max_epochs, changed.validation_fraction) == (64, 10, 0.1)


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
    assert command[1].endswith("contestant.py") and command[2:] == [
        "--contestant=torch_fast", "--seed=11", "--smoke=True", "--keras_steps_per_execution=25",
    ]  # fmt: skip
    assert env == {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}


def test_the_warm_contestant_is_timed_after_an_untimed_run_filled_its_cache(monkeypatch):
    commands = []

    def measured_run(command, **popen):
        commands.append(command)
        return {"returncode": 1, "stdout": "", "stderr": "stopped", "wall_s": 1.0}

    monkeypatch.setattr(race.measure, "measured_run", measured_run)
    run = race.run_contestant("flaxmnist_fast_warm", 12, False, 50)
    assert (run["contestant"], run["seed"], run["error"]) == ("flaxmnist_fast_warm", 12, "stopped")
    fill, timed = commands
    assert (fill[-1], timed[-1]) == ("--config.seed=1012", "--config.seed=12")
    cache = [arg for arg in timed if arg.startswith("--config.compilation_cache_dir=")]
    assert len(cache) == 1 and cache[0] in fill  # one cache: the timed run finds it filled
    assert next(a for a in fill if a.startswith("--workdir")) != next(
        a for a in timed if a.startswith("--workdir")
    )


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
        return {"returncode": 0, "stdout": f'RESULT {{"gradient_error": {error}}}\n', "stderr": ""}

    def run_contestant(name, seed, *_):
        timed.append((name, seed))
        return race_run(name, seed, 20.0, 0.992)

    monkeypatch.setattr(race.measure, "measured_run", measured_run)
    monkeypatch.setattr(race.measure, "matmul_peak_gflops", lambda: 100.0)
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
    recipe, limits = contestant.smoke_limits(recipes.RECIPES["torch_reference"])
    assert recipe.max_epochs == contestant.SMOKE_MAX_EPOCHS and recipe.batch == 64
    assert limits == {
        "examples": contestant.SMOKE_EXAMPLES,
        "test_examples": contestant.SMOKE_TEST_EXAMPLES,
    }


def test_contestant_worker_flags():
    values = contestant.worker_settings(
        parsed_flags(contestant, "--contestant=torch_fast", "--seed=12")
    )
    assert values == {
        "contestant": "torch_fast", "seed": 12, "smoke": False, "keras_steps_per_execution": 50,
        "check_gradients": False,
    }  # fmt: skip
    for args in ([], ["--contestant=flaxmnist_fast"], ["--contestant=jax_fast"]):
        with pytest.raises(ConfigError, match="--contestant: expected one of keras_fast"):
            contestant.worker_settings(parsed_flags(contestant, *args))


@pytest.mark.slow  # imports and trains PyTorch
def test_torch_recipes_build_flaxmnists_models_and_train():
    pytest.importorskip("torch", reason="PyTorch is in the bench extra, not the dev one")
    torch_recipe = load("torch_recipe")

    def count(name):
        model = torch_recipe.build_model(recipes.RECIPES[name])
        return sum(p.numel() for p in model.parameters())

    assert (count("fast"), count("torch_reference")) == (108_970, 1_199_882)
    recipe = dataclasses.replace(recipes.RECIPES["torch_reference"], max_epochs=2)
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

    assert torch_recipe.model_gradient_error(model(), x, y) < recipes.GRADIENT_TOLERANCE
    assert recipes.wrong_gradients(1e-4) is None

    def detached_convolution(module):  # what Inductor did to the pytorch/examples Net
        module[0].weight.register_hook(torch.zeros_like)
        return module

    monkeypatch.setattr(torch, "compile", detached_convolution)
    assert torch_recipe.model_gradient_error(model(), x, y) == pytest.approx(1.0)
    assert "max relative error 1.00" in recipes.wrong_gradients(1.0)


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
    recipe = dataclasses.replace(fast, max_epochs=1)
    result = keras_recipe.train(recipe, "default", 0, examples=256, test_examples=200)
    assert result["steps_per_epoch"] == 2 and len(result["epochs"]) == 1
    assert 0 <= result["test_accuracy"] <= 1 and result["epochs"][0]["val_s"] == 0.0
