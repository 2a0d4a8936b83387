"""Command line: ``python -m flaxmnist.train [--config=PRESET|PATH] [--config.F=V] [--workdir=D]``.

``--config`` takes a preset name (a module in ``flaxmnist/configs/``: ``default``, ``dense``,
``convnet``, ...) or a path to a Python file with ``get_config()``. Every field can be overridden
with ``--config.FIELD=VALUE``. User errors end with one line on stderr and exit status 2.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from flaxmnist import configs, datasets
from flaxmnist.errors import ConfigError, FlaxmnistError, raise_signal_received

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


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
    try:
        metrics = train(config, workdir)
    except FlaxmnistError as e:
        exit_with_error(str(e), getattr(e, "exit_code", EXIT_USER_ERROR))
    except OSError as e:  # disk full, read-only or vanished workdir while training
        exit_with_error(f"cannot write {e.filename or workdir}: {e.strerror or e}")
    except KeyboardInterrupt as e:
        exit_on_signal(getattr(e, "signum", signal.SIGINT))
    except Exception as e:  # a bug or a library failure: one line here, the traceback in a file
        log = write_traceback(workdir)
        exit_with_error(
            f"internal error ({type(e).__name__}: {first_line(e)}); full traceback in {log}",
            EXIT_INTERNAL_ERROR,
        )
    from flaxmnist import parallel

    if parallel.is_primary():
        print(format_summary(metrics, workdir))


def train(config, workdir: Path) -> dict:
    """Sets up logging, the compilation cache and the cluster, then trains; returns the metrics."""
    # The IDX files are read while JAX is imported below (0.3 s less start-up).
    load_dataset = datasets.load_dataset_in_background(config.dataset, config.data_dir or None)
    # Heavy imports after flag parsing: a quick --help.
    from flaxmnist import compilation_cache, parallel, trainer

    logging.set_verbosity(logging.WARNING)
    compilation_cache.enable(config.compilation_cache_dir)
    parallel.initialize_multihost(config.multihost)
    return trainer.train_and_evaluate(config, workdir, load_dataset)


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of ``error``'s message, cut to ``limit`` characters."""
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def write_traceback(workdir: Path) -> Path:
    """Appends the current exception's traceback to ``workdir/error.log`` (or a temp file)."""
    header = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()} ---\n"
    fallback = Path(tempfile.gettempdir()) / f"flaxmnist-error-{os.getpid()}.log"
    for path in (workdir / "error.log", fallback):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(header + traceback.format_exc())
            return path
        except OSError:
            continue
    traceback.print_exc()  # nowhere to write it: the terminal is the last resort
    return Path("<stderr above>")


def exit_on_signal(signum: int) -> None:
    """Ends a run that a signal stopped before it could save a checkpoint (exit 128 + signal)."""
    exit_with_error(
        f"stopped by {signal.Signals(signum).name}; rerun the same command to resume "
        "from the last checkpoint",
        128 + signum,
    )


def run() -> None:
    """Entry point: resolves preset names, then hands over to absl."""
    signal.signal(signal.SIGTERM, raise_signal_received)  # SIGTERM unwinds as Ctrl-C does
    try:
        sys.argv = rewrite_config_flag(sys.argv)
    except ConfigError as e:
        exit_with_error(str(e))
    try:
        define_flags()
    except (KeyError, AttributeError) as e:  # ml_collections' answer to an unknown field
        field = str(e).strip("\"'")
        exit_with_error(f"unknown config field in --config overrides: {field}")
    try:
        app.run(main)
    except KeyboardInterrupt as e:  # before main's own handling (flag parsing, imports)
        exit_on_signal(getattr(e, "signum", signal.SIGINT))


def exit_with_error(message: str, status: int = EXIT_USER_ERROR) -> None:
    """Prints ``error: message`` on stderr and exits with ``status`` (2 by default)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    run()
