"""The race's worker: trains one Keras or PyTorch contestant (``race.py``) in this process.

    python experiments/bench/contestant.py --contestant=torch_fast --seed=10
    python experiments/bench/contestant.py --contestant=torch_fast --check_gradients

A fresh process per run (``race.run_contestant`` starts and times it from outside). It trains
the contestant's recipe (``recipes.RECIPES``) with ``keras_recipe.train`` or
``torch_recipe.train`` and prints one ``RESULT {json}`` line: the per-epoch history, the steps
per epoch, process start to the first step and the last test accuracy. ``--check_gradients``
only compares ``torch.compile``'s gradients with eager ones (``gradient_error``); ``--smoke``
trains on a little data (:func:`smoke_limits`). flaxmnist's contestant is its own CLI.
"""

from __future__ import annotations

import dataclasses

import measure
import recipes
import report
from absl import flags
from race import CONTESTANTS

from flaxmnist import cli, errors
from flaxmnist.errors import ConfigError

SMOKE_EXAMPLES = 2048  # --smoke: training images, test images and epochs of a run
SMOKE_TEST_EXAMPLES = 1000
SMOKE_MAX_EPOCHS = 2
FLAG_NAMES = ("contestant", "seed", "smoke", "keras_steps_per_execution", "check_gradients")


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the worker's flags in ``flag_values`` (``flags.FLAGS`` when run as a script)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("contestant", None, "The Keras or PyTorch contestant to run.", **fv)
    flags.DEFINE_integer("seed", 10, "Its seed.", lower_bound=0, **fv)
    flags.DEFINE_bool("smoke", False, "Tiny data: checks that the run works.", **fv)
    flags.DEFINE_bool(
        "check_gradients", False, "Only check torch.compile's gradients against eager.", **fv
    )
    flags.DEFINE_integer(
        "keras_steps_per_execution",
        recipes.KERAS_STEPS_PER_EXECUTION,
        "Keras with XLA: steps per execution.",
        lower_bound=1,
        **fv,
    )


def worker_settings(flag_values: flags.FlagValues) -> dict:
    """The worker's parsed flags by name.

    Raises:
      ConfigError: --contestant is missing, unknown or flaxmnist's (run its CLI instead).
    """
    values = {name: flag_values[name].value for name in FLAG_NAMES}
    runnable = [name for name, c in CONTESTANTS.items() if c.framework != "flaxmnist"]
    if values["contestant"] not in runnable:
        raise ConfigError(
            f"--contestant: expected one of {', '.join(runnable)}, got {values['contestant']!r}"
        )
    return values


def smoke_limits(recipe: recipes.Recipe) -> tuple[recipes.Recipe, dict]:
    """``recipe`` cut to :data:`SMOKE_MAX_EPOCHS`, and a smoke run's train/test image limits."""
    recipe = dataclasses.replace(recipe, max_epochs=min(recipe.max_epochs, SMOKE_MAX_EPOCHS))
    return recipe, {"examples": SMOKE_EXAMPLES, "test_examples": SMOKE_TEST_EXAMPLES}


def train_contestant(name: str, seed: int, smoke: bool, steps_per_execution: int) -> dict:
    """Trains one Keras or PyTorch contestant in this process; returns its result."""
    contestant = CONTESTANTS[name]
    recipe, limits = recipes.RECIPES[contestant.recipe], {}
    if smoke:
        recipe, limits = smoke_limits(recipe)
    if contestant.framework == "keras":
        import keras_recipe

        limits["steps_per_execution"] = steps_per_execution
        return keras_recipe.train(recipe, contestant.settings, seed, **limits)
    import torch_recipe

    return torch_recipe.train(recipe, contestant.settings, seed, **limits)


def check_gradients(name: str) -> dict:
    """How far ``torch.compile``'s gradients of the contestant's model are from eager ones."""
    import torch_recipe

    recipe = recipes.RECIPES[CONTESTANTS[name].recipe]
    return {"gradient_error": torch_recipe.compiled_gradient_error(recipe)}


def main(argv: list[str]) -> None:
    """Runs one contestant (or its gradient check) and prints its RESULT line."""
    del argv  # cli.parse_flags refuses positional arguments
    with errors.reported(report.RESULTS):
        values = worker_settings(flags.FLAGS)
    if values["check_gradients"]:  # outside errors.reported: the driver reads the traceback
        measure.emit_result(check_gradients(values["contestant"]))
        return
    steps_per_execution = values["keras_steps_per_execution"]
    result = train_contestant(
        values["contestant"], values["seed"], values["smoke"], steps_per_execution
    )
    measure.emit_result(result)


if __name__ == "__main__":
    errors.exit_on_signals()
    define_flags(flags.FLAGS)
    cli.run(main)
