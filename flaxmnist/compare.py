"""Command line: ``python -m flaxmnist.compare RUN1 RUN2 ... [--out=DIR]``.

Prints the runs side by side and writes ``comparison.csv``, ``comparison.md`` and figures to
``--out`` (default ``comparison/``); see :mod:`flaxmnist.evaluation.comparison`.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags, logging

from flaxmnist import cli, console, errors

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "comparison", "Folder for the table and the figures.")
cli.define_allow_plugins_flag()


def main(argv: list[str]) -> None:
    """Compares the run directories named on the command line."""
    runs = [Path(arg) for arg in argv[1:]]
    out = Path(FLAGS.out)
    logging.set_verbosity(logging.WARNING)
    with errors.reported(out):
        if not runs:
            raise errors.FlaxmnistError("name at least one run directory: compare RUN1 RUN2 ...")
        from flaxmnist.evaluation import comparison  # JAX after the flags: a bad flag fails at once

        rows = comparison.compare(runs, out, allow_plugins=FLAGS.allow_plugins)
    console.say(comparison.markdown(rows).rstrip("\n"))
    console.say(f"wrote {out}/ (comparison.csv, comparison.md, 4 figures)")


if __name__ == "__main__":
    errors.exit_on_signals()
    cli.run(main, positional="run directories")
