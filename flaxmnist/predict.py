"""Command line: ``python -m flaxmnist.predict --workdir=RUN IMAGE... [--top=3] [--json]``.

Classifies your own image files (PNG, JPEG, ... or ``.npy``) with a trained run: each is framed as
the MNIST files were made (grey, white on black, fitted in 20x20, centred by mass; see
:mod:`flaxmnist.evaluation.digit_images`) and one line per file gives the most probable classes.
"""

from __future__ import annotations

import json

from absl import flags, logging

from flaxmnist import cli, console, errors

FLAGS = flags.FLAGS
cli.define_run_flags("Run directory of the trained model.")
flags.DEFINE_integer("top", 3, "How many classes to report per image.")
flags.DEFINE_bool("json", False, "Print one JSON document instead of one line per image.")


def main(argv: list[str]) -> None:
    """Predicts the image files named on the command line."""
    logging.set_verbosity(logging.WARNING)
    with errors.reported(None):  # it only reads the run: nothing is written there
        import flaxmnist  # JAX after the flags: a bad flag fails at once
        from flaxmnist.evaluation import prediction

        run = flaxmnist.load_run(
            FLAGS.workdir, cli.checkpoint_flag(), allow_plugins=FLAGS.allow_plugins
        )
        predictions = prediction.predict_files(run, argv[1:], top=FLAGS.top)
    if FLAGS.json:
        console.say(json.dumps([p.record() for p in predictions], indent=2))
    else:
        for p in predictions:
            console.say(p.line())


if __name__ == "__main__":
    errors.exit_on_signals()
    cli.run(main, positional="image files")
