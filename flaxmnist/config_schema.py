"""The config schema: every field a run reads, declared once in :data:`FIELDS`.

A :class:`Field` holds a field's default, the rule its values must follow, a one-line doc and
whether a resumed run may change it. Everything else reads it: ``configs/default.py`` builds the
default config from it, :mod:`flaxmnist.config_validation` checks a config against it,
``storage/run_directory.py`` takes from it what a resume may change, the models, layers, early
stopping and multi-host code take their fixed vocabularies from it, and ``python -m
flaxmnist.configs`` writes the field table of docs/configuration.md from it.

Names that a registry owns (``model``, ``loss``, ``optimizer``, ``schedule``: plugins may add
entries) and the dataset are only checked here to be non-empty strings; their registries resolve
them later, once ``import_modules`` has run, and list the valid ones when they cannot.

This module imports nothing heavy: ``python -m flaxmnist.train`` checks a config before JAX is
imported.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Protocol

from flaxmnist.errors import ConfigError

# A batch larger than this cannot fit anywhere sensible (and a padded eval batch of 10**9 images
# would allocate ~800 GB before failing): refuse it up front.
MAX_BATCH_SIZE = 2**20
MAX_SEED = 2**32 - 1


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


class Rule(Protocol):
    """What a field's values must be: :meth:`check` enforces it, :meth:`describe` says it."""

    def check(self, field: str, value: Any) -> None:
        """Raises a one-line ConfigError naming ``field`` unless ``value`` follows the rule."""
        ...

    def describe(self) -> str:
        """The accepted values in a few words, for the documentation."""
        ...


@dataclasses.dataclass(frozen=True)
class Integer:
    """An int (not a bool) inside ``interval``; above ``limit`` it is refused as too large."""

    interval: Interval
    limit: int | None = None

    def check(self, field: str, value: Any) -> None:
        """Raises ConfigError unless ``value`` is an int inside the interval and the limit."""
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{field} must be an integer, got {value!r}")
        _check_interval(field, value, self.interval)
        if self.limit is not None and value > self.limit:
            raise ConfigError(f"{field} {value} is too large (at most {self.limit:,})")

    def describe(self) -> str:
        """``positive integer``, ``integer in [0, 4]``, ...; with the limit when there is one."""
        text = _numeric_description("integer", self.interval)
        return f"{text}, at most {self.limit:,}" if self.limit is not None else text


@dataclasses.dataclass(frozen=True)
class Number:
    """A finite int or float (not a bool) inside ``interval``."""

    interval: Interval

    def check(self, field: str, value: Any) -> None:
        """Raises ConfigError unless ``value`` is a finite number inside the interval."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{field} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{field} must be a finite number, got {value}")
        _check_interval(field, value, self.interval)

    def describe(self) -> str:
        """``positive number``, ``number in [0, 1)``, ..."""
        return _numeric_description("number", self.interval)


@dataclasses.dataclass(frozen=True)
class Boolean:
    """``True`` or ``False``."""

    def check(self, field: str, value: Any) -> None:
        """Raises ConfigError unless ``value`` is a bool."""
        if not isinstance(value, bool):
            raise ConfigError(f"{field} must be true or false, got {value!r}")

    def describe(self) -> str:
        """``True`` / ``False``."""
        return "`True` / `False`"


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of a fixed vocabulary of strings, listed in the order error messages give them."""

    values: tuple[str, ...]

    def check(self, field: str, value: Any) -> None:
        """Raises ConfigError unless ``value`` is one of the values."""
        if _string(field, value) not in self.values:
            raise ConfigError(f"unknown {field} {value!r}; valid: {', '.join(self.values)}")

    def describe(self) -> str:
        """The values, comma-separated."""
        return ", ".join(f"`{value}`" for value in self.values)


@dataclasses.dataclass(frozen=True)
class Name:
    """A non-empty string that ``resolver`` resolves later (a registry plugins may extend)."""

    resolver: str

    def check(self, field: str, value: Any) -> None:
        """Raises ConfigError unless ``value`` is a non-empty string."""
        if not _string(field, value).strip():
            raise ConfigError(f"{field} must not be empty")

    def describe(self) -> str:
        """Who resolves the name."""
        return f"a name {self.resolver} resolves"


@dataclasses.dataclass(frozen=True)
class Text:
    """Any string."""

    def check(self, field: str, value: Any) -> None:
        """Raises ConfigError unless ``value`` is a string."""
        _string(field, value)

    def describe(self) -> str:
        """``text``."""
        return "text"


@dataclasses.dataclass(frozen=True)
class Options:
    """Keyword options as text: ``name=value`` items separated by commas (:func:`option_items`)."""

    def check(self, field: str, value: Any) -> None:
        """Raises ConfigError unless ``value`` is a string of ``name=value`` items."""
        option_items(field, _string(field, value))

    def describe(self) -> str:
        """``name=value,...``."""
        return "`name=value,...`"


def option_items(field: str, text: str) -> list[tuple[str, str]]:
    """The ``(name, value)`` pairs of ``"name=value, name=value"``; empty items are skipped.

    Raises:
      ConfigError: for an item without ``=`` or whose name is not an identifier.
    """
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise ConfigError(f"{field}: expected name=value, got {item!r}")
        pairs.append((name.strip(), value.strip()))
    return pairs


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field: dotted ``name``, ``default``, ``rule``, ``doc``, ``resumable``.

    ``resumable`` fields may differ when a run resumes: they do not change what its steps
    compute (``num_epochs`` only where the schedule does not span it; flaxmnist.training.loop
    checks that).
    """

    name: str
    default: Any
    rule: Rule
    doc: str
    resumable: bool = False


FIELDS: tuple[Field, ...] = (
    # Data.
    Field(
        "dataset",
        "mnist",
        Name("`flaxmnist.data.datasets`"),
        "`mnist`, `fashion_mnist` (IDX files) or any tensorflow-datasets name",
    ),
    Field(
        "data_dir",
        "",
        Text(),
        'folder of IDX files or tfds data dir; `""`: `$FLAXMNIST_DATA_DIR`, then `data/` (tfds '
        "names: tfds's own default)",
        resumable=True,
    ),
    Field(
        "normalization",
        "unit",
        Choice(("unit", "standardize")),
        "`unit`: pixels / 255; `standardize`: also subtract the train mean, divide by the std",
    ),
    Field(
        "validation_fraction",
        0.1,
        Number(FRACTION),
        "share of the training split held out (seeded); 0 disables validation",
    ),
    Field(
        "input_pipeline",
        "device",
        Choice(("device", "tfds", "grain")),
        "`device`: resident data + `lax.scan`; `tfds`: tf.data streaming; `grain`: no TensorFlow",
    ),
    Field(
        "chunks_per_epoch",
        20,
        Integer(POSITIVE),
        "about this many host syncs (progress bar, Ctrl-C checks) per epoch, chunks of one length",
        resumable=True,
    ),
    # On-device augmentation (the Keras ImageDataGenerator set); all zero = off.
    Field("augment.rotation", 0.0, Number(Interval(0, 180)), "maximum rotation, degrees"),
    Field("augment.translate", 0.0, Number(PROBABILITY), "maximum shift, fraction of the image"),
    Field("augment.zoom", 0.0, Number(FRACTION), "scale drawn from [1 - zoom, 1 + zoom]"),
    Field("augment.shear", 0.0, Number(Interval(0, 90, high_open=True)), "maximum shear, degrees"),
    Field("augment.flip", False, Boolean(), "random horizontal flips (wrong for digits)"),
    Field("augment.cutout", 0, Integer(NON_NEGATIVE), "side of a random erased square, pixels"),
    Field("augment.cutout_prob", 0.5, Number(PROBABILITY), "chance that an image is erased"),
    # Model.
    Field("model", "convnet", Name("`flaxmnist.models.MODELS`"), "see [models](models.md)"),
    Field(
        "activation",
        "relu",
        Choice(("elu", "gelu", "leaky_relu", "relu", "selu", "sigmoid", "swish", "tanh")),
        "hidden-layer activation (the `flax.linen` function of that name)",
    ),
    Field(
        "dtype",
        "float32",
        Choice(("float32", "bfloat16")),
        "compute dtype; `bfloat16` keeps float32 params and optimizer state",
    ),
    Field(
        "conv_impl",
        "auto",
        Choice(("auto", "xla", "im2col")),
        "convolutions; `auto`: im2col on CPU, XLA's elsewhere ([speed](results.md#speed-on-cpu))",
    ),
    Field(
        "pool_impl",
        "auto",
        Choice(("auto", "xla", "fast", "fused")),
        "max-pooling; `auto`: fused into the convolution on a CPU with AVX-512, `fast` on other "
        "CPUs, XLA's elsewhere ([kernels](results.md#kernels-by-cpu))",
    ),
    # Loss and optimisation.
    Field(
        "loss",
        "cross_entropy",
        Name("`flaxmnist.losses.LOSSES`"),
        "see [losses](#losses-including-your-own)",
    ),
    Field("loss_options", "", Options(), "the loss's keyword options, e.g. `smoothing=0.1`"),
    Field(
        "optimizer",
        "adam",
        Name("`flaxmnist.optimizers.OPTIMIZERS`"),
        "e.g. `adam`, `adamw`, `sgd`, `rmsprop`; the fields below say which reads them",
    ),
    Field("learning_rate", 1e-3, Number(POSITIVE), "peak learning rate"),
    Field("momentum", 0.0, Number(FRACTION), "`sgd`, `rmsprop`: momentum (0: none)"),
    Field("adam_b1", 0.9, Number(FRACTION), "`adam`, `adamw`: decay of the gradient average"),
    Field(
        "adam_b2", 0.999, Number(FRACTION), "`adam`, `adamw`: decay of the squared-gradient average"
    ),
    Field("nesterov", False, Boolean(), "`sgd`: Nesterov momentum"),
    Field("weight_decay", 1e-4, Number(NON_NEGATIVE), "`adamw`: decoupled weight decay"),
    Field(
        "schedule",
        "constant",
        Name("`flaxmnist.optimizers.SCHEDULES`"),
        "learning-rate schedule: `constant`, `cosine`, `warmup_cosine`, `exponential`, `step`",
    ),
    Field("warmup_epochs", 0.0, Number(NON_NEGATIVE), "`warmup_cosine`: epochs of linear warm-up"),
    Field(
        "lr_decay_rate",
        0.5,
        Number(POSITIVE),
        "`exponential`, `step`: the rate is multiplied by this every `lr_decay_epochs`",
    ),
    Field("lr_decay_epochs", 1.0, Number(POSITIVE), "`exponential`, `step`: epochs per decay"),
    Field(
        "tta_shift",
        0,
        Integer(Interval(0, 4)),
        "> 0: every evaluation (validation, test, `load_run(...).predict`, `flaxmnist.evaluate`) "
        "averages the softmax of the image and its 4 copies shifted this many pixels up, down, "
        "left, right",
        resumable=True,
    ),
    Field(
        "ema_decay",
        0.0,
        Number(FRACTION),
        "> 0 (e.g. 0.999): keep an exponential moving average of the weights and evaluate (and "
        "reload checkpoints) with it",
    ),
    Field("batch_size", 128, Integer(POSITIVE, limit=MAX_BATCH_SIZE), "training batch size"),
    Field(
        "eval_batch_size",
        1000,
        Integer(POSITIVE, limit=MAX_BATCH_SIZE),
        "evaluation batch size; the last batch is padded and masked: every test image counts",
    ),
    Field(
        "num_epochs",
        15,
        Integer(NON_NEGATIVE),
        "0 = evaluate only; a resumed run may change it unless its schedule spans the run",
        resumable=True,
    ),
    Field(
        "seed",
        0,
        Integer(Interval(0, MAX_SEED)),
        "the one seed: init, dropout, validation split, data order",
    ),
    # Run management: checkpoints, resume, early stopping, faults.
    Field(
        "resume",
        True,
        Boolean(),
        "rerunning with the same `--workdir` continues from its latest checkpoint",
        resumable=True,
    ),
    Field(
        "checkpoint_every_epochs",
        1,
        Integer(NON_NEGATIVE),
        "checkpoint cadence (0 = none); also saved whenever the monitored value improves",
    ),
    Field("keep_checkpoints", 2, Integer(Interval(1)), "latest checkpoints kept, plus the best"),
    Field(
        "nan_policy",
        "stop",
        Choice(("stop", "skip_step")),
        "`stop`: end the run at a non-finite loss; `skip_step`: skip such updates",
    ),
    Field(
        "early_stopping.monitor",
        "val_loss",
        Choice(("val_loss", "val_accuracy", "train_loss", "train_accuracy")),
        "the value early stopping and the best checkpoint follow (`val_*` reads `train_*` "
        "when `validation_fraction=0`)",
        resumable=True,
    ),
    Field(
        "early_stopping.patience",
        0,
        Integer(NON_NEGATIVE),
        "epochs without improvement before stopping; 0 = never stop",
        resumable=True,
    ),
    Field(
        "early_stopping.min_delta",
        0.0,
        Number(NON_NEGATIVE),
        "smaller changes of the monitored value do not count as improvement",
        resumable=True,
    ),
    Field(
        "early_stopping.restore_best",
        False,
        Boolean(),
        "test (and save) the best epoch's weights instead of the last",
        resumable=True,
    ),
    Field(
        "log_every_steps",
        50,
        Integer(NON_NEGATIVE),
        "TensorBoard `step/loss` interval; 0 disables step scalars",
    ),
    Field(
        "init_from",
        "",
        Text(),
        "a run directory (checked) to warm-start from, for fine-tuning (a new head when the "
        'classes differ); `""`: from scratch',
    ),
    # Devices.
    Field(
        "num_devices",
        0,
        Integer(NON_NEGATIVE),
        "data parallelism over this many local devices; 0 = all",
        resumable=True,
    ),
    # Multi-process (multi-host) runs through jax.distributed.
    Field(
        "multihost.enabled",
        "auto",
        Choice(("auto", "on", "off")),
        "join a multi-process run (`jax.distributed`); `auto`: when fields or environment "
        "name a cluster",
        resumable=True,
    ),
    Field(
        "multihost.coordinator_address",
        "",
        Text(),
        '`host:port` of process 0 (`""`: `$JAX_COORDINATOR_ADDRESS` or JAX\'s detection)',
        resumable=True,
    ),
    Field(
        "multihost.num_processes",
        0,
        Integer(NON_NEGATIVE),
        "process count (0: `$JAX_NUM_PROCESSES` or JAX's detection)",
        resumable=True,
    ),
    Field(
        "multihost.process_id",
        -1,
        Integer(Interval(-1)),
        "this process's index (-1: `$JAX_PROCESS_ID` or JAX's detection)",
        resumable=True,
    ),
    Field(
        "multihost.timeout_s",
        300,
        Number(POSITIVE),
        "seconds a process waits for the coordinator (process 0) and the others to join",
        resumable=True,
    ),
    # Extensions and runtime.
    Field(
        "import_modules",
        "",
        Text(),
        "comma-separated modules or `.py` files imported before names resolve",
        resumable=True,
    ),
    Field(
        "compilation_cache_dir",
        "~/.cache/flaxmnist/jax",
        Text(),
        "JAX's persistent compilation cache, every entry checked before it runs "
        '([reliability](reliability.md)); `""` disables it',
        resumable=True,
    ),
)
FIELDS_BY_NAME: dict[str, Field] = {field.name: field for field in FIELDS}
# The fields a resumed run may change (dotted names).
RESUMABLE_FIELDS = frozenset(field.name for field in FIELDS if field.resumable)


def check(name: str, value: Any) -> None:
    """Raises the one-line ConfigError of field ``name``'s rule unless ``value`` follows it."""
    FIELDS_BY_NAME[name].rule.check(name, value)


def choices(name: str) -> tuple[str, ...]:
    """The fixed vocabulary of field ``name`` (a :class:`Choice` field)."""
    rule = FIELDS_BY_NAME[name].rule
    if not isinstance(rule, Choice):
        raise TypeError(f"config field {name} is not a choice of fixed values")
    return rule.values


def defaults() -> dict[str, Any]:
    """Every field's default as nested dicts (``{"augment": {"rotation": 0.0, ...}, ...}``)."""
    tree: dict[str, Any] = {}
    for field in FIELDS:
        *groups, leaf = field.name.split(".")
        node = tree
        for group in groups:
            node = node.setdefault(group, {})
        node[leaf] = field.default
    return tree


def markdown_table() -> str:
    """The fields as a Markdown table: name, default, accepted values, resumable, doc."""
    rows = [
        "| field | default | accepts | a resume may change it | meaning |",
        "|---|---|---|---|---|",
    ]
    for field in FIELDS:
        resumable = "yes" if field.resumable else ""
        rows.append(
            f"| `{field.name}` | {_markdown_value(field.default)} | {field.rule.describe()} "
            f"| {resumable} | {field.doc} |"
        )
    return "\n".join(rows)


def _markdown_value(value: Any) -> str:
    """A default as the docs show it: ``mnist``, ``""``, ``0.001``, ``True``."""
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{value!r}`"


def _check_interval(field: str, value: float, interval: Interval) -> None:
    if not interval.contains(value):
        raise ConfigError(f"{field} must be {interval.describe()}, got {value}")


def _numeric_description(kind: str, interval: Interval) -> str:
    """``positive integer``, ``number >= 0``, ``integer in [0, 4]``."""
    rule = interval.describe()
    return f"{rule} {kind}" if rule == "positive" else f"{kind} {rule}"


def _string(field: str, value: Any) -> str:
    """Returns ``value`` if it is a string; raises ConfigError otherwise."""
    if not isinstance(value, str):
        raise ConfigError(f"{field} must be a string, got {value!r}")
    return value


def _number(value: float | None) -> str:
    """``0`` rather than ``0.0`` in messages."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict keyed by dotted names: ``{"augment.zoom": 0.0, ...}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
