"""Command line: ``python -m flaxmnist.evaluate --workdir=RUN [--checkpoint=...] [--dataset=...]``.

Evaluates a trained run on its whole test split and writes ``RUN/eval/``: metrics, tables,
figures and ``report.html`` (see :mod:`flaxmnist.evaluation.evaluator`).
"""

from __future__ import annotations

from pathlib import Path

from absl import flags, logging

from flaxmnist import cli, errors

FLAGS = flags.FLAGS
cli.define_run_flags("Run directory to evaluate.")
flags.DEFINE_string("dataset", None, "Evaluate on another dataset (default: the run's).")
flags.DEFINE_string("data_dir", None, "IDX / tfds data folder (default: the run's).")
flags.DEFINE_integer("image_index", 0, "Test image whose feature maps are drawn.")


def main(argv: list[str]) -> None:
    """Evaluates the run named by the flags."""
    del argv  # cli.parse_flags refuses positional arguments
    logging.set_verbosity(logging.WARNING)
    with errors.reported(Path(FLAGS.workdir) / "eval"):
        from flaxmnist.evaluation import evaluator  # JAX after the flags: a bad flag fails at once

        evaluator.evaluate_run(
            FLAGS.workdir,
            checkpoint=cli.checkpoint_flag(),
            dataset=FLAGS.dataset,
            data_dir=FLAGS.data_dir,
            image_index=FLAGS.image_index,
            allow_plugins=FLAGS.allow_plugins,
        )


if __name__ == "__main__":
    errors.exit_on_signals()
    cli.run(main)
