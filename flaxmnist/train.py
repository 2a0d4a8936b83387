"""Command line: ``python -m flaxmnist.train [--config=PRESET|PATH] [--config.F=V] [--workdir=D]``.

``--config`` takes a preset name (a module in ``flaxmnist/configs/``: ``default``, ``dense``,
``convnet``, ...) or a path to a Python file with ``get_config()``. Every field can be overridden
with ``--config.FIELD=VALUE``. User errors end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from flaxmnist import configs, datasets
from flaxmnist.errors import ConfigError, FlaxmnistError

EXIT_USER_ERROR = 2


def define_flags() -> None:
    """Defines --config and --workdir.

    Call it after ``sys.argv`` holds the final arguments: ml_collections reads the
    ``--config.FIELD`` overrides from it at definition time.
    """
    config_flags.DEFINE_config_file(
        "config",
        str(configs.PRESET_DIR / "default.py"),
        "Preset name or path to a config file with get_config().",
        lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "Run directory (default: runs/<model>-<dataset>-<time>).")


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


def enable_compilation_cache(cache_dir: str) -> None:
    """Turns on JAX's persistent compilation cache so reruns skip compiling."""
    if not cache_dir:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache_dir))
    # Cache every program, even the small ones set-up runs: together they cost seconds.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


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
    # The IDX files are read while JAX is imported below (0.3 s less start-up).
    load_dataset = datasets.load_dataset_in_background(config.dataset, config.data_dir or None)
    from flaxmnist import parallel, trainer  # heavy imports after flag parsing: quick --help

    logging.set_verbosity(logging.WARNING)

    workdir = Path(flags.FLAGS.workdir) if flags.FLAGS.workdir else default_workdir(config)
    enable_compilation_cache(config.compilation_cache_dir)
    try:
        parallel.initialize_multihost(config.multihost)
        metrics = trainer.train_and_evaluate(config, workdir, load_dataset)
    except FlaxmnistError as e:
        exit_with_error(str(e), getattr(e, "exit_code", EXIT_USER_ERROR))
    except OSError as e:  # disk full, read-only or vanished workdir while training
        exit_with_error(f"cannot write {e.filename or workdir}: {e.strerror or e}")
    if parallel.is_primary():
        print(format_summary(metrics, workdir))


def run() -> None:
    """Entry point: resolves preset names, then hands over to absl."""
    try:
        sys.argv = rewrite_config_flag(sys.argv)
    except ConfigError as e:
        exit_with_error(str(e))
    try:
        define_flags()
    except (KeyError, AttributeError) as e:  # ml_collections' answer to an unknown field
        field = str(e).strip("\"'")
        exit_with_error(f"unknown config field in --config overrides: {field}")
    app.run(main)


def exit_with_error(message: str, status: int = EXIT_USER_ERROR) -> None:
    """Prints ``error: message`` on stderr and exits with ``status`` (2 by default)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    run()
