"""Config checks that run before JAX is imported: types, ranges, finiteness and vocabularies.

:func:`validate_config` rejects any value no run can use with a one-line :class:`ConfigError`
naming the field. ``python -m flaxmnist.train`` calls it right after flag parsing (a bad flag
fails in a fraction of a second, before the heavy imports and before the run directory exists);
:func:`flaxmnist.training.experiment.build_experiment` calls it again for library users.

Names that plugins may register (``model``, ``loss``, ``optimizer``, ``schedule``) are resolved
later by their registries; here they only have to be non-empty strings. The fixed vocabularies
are defined here and imported by the modules that use them; this module imports nothing heavy
so that it can run first.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any

from flaxmnist.errors import ConfigError, FlaxmnistError

# A batch larger than this cannot fit anywhere sensible (and a padded eval batch of 10**9 images
# would allocate ~800 GB before failing): refuse it up front.
MAX_BATCH_SIZE = 2**20
MAX_SEED = 2**32 - 1

# The fixed vocabularies; the modules that use them import them from here. The activations and
# dtypes map to JAX objects in flaxmnist.models, so these two are mirrors (kept equal by a test).
INPUT_PIPELINES = ("device", "tfds", "grain")
NORMALIZATIONS = ("unit", "standardize")
NAN_POLICIES = ("stop", "skip_step")
ACTIVATIONS = ("elu", "gelu", "leaky_relu", "relu", "selu", "sigmoid", "swish", "tanh")
DTYPES = ("float32", "bfloat16")
CONV_IMPLS = ("auto", "xla", "im2col")
POOL_IMPLS = ("auto", "xla", "fast", "fused")
# Early stopping's monitored values and whether lower or higher is better.
MONITORS = {"val_loss": "min", "val_accuracy": "max", "train_loss": "min", "train_accuracy": "max"}
MULTIHOST_MODES = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class Interval:
    """The values a numeric field accepts: ``low``/``high`` bounds (None: unbounded)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the interval."""
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        """The rule in words: ``positive``, ``>= 0`` or ``in [0, 1)``."""
        if self.high is None:
            if self.low_open and self.low == 0:
                return "positive"
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"


POSITIVE = Interval(0, low_open=True)
NON_NEGATIVE = Interval(0)
FRACTION = Interval(0, 1, high_open=True)  # [0, 1)
PROBABILITY = Interval(0, 1)  # [0, 1]

INT_FIELDS: dict[str, Interval] = {
    "batch_size": POSITIVE,
    "eval_batch_size": POSITIVE,
    "num_epochs": NON_NEGATIVE,
    "chunks_per_epoch": POSITIVE,
    "tta_shift": Interval(0, 4),
    "seed": Interval(0, MAX_SEED),
    "checkpoint_every_epochs": NON_NEGATIVE,
    "keep_checkpoints": Interval(1),
    "log_every_steps": NON_NEGATIVE,
    "num_devices": NON_NEGATIVE,
    "augment.cutout": NON_NEGATIVE,
    "early_stopping.patience": NON_NEGATIVE,
    "multihost.num_processes": NON_NEGATIVE,
    "multihost.process_id": Interval(-1),
}
FLOAT_FIELDS: dict[str, Interval] = {
    "learning_rate": POSITIVE,
    "momentum": FRACTION,
    "adam_b1": FRACTION,
    "adam_b2": FRACTION,
    "weight_decay": NON_NEGATIVE,
    "warmup_epochs": NON_NEGATIVE,
    "lr_decay_rate": POSITIVE,
    "lr_decay_epochs": POSITIVE,
    "ema_decay": FRACTION,
    "validation_fraction": FRACTION,
    "augment.rotation": Interval(0, 180),
    "augment.translate": PROBABILITY,
    "augment.zoom": FRACTION,
    "augment.shear": Interval(0, 90, high_open=True),
    "augment.cutout_prob": PROBABILITY,
    "early_stopping.min_delta": NON_NEGATIVE,
    "multihost.timeout_s": POSITIVE,
}
BOOL_FIELDS = ("resume", "nesterov", "augment.flip", "early_stopping.restore_best")
VOCABULARIES: dict[str, tuple[str, ...]] = {
    "input_pipeline": INPUT_PIPELINES,
    "normalization": NORMALIZATIONS,
    "nan_policy": NAN_POLICIES,
    "activation": ACTIVATIONS,
    "dtype": DTYPES,
    "conv_impl": CONV_IMPLS,
    "pool_impl": POOL_IMPLS,
    "early_stopping.monitor": tuple(MONITORS),
    "multihost.enabled": MULTIHOST_MODES,
}
# Registry names (plugins may add entries) and the dataset: resolved later, never empty.
NAME_FIELDS = ("dataset", "model", "loss", "optimizer", "schedule")
STRING_FIELDS = (
    "data_dir",
    "loss_options",
    "init_from",
    "import_modules",
    "compilation_cache_dir",
    "multihost.coordinator_address",
)


def validate_config(config: Any) -> None:
    """Rejects values no run can use, with a one-line ConfigError naming the field.

    Args:
      config: an ``ml_collections.ConfigDict`` with every field of ``configs/default.py``.

    Raises:
      ConfigError: for a missing field, a value of the wrong type, a number out of range or not
        finite, an empty name, a name outside a fixed vocabulary, malformed ``loss_options``, or
        an ``init_from`` that is not a run directory.
    """
    for field, interval in INT_FIELDS.items():
        check_number(field, field_value(config, field), interval, integer=True)
    for field, interval in FLOAT_FIELDS.items():
        check_number(field, field_value(config, field), interval, integer=False)
    check_batch_sizes(config)
    for field in BOOL_FIELDS:
        value = field_value(config, field)
        if not isinstance(value, bool):
            raise ConfigError(f"{field} must be true or false, got {value!r}")
    for field, valid in VOCABULARIES.items():
        value = check_string(field, field_value(config, field))
        if value not in valid:
            raise ConfigError(f"unknown {field} {value!r}; valid: {', '.join(valid)}")
    for field in NAME_FIELDS:
        if not check_string(field, field_value(config, field)).strip():
            raise ConfigError(f"{field} must not be empty")
    for field in STRING_FIELDS:
        check_string(field, field_value(config, field))
    check_loss_options(config.loss_options)
    if config.early_stopping.restore_best and config.checkpoint_every_epochs == 0:
        raise ConfigError(
            "early_stopping.restore_best needs checkpoints (checkpoint_every_epochs > 0)"
        )
    if config.init_from:
        check_run_directory("init_from", Path(config.init_from).expanduser())


def field_value(config: Any, field: str) -> Any:
    """The value of dotted ``field`` in ``config``; a missing field raises ConfigError."""
    node = config
    for part in field.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError, TypeError):
            raise ConfigError(f"config has no field {field}") from None
    return node


def check_number(field: str, value: Any, interval: Interval, *, integer: bool) -> None:
    """Raises ConfigError unless ``value`` is a finite int (or float) inside ``interval``."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = "an integer" if integer else "a number"
        raise ConfigError(f"{field} must be {expected}, got {value!r}")
    if not integer and not math.isfinite(value):
        raise ConfigError(f"{field} must be a finite number, got {value}")
    if not interval.contains(value):
        raise ConfigError(f"{field} must be {interval.describe()}, got {value}")


def check_batch_sizes(config: Any) -> None:
    """Batch sizes beyond :data:`MAX_BATCH_SIZE` are refused before anything is allocated."""
    for field in ("batch_size", "eval_batch_size"):
        value = config[field]
        if value > MAX_BATCH_SIZE:
            raise ConfigError(f"{field} {value} is too large (at most {MAX_BATCH_SIZE:,})")


def check_string(field: str, value: Any) -> str:
    """Returns ``value`` if it is a string; raises ConfigError otherwise."""
    if not isinstance(value, str):
        raise ConfigError(f"{field} must be a string, got {value!r}")
    return value


def check_loss_options(text: str) -> None:
    """``loss_options`` must be ``name=value`` items separated by commas (as losses parses it)."""
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, _ = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ConfigError(f"loss_options: expected name=value, got {item!r}")


def check_run_directory(field: str, path: Path) -> None:
    """``path`` must be a run directory: a folder with a ``config.json`` and ``checkpoints/``."""
    if not _exists(path, field):
        raise ConfigError(f"{field} {path}: no such directory")
    if not path.is_dir():
        raise ConfigError(f"{field} {path}: not a directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{field} {path}: not a run directory (no config.json)")
    try:
        recorded = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{field} {path}: cannot read {config_file.name} ({e})") from None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("model"), str):
        raise ConfigError(f"{field} {path}: {config_file.name} is not a run's config")
    if not (path / "checkpoints").is_dir():
        raise ConfigError(f"{field} {path}: the run has no checkpoints/ folder")


def validate_workdir(path: Path) -> None:
    """Refuses a ``--workdir`` that cannot become a run directory, before anything is written.

    Raises:
      FlaxmnistError: when ``path`` is an existing non-directory, lies below one, or its nearest
        existing ancestor is not writable.
    """
    if _exists(path, "workdir") and not path.is_dir():
        raise FlaxmnistError(f"cannot write to workdir {path}: it exists and is not a directory")
    existing = path
    while not _exists(existing, "workdir") and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise FlaxmnistError(f"cannot write to workdir {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FlaxmnistError(f"cannot write to workdir {path}: {existing} is not writable")


def _exists(path: Path, field: str) -> bool:
    """``path.exists()``, with an unusable path (e.g. a name too long) as a ConfigError."""
    try:
        return path.exists()
    except (OSError, ValueError) as e:
        raise ConfigError(f"{field} {path}: unusable path ({e})") from None


def _number(value: float | None) -> str:
    """``0`` rather than ``0.0`` in messages."""
    return f"{value:g}" if isinstance(value, float) else str(value)
