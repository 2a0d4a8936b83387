"""Command line: ``python -m flaxmnist.export --workdir=RUN [--format=stablehlo|saved_model|onnx]``.

Writes the trained run into ``RUN/export/`` (or ``--out``) as a file another program serves:
``model.stablehlo`` (``jax.export``; JAX alone loads it), ``saved_model/`` (TensorFlow, with a
``serving_default`` signature) or ``model.onnx`` (ONNX Runtime and other ONNX runtimes), plus
``classes.json``. See :mod:`flaxmnist.evaluation.exporting`.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags, logging

from flaxmnist import cli, console, errors

FLAGS = flags.FLAGS
cli.define_run_flags("Run directory of the trained model.")
flags.DEFINE_enum("format", "stablehlo", ["stablehlo", "saved_model", "onnx"], "What to write.")
flags.DEFINE_string("out", None, "Folder to write into (default: RUN/export).")


def main(argv: list[str]) -> None:
    """Exports the run named by the flags."""
    del argv  # cli.parse_flags refuses positional arguments
    logging.set_verbosity(logging.WARNING)
    workdir = Path(FLAGS.workdir)
    out = Path(FLAGS.out) if FLAGS.out else workdir / "export"
    with errors.reported(out):
        import flaxmnist  # JAX after the flags: a bad flag fails at once
        from flaxmnist.evaluation import exporting

        run = flaxmnist.load_run(workdir, cli.checkpoint_flag(), allow_plugins=FLAGS.allow_plugins)
        path = exporting.export_run(run, out, FLAGS.format)
    console.say(f"wrote {exporting.describe(path)} and {out / 'classes.json'}")


if __name__ == "__main__":
    errors.exit_on_signals()
    cli.run(main)
