"""Bad input gets a one-line error naming the field or the file: unit checks and the CLI fuzz."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from helpers import run_script

from flaxmnist import config_schema, config_validation, configs, train
from flaxmnist.configs import default, preset_names
from flaxmnist.data import datasets
from flaxmnist.errors import ConfigError, DataError, FlaxmnistError
from flaxmnist.testing import idx_bytes, write_idx_dataset

NAN, INF = math.nan, math.inf


def loose_config() -> ml_collections.ConfigDict:
    """The default config without type safety, so that any value can be put in a field."""
    return ml_collections.ConfigDict(default.get_config().to_dict(), type_safe=False)


def set_field(config: ml_collections.ConfigDict, field: str, value) -> None:
    *groups, name = field.split(".")
    node = config
    for group in groups:
        node = node[group]
    node[name] = value


# --------------------------------------------------------------------------- validate_config


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        # Types.
        ("batch_size", "abc", "batch_size must be an integer, got 'abc'"),
        ("batch_size", 1.5, "batch_size must be an integer"),
        ("batch_size", True, "batch_size must be an integer"),
        ("num_epochs", None, "num_epochs must be an integer"),
        ("learning_rate", "fast", "learning_rate must be a number"),
        ("augment.cutout_prob", "half", "augment.cutout_prob must be a number"),
        ("resume", 1, "resume must be true or false"),
        ("augment.flip", "maybe", "augment.flip must be true or false"),
        ("model", 3, "model must be a string"),
        ("data_dir", None, "data_dir must be a string"),
        # Ranges.
        ("batch_size", 0, "batch_size must be positive"),
        ("batch_size", -32, "batch_size must be positive"),
        ("eval_batch_size", 0, "eval_batch_size must be positive"),
        ("batch_size", 10_000_000, "batch_size 10000000 is too large"),
        ("eval_batch_size", 10**9, "eval_batch_size 1000000000 is too large"),
        ("num_epochs", -1, "num_epochs must be >= 0"),
        ("learning_rate", 0.0, "learning_rate must be positive"),
        ("learning_rate", -0.1, "learning_rate must be positive"),
        ("validation_fraction", 1.0, r"validation_fraction must be in \[0, 1\)"),
        ("validation_fraction", -0.1, "validation_fraction must be in"),
        ("ema_decay", 1.0, r"ema_decay must be in \[0, 1\)"),
        ("momentum", -0.5, "momentum must be in"),
        ("weight_decay", -1e-4, "weight_decay must be >= 0"),
        ("warmup_epochs", -1.0, "warmup_epochs must be >= 0"),
        ("lr_decay_rate", 0.0, "lr_decay_rate must be positive"),
        ("lr_decay_epochs", -2.0, "lr_decay_epochs must be positive"),
        ("tta_shift", 9, r"tta_shift must be in \[0, 4\], got 9"),
        ("tta_shift", -1, "tta_shift must be in"),
        ("chunks_per_epoch", 0, "chunks_per_epoch must be positive"),
        ("keep_checkpoints", 0, "keep_checkpoints must be >= 1"),
        ("checkpoint_every_epochs", -1, "checkpoint_every_epochs must be >= 0"),
        ("log_every_steps", -5, "log_every_steps must be >= 0"),
        ("seed", -1, "seed must be in"),
        ("seed", 2**64, "seed must be in"),
        ("num_devices", -1, "num_devices must be >= 0"),
        ("augment.rotation", -5.0, r"augment.rotation must be in \[0, 180\]"),
        ("augment.translate", 2.0, "augment.translate must be in"),
        ("augment.zoom", 1.0, "augment.zoom must be in"),
        ("augment.shear", 90.0, "augment.shear must be in"),
        ("augment.cutout", -2, "augment.cutout must be >= 0"),
        ("augment.cutout_prob", 1.5, r"augment.cutout_prob must be in \[0, 1\]"),
        ("early_stopping.patience", -1, "early_stopping.patience must be >= 0"),
        ("early_stopping.min_delta", -0.1, "early_stopping.min_delta must be >= 0"),
        ("multihost.timeout_s", 0, "multihost.timeout_s must be positive"),
        ("multihost.process_id", -2, "multihost.process_id must be >= -1"),
        ("multihost.num_processes", -1, "multihost.num_processes must be >= 0"),
        # NaN and infinities.
        ("learning_rate", NAN, "learning_rate must be a finite number, got nan"),
        ("learning_rate", INF, "learning_rate must be a finite number, got inf"),
        ("learning_rate", -INF, "learning_rate must be a finite number, got -inf"),
        ("momentum", NAN, "momentum must be a finite number"),
        ("weight_decay", INF, "weight_decay must be a finite number"),
        ("warmup_epochs", NAN, "warmup_epochs must be a finite number"),
        ("lr_decay_rate", INF, "lr_decay_rate must be a finite number"),
        ("lr_decay_epochs", NAN, "lr_decay_epochs must be a finite number"),
        ("ema_decay", NAN, "ema_decay must be a finite number"),
        ("validation_fraction", NAN, "validation_fraction must be a finite number"),
        ("augment.rotation", INF, "augment.rotation must be a finite number"),
        ("augment.translate", NAN, "augment.translate must be a finite number"),
        ("augment.zoom", -INF, "augment.zoom must be a finite number"),
        ("augment.shear", NAN, "augment.shear must be a finite number"),
        ("augment.cutout_prob", NAN, "augment.cutout_prob must be a finite number"),
        ("early_stopping.min_delta", NAN, "early_stopping.min_delta must be a finite number"),
        ("multihost.timeout_s", INF, "multihost.timeout_s must be a finite number"),
        # Names.
        ("model", "", "model must not be empty"),
        ("optimizer", "", "optimizer must not be empty"),
        ("dataset", "", "dataset must not be empty"),
        ("loss", " ", "loss must not be empty"),
        ("schedule", "", "schedule must not be empty"),
        ("activation", "mish", "unknown activation 'mish'; valid: elu, gelu"),
        ("activation", "", "unknown activation ''"),
        ("dtype", "float16", "unknown dtype 'float16'; valid: float32, bfloat16"),
        ("conv_impl", "fft", "unknown conv_impl 'fft'"),
        ("pool_impl", "avg", "unknown pool_impl 'avg'"),
        ("input_pipeline", "magic", "unknown input_pipeline 'magic'; valid: device, tfds, grain"),
        ("normalization", "zscore", "unknown normalization 'zscore'"),
        ("nan_policy", "ignore", "unknown nan_policy 'ignore'"),
        ("early_stopping.monitor", "val_f1", "unknown early_stopping.monitor 'val_f1'"),
        ("multihost.enabled", "maybe", "unknown multihost.enabled 'maybe'"),
        # loss_options syntax.
        ("loss_options", "gamma", "loss_options: expected name=value, got 'gamma'"),
        ("loss_options", "=1.5", "loss_options: expected name=value"),
        ("loss_options", "gamma=1,1x=2", "loss_options: expected name=value, got '1x=2'"),
    ],
)
def test_validate_config_names_the_bad_field(field, value, message):
    config = loose_config()
    set_field(config, field, value)
    with pytest.raises(ConfigError, match=message):
        config_validation.validate_config(config)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("validation_fraction", 0.0),
        ("ema_decay", 0.999),
        ("tta_shift", 4),
        ("batch_size", config_schema.MAX_BATCH_SIZE),
        ("learning_rate", 1),  # an int where a float is expected is fine
        ("loss_options", "gamma=1.5, alpha=0.25"),
        ("num_epochs", 0),
        ("seed", config_schema.MAX_SEED),
    ],
)
def test_validate_config_accepts_edge_values(field, value):
    config = loose_config()
    set_field(config, field, value)
    config_validation.validate_config(config)


@pytest.mark.parametrize("preset", preset_names())
def test_every_preset_passes_validation(preset):
    config = configs.load_file(str(configs.PRESET_DIR / f"{preset}.py"))
    config_validation.validate_config(config)


def test_missing_field_is_named():
    config = loose_config()
    del config.augment["cutout_prob"]
    with pytest.raises(ConfigError, match=r"config has no field augment\.cutout_prob"):
        config_validation.validate_config(config)


def test_restore_best_needs_checkpoints():
    config = loose_config()
    config.early_stopping.restore_best = True
    config.checkpoint_every_epochs = 0
    with pytest.raises(ConfigError, match=r"early_stopping\.restore_best needs checkpoints"):
        config_validation.validate_config(config)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "no such directory"),
        ("file", "not a directory"),
        ("empty", r"not a run directory \(no config.json\)"),
        ("bad_json", "cannot read config.json"),
        ("not_a_config", "config.json is not a run's config"),
        ("no_checkpoints", "the run has no checkpoints/ folder"),
    ],
)
def test_init_from_must_be_a_run_directory(tmp_path, kind, message):
    source = tmp_path / "source"
    if kind == "file":
        source.write_text("x")
    elif kind != "missing":
        source.mkdir()
    contents = {"bad_json": "{", "not_a_config": "[1, 2]", "no_checkpoints": '{"model": "dense"}'}
    if kind in contents:
        (source / "config.json").write_text(contents[kind])
    config = loose_config()
    config.init_from = str(source)
    with pytest.raises(ConfigError, match=f"init_from {source}: {message}"):
        config_validation.validate_config(config)


@pytest.mark.slow
def test_validation_and_the_cli_module_import_no_jax():
    code = (
        "import sys, flaxmnist.config_validation, flaxmnist.train; "
        "assert 'jax' not in sys.modules, 'jax imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(
    ("below", "message"),
    [("", "it exists and is not a directory"), ("run", "thing is not a directory")],
)
def test_unusable_workdirs_are_refused(tmp_path, below, message):
    (tmp_path / "thing").write_text("x")
    with pytest.raises(FlaxmnistError, match=f"cannot write to workdir .*{message}"):
        config_validation.validate_workdir(tmp_path / "thing" / below)


@pytest.mark.parametrize("name", ["new/nested run", "rün ✓", "."])
def test_usable_workdirs_pass(tmp_path, name):
    config_validation.validate_workdir(tmp_path / name)
    assert not (tmp_path / "new").exists()  # checking creates nothing


# --------------------------------------------------------------------------- config files


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x = (\n", r"cannot be loaded \(SyntaxError"),
        ("import no_such_module_anywhere\n", r"cannot be loaded \(ModuleNotFoundError"),
        ("x = 1\n", r"defines no get_config\(\) function"),
        ("def get_config():\n    raise RuntimeError('boom')\n", r"failed \(RuntimeError: boom\)"),
        ("def get_config():\n    return 3\n", "returned int, not a ConfigDict"),
    ],
)
def test_broken_config_files_are_one_line_errors(tmp_path, source, message):
    path = tmp_path / "my_config.py"
    path.write_text(source)
    with pytest.raises(ConfigError, match=f"config file {path}.*{message}"):
        configs.load_file(str(path))


def test_config_file_argument_reaches_get_config(tmp_path):
    path = tmp_path / "my_config.py"
    path.write_text(
        "import ml_collections\n"
        "def get_config(arg):\n"
        "    return ml_collections.ConfigDict({'arg': arg})\n"
    )
    assert configs.load_file(f"{path}:abc").arg == "abc"
    with pytest.raises(ConfigError, match=r"get_config\(\) failed"):
        configs.load_file(str(path))


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("--config.no_such_field=3", "no_such_field"),
        ("--config.augment.blur=1", "augment.blur"),
        ("--config.early_stopping.monitor.x=1", "early_stopping.monitor.x"),
        ("--noconfig.no_such_flag", "no_such_flag"),
    ],
)
def test_unknown_override_fields_are_named(override, field):
    config = default.get_config()
    with pytest.raises(ConfigError, match=f"unknown config field in --config overrides: {field}$"):
        train.check_override_fields(config, ["prog", "--config.seed=1", override])


def test_known_override_fields_pass():
    argv = ["prog", "--config.augment.rotation=3", "--noconfig.resume", "--workdir=x"]
    train.check_override_fields(default.get_config(), argv)


# --------------------------------------------------------------------------- dataset files


def raw_dataset(tmp_path: Path, **arrays: np.ndarray) -> Path:
    """A raw (uncompressed, unchecksummed) synthetic dataset with some files replaced."""
    folder = write_idx_dataset(tmp_path / "mnist", 20, 10, compress=False, checksums=False)
    for stem, array in arrays.items():
        (folder / stem.replace("_", "-")).write_bytes(idx_bytes(array))
    return folder


def images(n: int, size: int = 28) -> np.ndarray:
    return np.zeros((n, size, size), np.uint8)


def labels(n: int, value: int = 0) -> np.ndarray:
    return np.full((n,), value, np.uint8)


def test_parse_idx_rejects_zero_dimensions():
    with pytest.raises(DataError, match=r"src: not a uint8 IDX file \(0 dimensions"):
        datasets.parse_idx(b"\x00\x00\x08\x00", "src")


def test_parse_idx_survives_a_forged_huge_header():
    raw = bytes([0, 0, 8, 3]) + (2**32 - 1).to_bytes(4, "big") * 3 + bytes(10)
    with pytest.raises(DataError, match=r"src: IDX file has 26 bytes.*truncated or corrupt"):
        datasets.parse_idx(raw, "src")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"train_images_idx3_ubyte": np.zeros((20, 784), np.uint8)},
            r"train-images-idx3-ubyte: expected \[N, H, W\] images",
        ),
        ({"t10k_images_idx3_ubyte": images(10, 32)}, "t10k-images-idx3-ubyte: expected 28x28"),
        (
            {"train_labels_idx1_ubyte": np.zeros((20, 1), np.uint8)},
            r"train-labels-idx1-ubyte: expected \[N\] labels",
        ),
        (
            {"train_labels_idx1_ubyte": labels(17)},
            "train-labels-idx1-ubyte: 17 labels, but train-images-idx3-ubyte holds 20 images",
        ),
        (
            {"t10k_images_idx3_ubyte": images(0), "t10k_labels_idx1_ubyte": labels(0)},
            "t10k-images-idx3-ubyte: holds no images",
        ),
        (
            {"train_labels_idx1_ubyte": labels(20, 10)},
            "train-labels-idx1-ubyte: label 10 is out of range for the 10 classes",
        ),
        ({"t10k_labels_idx1_ubyte": labels(10, 255)}, "t10k-labels-idx1-ubyte: label 255"),
    ],
)
def test_wrong_arrays_name_their_file(tmp_path, arrays, message):
    raw_dataset(tmp_path, **arrays)
    with pytest.raises(DataError, match=message):
        datasets.load_dataset("mnist", str(tmp_path))


def test_a_directory_in_place_of_a_file_is_named(tmp_path):
    folder = raw_dataset(tmp_path)
    (folder / "train-labels-idx1-ubyte").unlink()
    (folder / "train-labels-idx1-ubyte").mkdir()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: not a regular file"):
        datasets.load_dataset("mnist", str(tmp_path))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"garbage\n", "SHA256SUMS: line 1 is not"),
        (b"\xff\xfe\x00", r"SHA256SUMS: cannot read"),
    ],
)
def test_a_malformed_checksum_file_is_named(tmp_path, content, message):
    folder = write_idx_dataset(tmp_path / "mnist", 20, 10)
    (folder / "SHA256SUMS").write_bytes(content)
    with pytest.raises(DataError, match=message):
        datasets.load_dataset("mnist", str(tmp_path))


def test_a_data_dir_that_is_a_file_is_named(tmp_path):
    (tmp_path / "data").write_text("x")
    with pytest.raises(DataError, match=f"data folder {tmp_path / 'data'} is not a directory"):
        datasets.load_dataset("mnist", str(tmp_path / "data"))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads anything")
def test_an_unreadable_file_is_named(tmp_path):
    folder = raw_dataset(tmp_path)
    (folder / "train-images-idx3-ubyte").chmod(0)
    with pytest.raises(DataError, match="train-images-idx3-ubyte: cannot read"):
        datasets.load_dataset("mnist", str(tmp_path))


# --------------------------------------------------------------------------- the CLI fuzz


@pytest.mark.slow
def test_a_bad_flag_of_the_fuzz_script_is_one_line_and_exit_2():
    result = run_script("tests/drills/bad_input.py", "--quick=often")
    assert (result.returncode, result.stderr) == (
        2,
        "error: --quick: expected true or false, got 'often'\n",
    )
