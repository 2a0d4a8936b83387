"""What every command line shares: absl flag parsing whose errors are one line, and ``run``.

Every command (``flaxmnist.train``, ``flaxmnist.evaluate``, ``flaxmnist.compare``,
``flaxmnist.data``) is ``cli.run(main)`` over absl flags; ``main`` does its work inside
:func:`flaxmnist.errors.reported`, so a bad flag, a user error and an internal error all end in
one line on stderr and an exit status (2, 2 and 1).
"""

from __future__ import annotations

import functools
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence

from absl import app, flags

from flaxmnist.errors import exit_with_error, one_line

# The help flags absl defines, and whether each asks for the short help (this module's flags).
HELP_FLAGS = {"--help": True, "-h": True, "-?": True, "--helpshort": True, "--helpfull": False}
FLAG_VALUE_ERROR = re.compile(r"^flag --(?P<name>[^=\s]+)=")
EXPECTED_VALUES = (
    (flags.IntegerParser, "an integer"),
    (flags.FloatParser, "a number"),
    (flags.BooleanParser, "true or false"),
)


def parse_flags(argv: list[str], *, positional: str | None = None) -> list[str]:
    """Parses ``argv`` as absl does; a bad flag is one line naming it (exit 2).

    Args:
      argv: the command line, program name first.
      positional: what the positional arguments are (for the error message), or None when the
        command takes none.

    Returns:
      The program name followed by the positional arguments.
    """
    asked = next((arg for arg in argv[1:] if arg in HELP_FLAGS), None)
    if asked is not None:  # absl's own help flags exit 1; asking for help is no failure
        app.usage(shorthelp=HELP_FLAGS[asked], writeto_stdout=True, exitcode=0)
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as e:
        exit_with_error(describe_flag_error(e, argv))
    if positional is None and len(remaining) > 1:
        exit_with_error(f"unexpected arguments: {' '.join(remaining[1:])}")
    return remaining


def describe_flag_error(error: Exception, argv: Sequence[str]) -> str:
    """``--config.batch_size: expected an integer, got 'abc'`` for absl's parsing ``error``."""
    message = str(error)
    match = FLAG_VALUE_ERROR.match(message)
    if not match:
        return one_line(error)
    name = match.group("name")
    given = [arg.split("=", 1)[1] for arg in argv if arg.startswith(f"--{name}=")]
    value = given[-1] if given else message[match.end() :].split(": ", 1)[0]
    parser = flags.FLAGS[name].parser if name in flags.FLAGS else None
    reason = message[match.end() + len(value) :].removeprefix(": ")
    for parser_type, expected in EXPECTED_VALUES:
        if isinstance(parser, parser_type):
            if _parses(parser, value):  # the right type, out of the flag's bounds
                return f"--{name}: {one_line(reason)}"
            return f"--{name}: expected {expected}, got {value!r}"
    return f"--{name}: {one_line(reason) if reason else 'invalid value ' + repr(value)}"


def define_run_flags(workdir_help: str) -> None:
    """``--workdir`` (required), ``--checkpoint``, ``--allow_plugins``: the run a command reads."""
    flags.DEFINE_string("workdir", None, workdir_help, required=True)
    flags.DEFINE_string(
        "checkpoint",
        "tested",
        "tested (the checkpoint behind the run's metrics.json), best, latest, or a step number.",
    )
    define_allow_plugins_flag()


def define_allow_plugins_flag() -> None:
    """``--allow_plugins``: import the plugin modules a run names (its code runs here)."""
    flags.DEFINE_bool(
        "allow_plugins",
        False,
        "Import the modules in the run's import_modules (plugin code that defines its model, "
        "say). Only for runs whose code you trust: a run directory decides which code that is.",
    )


def checkpoint_flag() -> str | int:
    """``--checkpoint`` as :func:`flaxmnist.load_run` takes it (a step number as an int)."""
    value = flags.FLAGS.checkpoint
    return int(value) if value.isdigit() else value


def _parses(parser: flags.ArgumentParser, value: str) -> bool:
    """Whether ``value`` converts to ``parser``'s type (bounds aside)."""
    convert = {flags.IntegerParser: int, flags.FloatParser: float}.get(type(parser))
    try:
        return convert is not None and convert(value) is not None
    except ValueError:
        return False


def run(main: Callable[[list[str]], None], *, positional: str | None = None) -> None:
    """Runs ``main(argv)`` under absl with one-line flag errors (see :func:`parse_flags`).

    Output piped into a reader that stops early (``| head``) ends the command quietly, with the
    status of a process killed by SIGPIPE (141), as Unix tools do.
    """
    try:
        app.run(main, flags_parser=functools.partial(parse_flags, positional=positional))
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush
        sys.exit(128 + signal.SIGPIPE)
