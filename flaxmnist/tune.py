"""Command line: ``python -m flaxmnist.tune --workdir=DIR [--config=PRESET|PATH] [--trials=N]``.

Tunes a config with Optuna (TPE sampling, median pruning on per-epoch validation accuracy); every
trial is a normal run in ``DIR/trials/NNNN``. ``--space=FILE`` names a Python file with
``suggest(trial, config)`` (default: learning rate and batch size); ``--storage`` an SQLAlchemy
URL (default: ``sqlite:///DIR/study.db``). Start the same command in several terminals, or on
several machines sharing a ``--storage``, and they work on one study. Writes
``DIR/results.{csv,md}`` and ``DIR/best_config.py``. See :mod:`flaxmnist.tuning`; needs the
``tune`` extra (``pip install -e '.[tune]'``).
"""

from __future__ import annotations

from pathlib import Path

from absl import flags, logging

from flaxmnist import cli, console, errors

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Folder of the study: trials, results, SQLite storage.")
flags.DEFINE_string("config", "fast", "Preset name or config file the trials start from.")
flags.DEFINE_string("space", "", "Python file with suggest(trial, config) (default: lr, batch).")
flags.DEFINE_integer("trials", 20, "Finished trials the study should hold.", lower_bound=1)
flags.DEFINE_string("storage", "", "SQLAlchemy URL of the study (default: DIR/study.db).")
flags.DEFINE_string("study_name", "flaxmnist", "The study's name in the storage.")
flags.DEFINE_integer("seed", None, "TPE sampler seed (give each worker its own).")
flags.DEFINE_integer("heartbeat_s", 10, "Seconds between a trial's heartbeats.", lower_bound=1)
flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    """Works on the study the flags describe, then prints its results table."""
    del argv  # cli.parse_flags refuses positional arguments
    logging.set_verbosity(logging.WARNING)
    workdir = Path(FLAGS.workdir)
    with errors.reported(workdir):
        try:
            from flaxmnist import tuning  # JAX and Optuna after the flags: a bad flag fails at once
        except ModuleNotFoundError as e:
            if e.name != "optuna":
                raise
            raise errors.FlaxmnistError(
                "python -m flaxmnist.tune needs Optuna: pip install -e '.[tune]'"
            ) from None
        spec = tuning.StudySpec(
            config=FLAGS.config,
            workdir=workdir,
            space=FLAGS.space,
            storage=FLAGS.storage,
            study_name=FLAGS.study_name,
            seed=FLAGS.seed,
            heartbeat_s=FLAGS.heartbeat_s,
        )
        tuning.tune(spec, FLAGS.trials)
    console.say((workdir / tuning.RESULTS_MD).read_text().rstrip("\n"))
    if (workdir / tuning.BEST_CONFIG).exists():
        console.say(
            f"train the best: python -m flaxmnist.train --config={workdir / tuning.BEST_CONFIG}"
        )


if __name__ == "__main__":
    errors.exit_on_signals()
    cli.run(main)
