"""Reading a run never runs its code: plugin modules named in a run's config are imported only
when the caller allows it, and sizes read from a run are checked before anything is allocated."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import flaxmnist
from flaxmnist.errors import FlaxmnistError
from flaxmnist.evaluation import loading
from flaxmnist.testing import write_idx_dataset
from flaxmnist.training import experiment

PLUGIN = """
from pathlib import Path
import functools
from flaxmnist import models

Path(__file__).with_suffix(".ran").open("a").write("imported\\n")  # proof that the code ran
models.MODELS.add("plugin_mlp", functools.partial(models.MLP, hidden=(16,)))
"""


def plugin_ran(plugin: Path) -> bool:
    """Whether the plugin module's code has run (it leaves a ``.ran`` file beside itself)."""
    return plugin.with_suffix(".ran").exists()


def flaxmnist_cli(command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m flaxmnist.COMMAND ARGS`` in a fresh process: nothing registered beforehand."""
    return subprocess.run(
        [sys.executable, "-m", f"flaxmnist.{command}", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run directory, plugin file) of a run whose model only its plugin module defines.

    Trained in a subprocess, so this test process never imports the plugin.
    """
    root = tmp_path_factory.mktemp("plugin_run")
    write_idx_dataset(root / "data" / "mnist", num_train=128, num_test=32)
    plugin = root / "someone_elses_plugin.py"
    plugin.write_text(PLUGIN)
    trained = flaxmnist_cli(
        "train",
        f"--workdir={root / 'run'}",
        "--config=dense",
        "--config.model=plugin_mlp",
        f"--config.import_modules={plugin}",
        f"--config.data_dir={root / 'data'}",
        "--config.num_epochs=1",
        "--config.batch_size=32",
        "--config.validation_fraction=0",
        "--config.compilation_cache_dir=",
        cwd=root,
    )
    assert trained.returncode == 0, trained.stderr
    assert plugin_ran(plugin)
    plugin.with_suffix(".ran").unlink()  # from here on, a .ran file means loading ran it
    return root / "run", plugin


@pytest.mark.slow
def test_load_run_refuses_a_run_that_needs_its_plugin_code_and_runs_none_of_it(plugin_run):
    run, plugin = plugin_run
    with pytest.raises(loading.PluginsRequiredError) as refused:
        flaxmnist.load_run(run)
    message = str(refused.value)
    assert "model 'plugin_mlp'" in message and str(plugin) in message
    assert "allow_plugins=True" in message and "\n" not in message
    assert not plugin_ran(plugin)


@pytest.mark.slow
def test_init_from_does_not_import_the_source_runs_plugins(plugin_run, tiny_config):
    run, plugin = plugin_run
    tiny_config.update(model="dense", init_from=str(run))
    with pytest.raises(loading.PluginsRequiredError, match=r"--config\.import_modules"):
        experiment.build_experiment(tiny_config)
    assert not plugin_ran(plugin)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "compare"])
def test_every_reading_command_refuses_plugin_code_in_one_line(plugin_run, command, tmp_path):
    run, plugin = plugin_run
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    np.save(tmp_path / "digit.npy", np.zeros((28, 28), np.uint8))
    args = {
        "evaluate": [f"--workdir={run}"],
        "predict": [f"--workdir={run}", str(tmp_path / "digit.npy")],
        "export": [f"--workdir={run}"],
        "compare": [str(run), f"--out={tmp_path / 'comparison'}"],
    }[command]
    refused = flaxmnist_cli(command, *args, cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "--allow_plugins" in lines[0] and str(plugin) in lines[0], lines
    assert not plugin_ran(plugin)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing written there


@pytest.mark.slow
def test_allow_plugins_imports_them_and_the_run_predicts(plugin_run, tmp_path):
    run, plugin = plugin_run
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "digit.png")
    allowed = flaxmnist_cli(
        "predict", f"--workdir={run}", "--allow_plugins", "--json", "digit.png", cwd=tmp_path
    )
    assert allowed.returncode == 0, allowed.stderr
    assert plugin_ran(plugin)
    (prediction,) = json.loads(allowed.stdout)
    assert sum(entry["probability"] for entry in prediction["top"]) <= 1.0 + 1e-6


@pytest.mark.slow
def test_a_run_whose_names_resolve_loads_without_importing_its_plugins(tiny_config, tmp_path):
    """A run trained with a custom loss needs no plugin to predict: nothing is imported."""
    plugin = tmp_path / "loss_plugin.py"
    plugin.write_text('raise RuntimeError("this plugin must not be imported")\n')
    flaxmnist.train_and_evaluate(tiny_config.copy_and_resolve_references(), tmp_path / "run")
    config_file = tmp_path / "run" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "import_modules": str(plugin)}))
    run = flaxmnist.load_run(tmp_path / "run")
    assert run.predict(np.zeros((2, 28, 28, 1), np.uint8)).shape == (2, 10)


@pytest.mark.parametrize(
    ("meta", "complaint"),
    [
        ({"class_names": ["a"], "image_shape": [28, 28, 1]}, "class names"),
        ({"class_names": "0123456789", "image_shape": [28, 28, 1]}, "class names"),
        ({"class_names": ["a", "b"], "image_shape": [28, 28]}, "image shape"),
        ({"class_names": ["a", "b"], "image_shape": [10**6, 28, 1]}, "image shape"),
        ({"class_names": ["a", "b"], "image_shape": [28, 28, 1.5]}, "image shape"),
        ({"class_names": ["a", "b"], "image_shape": [28, 28, 0]}, "image shape"),
    ],
)
def test_data_info_read_from_a_run_is_checked(meta, complaint):
    with pytest.raises(FlaxmnistError, match=complaint):
        loading.check_data_info(Path("RUN"), meta)


def test_data_info_within_bounds_is_returned_as_tuples():
    meta = {"class_names": ["a", "b"], "image_shape": [28, 28, 1]}
    assert loading.check_data_info(Path("RUN"), meta) == (("a", "b"), (28, 28, 1))


def test_a_state_larger_than_any_model_needs_is_refused_before_allocating():
    huge = loading.MAX_STATE_BYTES // 4 + 1  # float32 elements: one more than the bound
    with pytest.raises(FlaxmnistError, match=r"needs 4\.0 GiB"):
        loading.check_state_size(Path("RUN"), {"w": jax.ShapeDtypeStruct((huge,), jnp.float32)})
    loading.check_state_size(Path("RUN"), {"w": jax.ShapeDtypeStruct((1000,), jnp.float32)})


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\udcff"])
def test_a_damaged_run_config_is_one_line(tmp_path, content):
    (tmp_path / "config.json").write_text(content, errors="surrogateescape")
    with pytest.raises(FlaxmnistError, match=r"config\.json"):
        flaxmnist.load_run(tmp_path)
