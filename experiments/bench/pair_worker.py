"""The worker of the ``models``, ``batch`` and ``tiling`` sections: times one (framework, model).

    python experiments/bench/pair_worker.py --framework=keras --model=convnet --steps=30 --repeats=2

A fresh process per pair (``models_section.run_pair`` starts it), so each framework loads alone
and its startup counts from the process start. It prints one ``RESULT {json}`` line: the timed
runs' seconds, their steps, the startup, the training FLOPs per step and the peak RSS. flaxmnist's
rows time ``flax_timing.time_train_step``, Keras's ``keras_recipe.time_fit`` (whole epochs of
``fit``) and PyTorch's ``torch_recipe.time_steps``, each on the model and Adam recipe
``recipes.adam_recipe`` describes. Errors are left to reach stderr whole: the driver keeps its
tail in the row.
"""

from __future__ import annotations

import types

import measure
import recipes
from absl import flags
from models_section import FRAMEWORKS

from flaxmnist import cli, errors

FLAG_NAMES = ("framework", "model", "batch", "steps", "repeats", "tile", "smoke")
FLAG_NAMES += ("keras_steps_per_execution",)


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the worker's flags in ``flag_values`` (``flags.FLAGS`` when run as a script)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_enum("framework", None, FRAMEWORKS, "The framework to time.", **fv)
    flags.DEFINE_enum("model", None, list(recipes.BENCHMARK_MODELS), "The model to time.", **fv)
    flags.DEFINE_integer(
        "batch", None, "Batch size (the model's reference one).", lower_bound=1, **fv
    )
    flags.DEFINE_integer("steps", 200, "Steps per timed run.", lower_bound=1, **fv)
    flags.DEFINE_integer("repeats", 3, "Timed runs (Keras: timed epochs).", lower_bound=1, **fv)
    flags.DEFINE_integer("tile", 1, "Training-set repeats (flaxmnist).", lower_bound=1, **fv)
    flags.DEFINE_bool("smoke", False, "Keras: epochs of batch x steps images only.", **fv)
    flags.DEFINE_integer(
        "keras_steps_per_execution",
        recipes.KERAS_STEPS_PER_EXECUTION,
        "Keras with XLA: steps per execution.",
        lower_bound=1,
        **fv,
    )
    flags.mark_flags_as_required(["framework", "model"], flag_values=flag_values)


def settings(flag_values: flags.FlagValues) -> types.SimpleNamespace:
    """The parsed flags by name, ``batch`` filled in with the model's reference batch."""
    args = types.SimpleNamespace(**{name: flag_values[name].value for name in FLAG_NAMES})
    args.batch = args.batch or recipes.BENCHMARK_MODELS[args.model]
    return args


def time_pair(args: types.SimpleNamespace) -> dict:
    """Times ``args.framework`` training ``args.model`` in this process; returns its raw result."""
    if args.framework.startswith("flaxmnist"):
        import flax_timing

        streaming = args.framework == "flaxmnist_tfds"
        return flax_timing.time_train_step(
            args.model, args.batch, args.steps, args.repeats, streaming, args.tile
        )
    recipe = recipes.adam_recipe(args.model, args.batch)
    if args.framework.startswith("keras"):
        import keras_recipe

        examples = args.batch * args.steps if args.smoke else recipes.TRAIN_EXAMPLES
        settings = "xla" if args.framework == "keras" else "default"
        spe = args.keras_steps_per_execution
        return keras_recipe.time_fit(recipe, settings, args.repeats, spe, examples)
    import torch_recipe

    compiled = args.framework == "torch"
    return torch_recipe.time_steps(recipe, args.steps, args.repeats, compiled)


def main(argv: list[str]) -> None:
    """Times one pair and prints its RESULT line (with this process's peak RSS)."""
    del argv  # cli.parse_flags refuses positional arguments
    result = time_pair(settings(flags.FLAGS))  # a failure's traceback goes to the driver
    measure.emit_result({**result, "peak_rss_mb": measure.peak_rss_mb()})


if __name__ == "__main__":
    errors.exit_on_signals()
    define_flags(flags.FLAGS)
    cli.run(main)
