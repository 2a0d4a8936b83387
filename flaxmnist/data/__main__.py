"""Command line: ``python -m flaxmnist.data prepare [--data_dir=DIR] [--datasets=NAME,...]``.

Writes ``mnist`` and ``fashion_mnist`` from the vendored IDX files into a tfds data dir, offline,
so that ``tfds.load("mnist", data_dir=DIR)`` reads them anywhere, with ArrayRecord files beside
the TFRecord ones for ``as_data_source`` (see ``docs/data.md``). Another tfds name already built
in the data dir gets its ArrayRecord files added. ``--idx_dir=FOLDER`` writes instead the dataset
the ``tfds`` and ``grain`` input pipelines read for a folder of IDX files (a run prepares it on
first use). One line per dataset: prepared, ArrayRecord files added or already prepared, its
path, the seconds it took. Bad input ends in one line on stderr and exit status 2.
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
    if FLAGS.idx_dir is not None:
        with errors.reported(None):  # a bug's traceback: not in a data folder
            prepare_idx_folder(dataset_names(FLAGS.datasets), Path(FLAGS.idx_dir).expanduser())
        return
    root = tfds_prepare.resolve_tfds_data_dir(FLAGS.data_dir)
    with errors.reported(root):
        prepare_all(dataset_names(FLAGS.datasets), root)


def dataset_names(given: list[str]) -> list[str]:
    """The ``--datasets`` names, checked and without repeats.

    Args:
      given: the flag's comma-separated items.

    Returns:
      The names in the order given.

    Raises:
      DataError: when none is given.
    """
    names = list(dict.fromkeys(name.strip() for name in given if name.strip()))
    if not names:
        raise DataError(
            f"--datasets: no dataset given (choose from {', '.join(tfds_prepare.PREPARABLE)}, "
            "or a tfds name built in the data dir)"
        )
    return names


def prepare_all(names: list[str], root: Path) -> None:
    """Prepares each dataset in ``root``, printing one line per dataset.

    Args:
      names: datasets to prepare.
      root: the tfds data dir.
    """
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    for name in names:
        console.say(tfds_prepare.prepare(name, root).summary())


def prepare_idx_folder(names: list[str], folder: Path) -> None:
    """Prepares the input pipelines' dataset of the IDX files in ``folder``; prints one line.

    Args:
      names: the dataset's name (one of ``mnist``, ``fashion_mnist``).
      folder: a folder holding the four IDX files.

    Raises:
      DataError: not exactly one name, or :func:`tfds_prepare.prepare_idx`'s errors.
    """
    if len(names) != 1:
        raise DataError(f"--idx_dir: name one dataset in --datasets, got {', '.join(names)}")
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    console.say(tfds_prepare.prepare_idx(names[0], folder).summary())


if __name__ == "__main__":
    errors.exit_on_signals()
    cli.run(main, positional="prepare")
