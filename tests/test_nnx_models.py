"""NNX models from a user's plugin file: registration, the bridge, runs, resume, reading a run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import REPO_ROOT, run_module, with_cpu_devices
from PIL import Image
from test_export import export_and_run_probabilities

import flaxmnist
from flaxmnist import losses, models, plugins
from flaxmnist.configs import default
from flaxmnist.errors import ConfigError
from flaxmnist.models import nnx_models
from flaxmnist.testing import write_idx_dataset
from flaxmnist.training import loop, step_functions, train_state

PLUGIN = REPO_ROOT / "experiments" / "nnx_cnn.py"
# conv 1->32 and 32->64 (3x3, 'SAME'), two 2x2 average pools (28 -> 14 -> 7), 7*7*64 -> 256 -> 10.
CNN_PARAMS = (9 * 32 + 32) + (9 * 32 * 64 + 64) + (3136 * 256 + 256) + (256 * 10 + 10)
IMAGES = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1))


class LinenTwin(nn.Module):
    """The Linen CNN of flax/examples/mnist (October 2025), the NNX CNN's twin."""

    @nn.compact
    def __call__(self, x):
        x = nn.avg_pool(nn.relu(nn.Conv(32, (3, 3))(x)), (2, 2), strides=(2, 2))
        x = nn.avg_pool(nn.relu(nn.Conv(64, (3, 3))(x)), (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(256)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


@pytest.fixture(scope="module")
def plugin():
    """experiments/nnx_cnn.py imported as --config.import_modules does; gone after the module.

    The registry gets its entries back (tests/test_models.py checks the registered names) and
    the module leaves sys.modules, so a later import registers again.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models.MODELS, "_entries", dict(models.MODELS._entries))
        (module,) = plugins.import_modules(str(PLUGIN))
        yield module
        del sys.modules[module.__name__]


def _config(data_dir: Path, **overrides):
    config = default.get_config()
    config.update(
        import_modules=str(PLUGIN),
        model="nnx_mlp_bn",  # BatchNorm and Dropout without nnx.Conv, slow on XLA:CPU
        data_dir=str(data_dir),
        batch_size=32,
        eval_batch_size=64,
        num_epochs=2,
        compilation_cache_dir="",
    )
    config.update(overrides)
    return config


def _variables(model: nn.Module) -> dict:
    return models.init_variables(model, (28, 28, 1), jax.random.key(0))


def _shapes(model: nn.Module) -> dict:
    """The model's variables as shapes, without computing them."""
    return jax.eval_shape(lambda: _variables(model))


@pytest.fixture(scope="module")
def nnx_run(plugin, tmp_path_factory) -> Path:
    """A 2-epoch run of nnx_mlp_bn (BatchNorm and Dropout) on synthetic data."""
    root = tmp_path_factory.mktemp("nnx")
    write_idx_dataset(root / "data" / "mnist")
    loop.train_and_evaluate(_config(root / "data"), root / "run")
    return root


def test_the_example_cnn_has_its_linen_twins_parameters(plugin):
    config = default.get_config()
    config.model = "nnx_cnn"
    shapes = _shapes(models.create_model(config, 10))
    twin = jax.eval_shape(LinenTwin().init, jax.random.key(0), IMAGES)
    assert models.count_params(shapes["params"]) == models.count_params(twin["params"])
    assert models.count_params(shapes["params"]) == CNN_PARAMS == 824_458
    assert set(shapes) == {"params"}
    config.model = "nnx_cnn_bn"  # + BatchNorm scale and bias; its running averages are state
    shapes = _shapes(models.create_model(config, 10))
    assert models.count_params(shapes["params"]) == CNN_PARAMS + 2 * (32 + 64)
    assert models.count_params(shapes["batch_stats"]) == 2 * (32 + 64)


def test_bad_registrations_are_one_line_errors_naming_them(plugin):
    bad = [
        (lambda rngs: None, TypeError, r"register_nnx\('x'\): <function .* is not an nnx.Module"),
        (LinenTwin, TypeError, r"register_nnx\('x'\): .*LinenTwin'> is not an nnx.Module class"),
        (plugin.CNN(rngs=nnx.Rngs(0)), TypeError, r"is not an nnx.Module class"),
    ]
    for obj, error, message in bad:
        with pytest.raises(error, match=message):
            models.register_nnx("x", obj)
    with pytest.raises(TypeError, match=r"register_nnx\('x'\): CNN\(rngs=\.\.\., \*\*kwargs\)"):
        models.register_nnx("x", plugin.CNN, width=3)
    with pytest.raises(TypeError, match="num_classes comes from the dataset"):
        models.register_nnx("x", plugin.CNNBatchNormDropout, num_classes=3)

    class NoRngs(nnx.Module):
        def __init__(self, width: int = 3):
            self.width = width

    with pytest.raises(TypeError, match=r"register_nnx\('x'\): NoRngs\(rngs=\.\.\., \*\*kwargs\)"):
        models.register_nnx("x", NoRngs)
    for taken in ("nnx_cnn", "dense"):
        with pytest.raises(ValueError, match=f"model '{taken}' is already registered"):
            models.register_nnx(taken, plugin.CNN)
    assert "x" not in models.MODELS


def test_a_bad_registration_in_a_plugin_file_is_a_one_line_config_error(tmp_path):
    bad = tmp_path / "bad_nnx.py"
    bad.write_text("from flaxmnist import models\nmodels.register_nnx('bad', print)\n")
    with pytest.raises(ConfigError) as error:
        plugins.import_modules(str(bad))
    assert "\n" not in str(error.value)
    assert "bad_nnx.py failed: TypeError" in str(error.value)
    assert "register_nnx('bad'): <built-in function print> is not an nnx.Module" in str(error.value)


def test_an_activation_or_dtype_the_module_would_ignore_is_refused(plugin):
    for field, value in (("activation", "gelu"), ("dtype", "bfloat16")):
        config = default.get_config()
        config.update({"model": "nnx_cnn", field: value})
        with pytest.raises(ConfigError, match=f"--config.{field}: model 'nnx_cnn' is an nnx"):
            models.create_model(config, 10)


def test_logits_of_another_width_than_the_classes_are_refused(plugin):
    model = nnx_models.checked_model("cnn", plugin.CNN, {}).build(num_classes=7)
    with pytest.raises(ConfigError, match=r"CNN returns an array of shape \(1, 10\); expected"):
        _variables(model)


def test_a_call_that_declares_train_gets_it_and_the_mode_matches(plugin):
    seen = []

    class Recorder(nnx.Module):
        def __init__(self, *, rngs: nnx.Rngs):
            self.dropout = nnx.Dropout(0.5, rngs=rngs)
            self.head = nnx.Linear(784, 10, rngs=rngs)

        def __call__(self, x, train: bool):
            seen.append((train, self.dropout.deterministic))
            return self.head(x.reshape(len(x), -1))

    model = nnx_models.checked_model("recorder", Recorder, {}).build(num_classes=10)
    variables = _variables(model)
    seen.clear()
    model.apply(variables, IMAGES, train=True, rngs={"dropout": jax.random.key(0)})
    model.apply(variables, IMAGES, train=False)
    assert seen == [(True, False), (False, True)]  # train() / eval() set Dropout's mode too


@pytest.mark.slow
def test_the_bridge_computes_what_the_nnx_module_computes(plugin):
    """Train mode (batch statistics, running averages updated) and eval mode, against NNX."""
    no_dropout = {"dropout_rate": 0.0}
    model = nnx_models.checked_model("bn", plugin.CNNBatchNormDropout, no_dropout).build(10)
    variables = _variables(model)
    module = plugin.CNNBatchNormDropout(num_classes=10, **no_dropout, rngs=nnx.Rngs(0))
    nnx.update(module, nnx.merge_state(variables["params"], variables["batch_stats"]))
    logits, updates = model.apply(
        variables, IMAGES, train=True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"]
    )
    module.train()
    chex.assert_trees_all_close(logits, module(IMAGES), atol=1e-5)
    running = nnx.to_pure_dict(nnx.state(module, nnx.BatchStat))
    chex.assert_trees_all_close(updates["batch_stats"], running, atol=1e-6)
    assert not jnp.allclose(running["norm1"]["mean"], variables["batch_stats"]["norm1"]["mean"])
    module.eval()
    merged = {**variables, **updates}
    chex.assert_trees_all_close(model.apply(merged, IMAGES), module(IMAGES), atol=1e-5)


@pytest.mark.slow
def test_dropout_differs_between_keys_in_training_and_is_off_in_inference(plugin):
    config = default.get_config()
    config.model = "nnx_cnn_bn"
    model = models.create_model(config, 10)
    no_dropout = nnx_models.checked_model(
        "bn", plugin.CNNBatchNormDropout, {"dropout_rate": 0.0}
    ).build(10)
    variables = _variables(model)

    def train(net, seed):
        rngs = {"dropout": jax.random.key(seed)}
        return net.apply(variables, IMAGES, train=True, rngs=rngs, mutable=["batch_stats"])[0]

    assert not jnp.allclose(train(model, 0), train(model, 1))
    chex.assert_trees_all_equal(train(model, 0), train(model, 0))
    assert not jnp.allclose(train(model, 0), train(no_dropout, 0))
    chex.assert_trees_all_close(model.apply(variables, IMAGES), no_dropout.apply(variables, IMAGES))


@pytest.mark.slow
def test_one_train_step_changes_params_and_batch_stats(plugin):
    config = default.get_config()
    config.model = "nnx_cnn_bn"
    model = models.create_model(config, 10)
    state = train_state.create_train_state(model, (28, 28, 1), optax.adam(1e-3), jax.random.key(0))
    before = jax.tree_util.tree_map(np.asarray, (state.params, state.batch_stats))
    fns = step_functions.make_step_functions(
        losses.get_loss("cross_entropy"), step_functions.normalize_images
    )
    batch = {
        "image": (IMAGES * 255).astype(jnp.uint8),
        "label": jnp.arange(8, dtype=jnp.int32),
    }
    state, sums = fns.train_step(state, batch, jax.random.key(3))
    assert int(state.step) == 1 and float(sums["count"]) == 8
    for old, new in zip(before, (state.params, state.batch_stats), strict=True):
        changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), old, new)
        assert all(jax.tree_util.tree_leaves(changed)), changed


@pytest.mark.slow
def test_a_run_trains_checkpoints_and_a_resumed_run_ends_bitwise_equal(nnx_run):
    metrics_ = json.loads((nnx_run / "run" / "metrics.json").read_text())
    mlp_params = (784 * 256 + 256) + 2 * 256 + (256 * 256 + 256) + (256 * 10 + 10)  # 2 * 256: BN
    assert metrics_["test_accuracy"] >= 0.9 and metrics_["num_params"] == mlp_params
    assert sorted((nnx_run / "run" / "checkpoints").iterdir())
    config = _config(nnx_run / "data", num_epochs=1)
    loop.train_and_evaluate(config, nnx_run / "pieces")
    config.num_epochs = 2
    loop.train_and_evaluate(config, nnx_run / "pieces")
    whole, pieces = (flaxmnist.load_run(nnx_run / name) for name in ("run", "pieces"))
    chex.assert_trees_all_equal(*(jax.tree_util.tree_leaves(r.state) for r in (pieces, whole)))
    steps = [(nnx_run / name / "steps.csv").read_text() for name in ("pieces", "run")]
    assert steps[0] == steps[1]


@pytest.mark.slow
def test_evaluate_predict_and_export_refuse_the_plugin_unless_allowed(nnx_run, tmp_path):
    run = nnx_run / "run"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "digit.png")
    reading = {
        "evaluate": [f"--workdir={run}"],
        "predict": [f"--workdir={run}", "--json", "digit.png"],
        "export": [f"--workdir={run}", f"--out={tmp_path / 'export'}"],
    }
    for command, args in reading.items():
        refused = run_module(command, *args, cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr
        assert "model 'nnx_mlp_bn'" in refused.stderr and "--allow_plugins" in refused.stderr
    allowed = {
        command: run_module(command, *args, "--allow_plugins", cwd=tmp_path)
        for command, args in reading.items()
    }
    for result in allowed.values():
        assert result.returncode == 0, result.stderr
    assert "reload check: test accuracy" in allowed["evaluate"].stdout
    (prediction,) = json.loads(allowed["predict"].stdout)
    assert sum(entry["probability"] for entry in prediction["top"]) <= 1.0 + 1e-6
    assert (tmp_path / "export" / "model.stablehlo").is_file()


@pytest.mark.slow
# saved_model wraps the program that stablehlo exports (jax2tf's native serialization): a model
# that exports as stablehlo exports as a SavedModel too, which tests/test_export.py proves.
@pytest.mark.parametrize("fmt", ["stablehlo", "onnx"])
def test_an_export_predicts_as_the_run_does_without_flaxmnist(nnx_run, fmt):
    out = nnx_run / f"export-{fmt}"
    exported = run_module(
        "export",
        f"--workdir={nnx_run / 'run'}",
        "--allow_plugins",
        f"--format={fmt}",
        f"--out={out}",
        cwd=nnx_run,
    )
    assert exported.returncode == 0, exported.stderr
    got, expected = export_and_run_probabilities(out, fmt, nnx_run)
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.slow
def test_the_readme_s_nnx_cnn_command_trains_and_learns(nnx_run, tmp_path):
    """README's command (``fast``, the plugin, ``nnx_cnn``, 3 epochs) on the synthetic data."""
    trained = run_module(
        "train",
        "--config=fast",
        f"--config.import_modules={PLUGIN}",
        "--config.model=nnx_cnn",
        "--config.num_epochs=3",
        f"--config.data_dir={nnx_run / 'data'}",
        "--config.compilation_cache_dir=",
        f"--workdir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["num_params"] == CNN_PARAMS and metrics["test_accuracy"] > 0.5


@pytest.mark.slow
def test_two_devices_train_as_one(nnx_run, tmp_path):
    """The same run on 2 simulated CPU devices (batch split, BatchNorm over the whole batch)."""
    config = _config(nnx_run / "data", num_devices=2)
    args = [
        f"--config.{key}={config[key]}"
        for key in (
            "import_modules",
            "model",
            "data_dir",
            "batch_size",
            "eval_batch_size",
            "num_epochs",
            "num_devices",
        )
    ]
    trained = run_module(
        "train",
        "--config=default",
        *args,
        "--config.compilation_cache_dir=",
        f"--workdir={tmp_path / 'run'}",
        cwd=REPO_ROOT,
        env=with_cpu_devices(2),
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    two = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert two["device_count"] == 2
    losses_ = [
        np.genfromtxt(run / "steps.csv", delimiter=",", names=True)["loss"]
        for run in (tmp_path / "run", nnx_run / "run")
    ]
    np.testing.assert_allclose(*losses_, atol=3e-3)


@pytest.mark.slow
def test_the_docs_example_module_registers_and_trains(synthetic_data_dir, tmp_path):
    page = (REPO_ROOT / "docs" / "nnx.md").read_text()
    example = page.split("```python\n", 1)[1].split("```", 1)[0]
    assert example.startswith("# my_models.py\n")
    (tmp_path / "my_models.py").write_text(example)
    result = run_module(
        "train",
        "--config.import_modules=my_models.py",
        "--config.model=my_mlp",
        f"--config.data_dir={synthetic_data_dir}",
        "--config.batch_size=32",
        "--config.num_epochs=1",
        "--config.compilation_cache_dir=",
        "--workdir=run",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    hidden, out = 784 * 128 + 128, 128 * 10 + 10
    assert metrics["num_params"] == hidden + 2 * 128 + out  # BatchNorm: scale and bias
    assert metrics["test_accuracy"] > 0.5
