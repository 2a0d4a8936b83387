import csv
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from helpers import REPO_ROOT, run_cli

from flaxmnist import configs, losses, models, optimizers, train
from flaxmnist.config_validation import validate_config
from flaxmnist.configs import preset_names
from flaxmnist.errors import ConfigError, FlaxmnistError
from flaxmnist.training import interruption, loop

HISTORY_FIELDS = {
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "epoch_time_s",
    "examples_per_s",
    "learning_rate",
    "step",
}
METRICS_FIELDS = {  # every field docs/runs.md names
    "test_loss",
    "test_accuracy",
    "num_test_examples",
    "num_params",
    "evaluated_epoch",
    "best_epoch",
    "stopped_early",
    "train_time_s",
    "total_time_s",
    "median_epoch_time_s",
    "time_to_first_chunk_s",
    "examples_per_s",
    "backend",
    "device_kind",
    "device_count",
    "process_count",
}


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["device", "tfds"])
def test_training_writes_the_run_directory_contract(tiny_config, tmp_path, pipeline):
    tiny_config.input_pipeline = pipeline
    metrics = loop.train_and_evaluate(tiny_config, tmp_path / "run")
    run = tmp_path / "run"
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert set(history[0]) >= HISTORY_FIELDS
    assert json.loads((run / "metrics.json").read_text()) == metrics
    assert set(metrics) >= METRICS_FIELDS
    assert metrics["num_test_examples"] == 100  # not a multiple of eval_batch_size 64
    assert metrics["num_params"] == 54_410
    assert metrics["test_accuracy"] >= 0.9  # the synthetic classes are easy to tell apart
    assert json.loads((run / "config.json").read_text())["input_pipeline"] == pipeline
    step_lines = (run / "steps.csv").read_text().splitlines()
    steps_per_epoch = int(512 * 0.9) // 32
    assert step_lines[0] == "step,epoch,loss,accuracy"
    assert len(step_lines) == 1 + 2 * steps_per_epoch
    with (run / "history.csv").open(newline="") as f:  # the same records as history.json
        rows = list(csv.DictReader(f))
    assert [set(row) for row in rows] == [set(record) for record in history]
    for row, record in zip(rows, history, strict=True):
        assert {k: float(v) for k, v in row.items()} == pytest.approx(record)
    for record in history:
        examples = steps_per_epoch * 32
        assert record["examples_per_s"] == pytest.approx(examples / record["epoch_time_s"])
    assert 0 < metrics["time_to_first_chunk_s"] < interruption.process_age_s()


@pytest.mark.slow
def test_zero_epochs_evaluates_the_initial_model(tiny_config, tmp_path):
    tiny_config.num_epochs = 0
    metrics = loop.train_and_evaluate(tiny_config, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "history.json").read_text()) == []
    assert metrics["steps"] == 0 and metrics["num_test_examples"] == 100
    assert metrics["test_accuracy"] < 0.5


@pytest.mark.slow
def test_a_finished_run_without_checkpoints_is_not_overwritten(tiny_config, tmp_path):
    tiny_config.num_epochs = 0
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    before = (tmp_path / "run" / "metrics.json").read_text()
    with pytest.raises(FlaxmnistError, match="holds a finished run without checkpoints"):
        loop.train_and_evaluate(tiny_config, tmp_path / "run")
    assert (tmp_path / "run" / "metrics.json").read_text() == before


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_epochs", -1, "num_epochs must be >= 0"),
        ("batch_size", 0, "batch_size must be positive"),
        ("batch_size", 100_000, "larger than the 461 training examples"),
        ("validation_fraction", 1.0, "validation_fraction must be in"),
        ("input_pipeline", "magic", "unknown input_pipeline"),
        ("optimizer", "lamb", "unknown optimizer"),
    ],
)
def test_bad_config_values_are_rejected_before_training(
    tiny_config, tmp_path, field, value, message
):
    tiny_config[field] = value
    with pytest.raises(ConfigError, match=message):
        loop.train_and_evaluate(tiny_config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_preset_names_resolve_to_files_and_the_config_argument_is_taken_out():
    spec, rest = train.split_config_argument(["prog", "--config=dense", "--config.seed=1"])
    assert (spec, rest) == ("dense", ["prog", "--config.seed=1"])
    spec, rest = train.split_config_argument(["prog", "--config", "cnn3", "-x"])
    assert (spec, rest) == ("cnn3", ["prog", "-x"])
    assert train.split_config_argument(["prog"]) == ("fast", ["prog"])
    assert train.DEFAULT_CONFIG == "fast"
    assert configs.resolve("dense") == f"{REPO_ROOT}/flaxmnist/configs/dense.py"
    assert configs.resolve("dense:abc").endswith("configs/dense.py:abc")
    with pytest.raises(ConfigError, match="unknown config 'resnet'"):
        configs.resolve("resnet")
    with pytest.raises(ConfigError, match="--config given 2 times"):
        train.split_config_argument(["prog", "--config=dense", "--config=fast"])


@pytest.mark.slow
def test_the_config_file_runs_once_and_its_overrides_apply(tmp_path):
    counter = tmp_path / "calls"
    config_file = tmp_path / "counting.py"
    config_file.write_text(
        "from pathlib import Path\n"
        "from flaxmnist.configs import default\n"
        "def get_config():\n"
        f"    path = Path({str(counter)!r})\n"
        "    path.write_text(path.read_text() + 'x' if path.exists() else 'x')\n"
        "    return default.get_config()\n"
    )
    code = (
        "import sys\n"
        "from absl import flags\n"
        "from flaxmnist import train\n"
        f"rest = train.define_flags(['prog', '--config={config_file}', '--config.seed=7'])\n"
        "flags.FLAGS(rest)\n"
        "print(flags.FLAGS.config.seed)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert result.stdout.split() == ["7"]
    assert counter.read_text() == "x"


@pytest.mark.slow
def test_cli_trains_with_a_custom_loss_from_experiments(
    synthetic_data_dir, tmp_path, session_compilation_cache
):
    result = run_cli(
        "--config=cnn_simple",
        f"--config.data_dir={synthetic_data_dir}",
        "--config.num_epochs=1",
        "--config.batch_size=32",
        f"--config.compilation_cache_dir={session_compilation_cache}",
        f"--config.import_modules={REPO_ROOT}/experiments/custom_losses.py",
        "--config.loss=focal",
        "--config.loss_options=gamma=1.5",
        f"--workdir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout and str(tmp_path / "run") in result.stdout
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["loss"] == "focal" and config["model"] == "cnn_simple"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test_accuracy"] > 0.5


def _corrupt_test_images(data_dir: Path, tmp_path: Path) -> list[str]:
    images = data_dir / "mnist" / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-40] + bytes(40))
    return []


def _empty_data_dir(data_dir: Path, tmp_path: Path) -> list[str]:
    (tmp_path / "empty").mkdir()
    return [f"--config.data_dir={tmp_path / 'empty'}"]


def _workdir_below_a_file(data_dir: Path, tmp_path: Path) -> list[str]:
    (tmp_path / "a_file").write_text("")
    return [f"--workdir={tmp_path / 'a_file' / 'run'}"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (["--config.model=resnet9000"], "unknown model 'resnet9000'; valid:"),
        (["--config.learning_rate=-0.1"], "learning_rate must be positive"),
        (["--config.num_epochs=-2"], "num_epochs must be >= 0"),
        (["--config=nonexistent_preset"], "unknown config 'nonexistent_preset'"),
        (["--config.no_such_field=3"], "unknown config field in --config overrides: no_such_field"),
        (_empty_data_dir, "no mnist IDX files in "),
        (_corrupt_test_images, "t10k-images-idx3-ubyte.gz: cannot read"),
        (_workdir_below_a_file, "cannot write to workdir"),
    ],
)
def test_cli_user_errors_end_with_one_line_and_status_2(
    synthetic_data_dir, tmp_path, setup, message
):
    args = setup if isinstance(setup, list) else setup(synthetic_data_dir, tmp_path)
    result = run_cli(
        f"--config.data_dir={synthetic_data_dir}",
        "--config.compilation_cache_dir=",
        *args,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and message in last_line


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_is_a_valid_config(preset):
    config = importlib.import_module(f"flaxmnist.configs.{preset}").get_config()
    validate_config(config)
    model = models.create_model(config, num_classes=10)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert models.count_params(variables["params"]) > 0
    optimizers.create_optimizer(config, steps_per_epoch=10)
    losses.get_loss(config.loss, config.loss_options)


@pytest.mark.slow
def test_a_run_without_workdir_lands_under_runs_printing_each_epoch_and_the_summary(
    synthetic_data_dir, tmp_path, session_compilation_cache
):
    result = run_cli(
        "--config=cnn_simple",
        f"--config.data_dir={synthetic_data_dir}",
        "--config.num_epochs=2",
        "--config.batch_size=32",
        f"--config.compilation_cache_dir={session_compilation_cache}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"cnn_simple-mnist-\d{8}-\d{6}", run.name)
    assert json.loads((run / "metrics.json").read_text())["epochs_completed"] == 2
    lines = result.stdout.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split(" | ")[0] for line in epochs] == ["epoch 1", "epoch 2"]
    assert all(re.search(r"val_acc \d\.\d{4} \| \d+\.\ds$", line) for line in epochs)
    summary = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in lines[-9:])
    assert list(summary) == [
        "model",
        "dataset",
        "epochs",
        "final train accuracy",
        "final val accuracy",
        "test accuracy",
        "test loss",
        "train time",
        "run directory",
    ]
    assert summary["model"] == "cnn_simple (54,410 params)" and summary["epochs"] == "2"
    assert summary["run directory"] == str(Path("runs") / run.name)


@pytest.mark.slow
def test_the_readme_s_bad_value_ends_in_exactly_its_line_and_writes_nothing(tmp_path):
    result = run_cli("--config.batch_size=abc", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "error: --config.batch_size: expected an integer, got 'abc'\n"
    assert list(tmp_path.iterdir()) == []


# A run in a fresh process that reports, as JSON, which optional libraries were imported before
# its first checkpoint (the experiment built) and after it ended (checkpoints and event files
# written).
IMPORTED_BY_A_RUN = """
import json, sys
from flaxmnist.configs import default
from flaxmnist.training import experiment, loop
config = default.get_config()
config.update(data_dir=sys.argv[1], model="cnn_simple", batch_size=32, num_epochs=1,
              compilation_cache_dir="")
optional = ("orbax", "tensorboardX", "torch", "tensorflow", "flax.nnx")
experiment.build_experiment(config)
before = [name for name in optional if name in sys.modules]
loop.train_and_evaluate(config, sys.argv[2])
print(json.dumps({"before": before, "after": [n for n in optional if n in sys.modules]}))
"""


@pytest.mark.slow
def test_a_run_imports_orbax_for_its_first_checkpoint_and_never_torch_tf_or_nnx(
    synthetic_data_dir, tmp_path
):
    result = subprocess.run(
        [sys.executable, "-c", IMPORTED_BY_A_RUN, str(synthetic_data_dir), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported = json.loads(result.stdout.splitlines()[-1])
    assert imported == {"before": [], "after": ["orbax"]}
    assert list((tmp_path / "run" / "tensorboard").iterdir())  # the event file was written
