"""What every command line shares: flag errors in one line naming the flag and the problem."""

import subprocess
import sys

import pytest
from absl import flags

from flaxmnist import cli

flags.DEFINE_integer("cli_test_jobs", 1, "A bounded integer.", lower_bound=1)
flags.DEFINE_float("cli_test_rate", 1.0, "A bounded number.", lower_bound=0.0)
flags.DEFINE_bool("cli_test_quick", False, "A boolean.")


@pytest.mark.parametrize(
    ("argument", "line"),
    [
        ("--cli_test_jobs=x", "--cli_test_jobs: expected an integer, got 'x'"),
        ("--cli_test_jobs=0", "--cli_test_jobs: 0 is not a positive integer"),
        ("--cli_test_rate=abc", "--cli_test_rate: expected a number, got 'abc'"),
        ("--cli_test_rate=-1", "--cli_test_rate: -1.0 is not a non-negative number"),
        ("--cli_test_quick=often", "--cli_test_quick: expected true or false, got 'often'"),
    ],
)
def test_a_bad_flag_value_is_described_in_one_line(argument, line):
    argv = ["prog", argument]
    with pytest.raises(flags.Error) as error:
        flags.FLAGS(argv, known_only=False)
    assert cli.describe_flag_error(error.value, argv) == line


def test_positional_arguments_are_refused_unless_the_command_takes_them(capsys):
    assert cli.parse_flags(["prog", "a", "b"], positional="files") == ["prog", "a", "b"]
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_flags(["prog", "a"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: unexpected arguments: a\n"


# `python -m flaxmnist.COMMAND --help`, then a check that JAX was never imported (the commands
# parse their flags before they import the library, so --help and a bad flag answer at once).
HELP_WITHOUT_JAX = """
import runpy, sys
sys.argv = ["flaxmnist.{0}", "--help"]
try:
    runpy.run_module("flaxmnist.{0}", run_name="__main__", alter_sys=True)
finally:
    assert "jax" not in sys.modules, "--help imported jax"
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "command", ["train", "evaluate", "predict", "export", "compare", "tune", "data", "serve"]
)
def test_help_is_printed_on_stdout_with_exit_0_without_importing_jax(command):
    result = subprocess.run(
        [sys.executable, "-c", HELP_WITHOUT_JAX.format(command)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "python -m flaxmnist" in result.stdout and "--" in result.stdout
