"""Command line: ``python -m flaxmnist.train [--config=PRESET|PATH] [--config.F=V] [--workdir=D]``.

``--config`` takes a preset name (a module in ``flaxmnist/configs/``: ``default``, ``dense``,
``convnet``, ...) or a path to a Python file with ``get_config()``; without it the ``fast`` preset
runs (>= 99 % MNIST test accuracy in well under a minute on a CPU), and ``--config=default`` gives
the base config. Every field can be overridden with ``--config.FIELD=VALUE``. User errors end with
one line on stderr and exit status 2.
"""

from __future__ import annotations

from flaxmnist import errors

if __name__ == "__main__":
    # Before the imports below (about 0.5 s): a signal at any moment ends in one line.
    errors.exit_on_signals(errors.RESUME_HINT)

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from flaxmnist import cli, configs
from flaxmnist.config_validation import validate_config, validate_workdir
from flaxmnist.errors import ConfigError, exit_with_error

DEFAULT_CONFIG = "fast"  # a newcomer's first command finishes in seconds
OVERRIDE_PREFIXES = ("--config.", "-config.", "--noconfig.", "-noconfig.")


def define_flags(argv: Sequence[str]) -> list[str]:
    """Defines --config (the loaded config, its overrides as flags) and --workdir.

    The config file named by ``--config`` is run once, here, and every override's field looked
    up first, so that a broken file or an unknown field is a one-line ConfigError rather than a
    traceback from inside ml_collections.

    Args:
      argv: the command line, program name first.

    Returns:
      ``argv`` without its ``--config`` argument, for absl to parse (the overrides stay).
    """
    spec, rest = split_config_argument(argv)
    config = configs.load(spec)
    check_override_fields(config, rest)
    config_flags.DEFINE_config_dict("config", config, lock_config=True, sys_argv=rest)
    flags.DEFINE_string("workdir", None, "Run directory (default: runs/<model>-<dataset>-<time>).")
    return rest


def split_config_argument(argv: Sequence[str]) -> tuple[str, list[str]]:
    """(the value of ``--config``, or the default preset; ``argv`` without that argument)."""
    values, rest, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-config") and i + 1 < len(argv):
            values.append(argv[i + 1])
            i += 1
        elif arg.startswith(("--config=", "-config=")):
            values.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    if len(values) > 1:
        raise ConfigError(f"--config given {len(values)} times ({', '.join(values)}); give it once")
    return (values[0] if values else DEFAULT_CONFIG), rest


def check_override_fields(config: ml_collections.ConfigDict, argv: Sequence[str]) -> None:
    """Every ``--config.FIELD`` in ``argv`` must name an existing field of ``config``."""
    for arg in argv:
        if not arg.startswith(OVERRIDE_PREFIXES):
            continue
        field = arg.split("config.", 1)[1].split("=", 1)[0]
        node = config
        for part in field.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise ConfigError(f"unknown config field in --config overrides: {field}")
            node = node[part]


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
    del argv  # cli.parse_flags refuses positional arguments
    config = flags.FLAGS.config
    workdir = Path(flags.FLAGS.workdir) if flags.FLAGS.workdir else default_workdir(config)
    with errors.reported(workdir):
        validate_config(config)  # before the heavy imports: a bad value fails at once
        validate_workdir(workdir)
        metrics = train(config, workdir)
    from flaxmnist import console

    console.say(format_summary(metrics, workdir))


def train(config, workdir: Path) -> dict:
    """Sets up logging, the compilation cache and the cluster, then trains; returns the metrics."""
    # Heavy imports after flag parsing: a quick --help.
    from flaxmnist.storage import compilation_cache
    from flaxmnist.training import loop, parallel

    logging.set_verbosity(logging.WARNING)
    compilation_cache.enable(config.compilation_cache_dir)
    parallel.initialize_multihost(config.multihost)
    return loop.train_and_evaluate(config, workdir)


def run() -> None:
    """Entry point: loads the config named by --config, then parses the flags under absl."""
    try:
        sys.argv = define_flags(sys.argv)
    except ConfigError as e:
        exit_with_error(str(e))
    cli.run(main)


if __name__ == "__main__":
    run()
