"""Command line: ``python -m flaxmnist.serve --workdir=RUN [--host=127.0.0.1] [--port=8000]``.

Serves a trained run on a local page: draw a digit and see the top classes as you draw, with the
28x28 image the model saw, framed as ``python -m flaxmnist.predict`` frames an image file. The
page's endpoint, ``POST /api/predict``, takes image files (multipart or base64 JSON) and answers
as ``predict --json`` does (see :mod:`flaxmnist.evaluation.serving`). The model is loaded and
compiled once, before the URL is printed; Ctrl-C stops the server (exit 130).
"""

from __future__ import annotations

from absl import flags, logging

from flaxmnist import cli, console, errors

FLAGS = flags.FLAGS
cli.define_run_flags("Run directory of the trained model.")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
flags.DEFINE_integer(
    "port", 8000, "Port to listen on; 0 picks a free one.", lower_bound=0, upper_bound=65535
)


def main(argv: list[str]) -> None:
    """Loads the run, warms its model up and serves it until the process is stopped."""
    del argv  # no positional arguments
    logging.set_verbosity(logging.WARNING)
    with errors.reported(None):  # it only reads the run: nothing is written there
        import flaxmnist  # JAX after the flags: a bad flag fails at once
        from flaxmnist.evaluation import serving

        run = flaxmnist.load_run(
            FLAGS.workdir, cli.checkpoint_flag(), allow_plugins=FLAGS.allow_plugins
        )
        serving.warm_up(run)
        app = serving.create_app(run)
        sock = serving.listen(FLAGS.host, FLAGS.port)
        console.say(f"serving {FLAGS.workdir} (step {run.step}) at {serving.url(sock)}")
        serving.serve(app, sock)


if __name__ == "__main__":
    errors.exit_on_signals()
    cli.run(main)
