"""Command line: ``python -m flaxmnist.data prepare [--data_dir=DIR] [--datasets=NAME,...]``.

Writes ``mnist`` and ``fashion_mnist`` from the vendored IDX files into a tfds data dir, offline
(:func:`flaxmnist.data.tfds_prepare.prepare`; see ``docs/data.md``); ``--idx_dir=FOLDER`` writes
the dataset the input pipelines read for a folder of IDX files instead. One line per dataset;
bad input ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags, logging

from flaxmnist import cli, console, errors
from flaxmnist.data import tfds_prepare
from flaxmnist.errors import DataError

USAGE = (
    "python -m flaxmnist.data prepare [--data_dir=DIR | --idx_dir=FOLDER] "
    "[--datasets=mnist,fashion_mnist]"
)

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "data_dir", None, "tfds data dir (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)."
)
flags.DEFINE_list(
    "datasets",
    list(tfds_prepare.PREPARABLE),
    "Comma-separated datasets: mnist, fashion_mnist, or tfds names built in the data dir.",
)
flags.DEFINE_string(
    "idx_dir",
    None,
    "A folder of IDX files: write the tfds dataset the tfds and grain input pipelines read of "
    "it (in FOLDER/tfds/), for the one dataset --datasets names.",
)


def main(argv: list[str]) -> None:
    """Runs the command named by the positional argument."""
    if argv[1:] != ["prepare"]:
        given = " ".join(argv[1:]) or "no command"
        errors.exit_with_error(f"expected the command 'prepare', got {given!r}; usage: {USAGE}")
    logging.set_verbosity(logging.ERROR)  # tfds warns about every dataset it does not find
    names = list(dict.fromkeys(name.strip() for name in FLAGS.datasets if name.strip()))
    if FLAGS.idx_dir is not None:
        with errors.reported(None):  # a bug's traceback: not in a data folder
            if len(names) != 1:
                raise DataError(
                    f"--idx_dir: name one dataset in --datasets, got {', '.join(names)}"
                )
            folder = Path(FLAGS.idx_dir).expanduser()
            console.say(tfds_prepare.prepare_idx(names[0], folder).summary())
        return
    root = tfds_prepare.resolve_tfds_data_dir(FLAGS.data_dir)
    with errors.reported(root):
        if not names:
            raise DataError(
                f"--datasets: no dataset given (choose from {', '.join(tfds_prepare.PREPARABLE)}, "
                "or a tfds name built in the data dir)"
            )
        for name in names:
            console.say(tfds_prepare.prepare(name, root).summary())


if __name__ == "__main__":
    errors.exit_on_signals()
    cli.run(main, positional="prepare")
