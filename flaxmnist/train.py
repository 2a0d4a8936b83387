"""Command line: ``python -m flaxmnist.train [--config=PRESET|PATH] [--config.F=V] [--workdir=D]``.

``--config`` takes a preset name (a module in ``flaxmnist/configs/``: ``default``, ``dense``,
``convnet``, ...) or a path to a Python file with ``get_config()``. Every field can be overridden
with ``--config.FIELD=VALUE``. User errors end with one line on stderr and exit status 2.
"""

from __future__ import annotations

from flaxmnist import errors

if __name__ == "__main__":
    # Before the imports below (about 0.5 s): a signal at any moment ends in one line.
    errors.exit_on_signals()

import importlib.util
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from flaxmnist import configs
from flaxmnist.config_validation import validate_config, validate_workdir
from flaxmnist.data import datasets
from flaxmnist.errors import ConfigError, exit_with_error

DEFAULT_CONFIG_FILE = configs.PRESET_DIR / "default.py"
CONFIG_ARGUMENT = re.compile(r"^-{1,2}config(=|$)")
OVERRIDE_ARGUMENT = re.compile(r"^-{1,2}(?:no)?config\.([^=]+)")
FLAG_VALUE_ERROR = re.compile(r"^flag --(?P<name>[^=\s]+)=")
EXPECTED_VALUES = (
    (flags.IntegerParser, "an integer"),
    (flags.FloatParser, "a number"),
    (flags.BooleanParser, "true or false"),
)


def define_flags(argv: Sequence[str] | None = None) -> None:
    """Defines --config and --workdir.

    Call it after ``sys.argv`` holds the final arguments: ml_collections reads the
    ``--config.FIELD`` overrides from it at definition time. The config file is loaded and every
    override's field looked up first, so that a broken file or an unknown field is a one-line
    ConfigError rather than a traceback from inside ml_collections.
    """
    argv = sys.argv if argv is None else argv
    config = load_config_file(config_argument(argv))
    check_override_fields(config, argv)
    try:
        config_flags.DEFINE_config_file(
            "config",
            str(DEFAULT_CONFIG_FILE),
            "Preset name or path to a config file with get_config().",
            lock_config=True,
        )
    except flags.Error as e:  # e.g. --config=FILE given after a --config.FIELD override
        raise ConfigError(one_line(e)) from None
    except (KeyError, AttributeError, TypeError) as e:  # ml_collections on an unknown field
        field = str(e).strip("\"'")
        raise ConfigError(f"unknown config field in --config overrides: {field}") from None
    flags.DEFINE_string("workdir", None, "Run directory (default: runs/<model>-<dataset>-<time>).")


def config_argument(argv: Sequence[str]) -> str:
    """The value of ``argv``'s first ``--config`` (the one ml_collections reads), or the default."""
    for i, arg in enumerate(argv):
        if CONFIG_ARGUMENT.match(arg):
            if "=" in arg:
                return arg.split("=", 1)[1]
            if i + 1 < len(argv):
                return argv[i + 1]
    return str(DEFAULT_CONFIG_FILE)


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Runs ``get_config()`` of config file ``spec`` (``PATH[:ARG]``); failures are ConfigErrors."""
    path, sep, arg = spec.partition(":")
    if not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        module_spec = importlib.util.spec_from_file_location("flaxmnist_config_check", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except Exception as e:  # the user's file: a syntax error or a failing import is bad input
        raise ConfigError(
            f"config file {path} cannot be loaded ({type(e).__name__}: {one_line(e)})"
        ) from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"config file {path} defines no get_config() function")
    try:
        config = get_config(arg) if sep else get_config()
    except Exception as e:
        call = f"get_config({arg!r})" if sep else "get_config()"
        raise ConfigError(
            f"config file {path}: {call} failed ({type(e).__name__}: {one_line(e)})"
        ) from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"config file {path}: get_config() returned {type(config).__name__}, not a ConfigDict"
        )
    return config


def check_override_fields(config: ml_collections.ConfigDict, argv: Sequence[str]) -> None:
    """Every ``--config.FIELD`` in ``argv`` must name an existing field of ``config``."""
    for arg in argv:
        match = OVERRIDE_ARGUMENT.match(arg)
        if not match:
            continue
        node = config
        for part in match.group(1).split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise ConfigError(f"unknown config field in --config overrides: {match.group(1)}")
            node = node[part]


def parse_flags(argv: list[str]) -> list[str]:
    """Parses the flags as absl does; errors are one line naming the flag (exit 2)."""
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as e:
        exit_with_error(describe_flag_error(e, argv))
    if len(remaining) > 1:
        exit_with_error(
            f"unexpected arguments: {' '.join(remaining[1:])} "
            "(fields are set with --config.FIELD=VALUE)"
        )
    return remaining


def describe_flag_error(error: Exception, argv: Sequence[str]) -> str:
    """``--config.batch_size: expected an integer, got 'abc'`` for absl's parsing ``error``."""
    message = str(error)
    match = FLAG_VALUE_ERROR.match(message)
    if not match:
        return one_line(error)
    name = match.group("name")
    given = [arg.split("=", 1)[1] for arg in argv if arg.startswith(f"--{name}=")]
    value = given[-1] if given else message[match.end() :].split(": ", 1)[0]
    parser = flags.FLAGS[name].parser if name in flags.FLAGS else None
    for parser_type, expected in EXPECTED_VALUES:
        if isinstance(parser, parser_type):
            return f"--{name}: expected {expected}, got {value!r}"
    reason = message[match.end() + len(value) :].removeprefix(": ")
    return f"--{name}: {one_line(reason) if reason else 'invalid value ' + repr(value)}"


def one_line(error: BaseException | str) -> str:
    """``error``'s message with its lines joined, for a one-line error."""
    return " ".join(str(error).split()) or type(error).__name__


def resolve_config_argument(value: str) -> str:
    """Maps a preset name to its file; leaves paths alone; rejects names that are neither."""
    path_part, sep, arg = value.partition(":")
    if path_part in configs.preset_names():
        return str(configs.PRESET_DIR / f"{path_part}.py") + sep + arg
    if path_part.endswith(".py") and Path(path_part).is_file():
        return value
    raise ConfigError(
        f"unknown config {value!r}: not a file and not a preset "
        f"({', '.join(configs.preset_names())})"
    )


def rewrite_config_flag(argv: Sequence[str]) -> list[str]:
    """Rewrites ``--config=NAME`` / ``--config NAME`` in ``argv`` to the preset's file path."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + resolve_config_argument(arg.split("=", 1)[1])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config_argument(out[i + 1])
    return out


def default_workdir(config) -> Path:
    """``runs/<model>-<dataset>-<YYYYmmdd-HHMMSS>`` under the current directory."""
    return Path("runs") / f"{config.model}-{config.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def format_summary(metrics: dict, workdir: Path) -> str:
    """The closing summary table printed on the terminal."""
    rows = [
        ("model", f"{metrics['model']} ({metrics['num_params']:,} params)"),
        ("dataset", metrics["dataset"]),
        ("epochs", str(metrics["epochs"])),
        ("final train accuracy", _percent(metrics.get("final_train_accuracy"))),
        ("final val accuracy", _percent(metrics.get("final_val_accuracy"))),
        (
            "test accuracy",
            f"{_percent(metrics['test_accuracy'])} on {metrics['num_test_examples']:,} images",
        ),
        ("test loss", f"{metrics['test_loss']:.4f}"),
        ("train time", f"{metrics['train_time_s']:.1f} s"),
        ("run directory", str(workdir)),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def main(argv: Sequence[str]) -> None:
    """Trains and evaluates one run from the parsed flags."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = flags.FLAGS.config
    workdir = Path(flags.FLAGS.workdir) if flags.FLAGS.workdir else default_workdir(config)
    with errors.reported(workdir):
        validate_config(config)  # before the heavy imports: a bad value fails at once
        validate_workdir(workdir)
        metrics = train(config, workdir)
    from flaxmnist.training import parallel

    if parallel.is_primary():
        print(format_summary(metrics, workdir))


def train(config, workdir: Path) -> dict:
    """Sets up logging, the compilation cache and the cluster, then trains; returns the metrics."""
    # The IDX files are read while JAX is imported below (0.3 s less start-up).
    load_dataset = datasets.load_dataset_in_background(config.dataset, config.data_dir or None)
    # Heavy imports after flag parsing: a quick --help.
    from flaxmnist.storage import compilation_cache
    from flaxmnist.training import loop, parallel

    logging.set_verbosity(logging.WARNING)
    compilation_cache.enable(config.compilation_cache_dir)
    parallel.initialize_multihost(config.multihost)
    return loop.train_and_evaluate(config, workdir, load_dataset)


def run() -> None:
    """Entry point: resolves preset names, checks the config and flags, then hands over to absl."""
    try:
        sys.argv = rewrite_config_flag(sys.argv)
        define_flags()
    except ConfigError as e:
        exit_with_error(str(e))
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
