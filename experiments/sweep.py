r"""A small hyper-parameter sweep: grid or random search over config fields, one run per point.

    python experiments/sweep.py --config=cnn_simple --out=runs/sweep \
        --grid=learning_rate=0.001,0.003 --grid=batch_size=32,128 --set=num_epochs=3
    python experiments/sweep.py --config=convnet --out=runs/sweep_random --random=6 \
        --grid=learning_rate=0.0003,0.001,0.003 --grid=schedule=constant,warmup_cosine

``--grid`` and ``--set`` are repeated, one config field each. Every point trains in
``OUT/<field=value,...>`` through the normal trainer, so an interrupted sweep resumes: finished
points are read back, unfinished ones resume from their checkpoints. Writes ``OUT/results.csv``
and ``OUT/results.md`` sorted by validation accuracy (best first). Bad input ends in one line on
stderr and exit status 2.
"""

from __future__ import annotations

import ast
import importlib
import itertools
import random
from pathlib import Path
from typing import Any

import ml_collections
from absl import flags, logging

from flaxmnist import cli, configs, console, errors
from flaxmnist.errors import ConfigError
from flaxmnist.storage import files


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the command's flags in ``flag_values`` (``flags.FLAGS`` when run as a script)."""
    flags.DEFINE_string("config", "default", "Config preset name.", flag_values=flag_values)
    flags.DEFINE_string(
        "out", None, "Folder of the sweep's runs and results.", flag_values=flag_values
    )
    flags.DEFINE_multi_string(
        "grid",
        None,
        "FIELD=V1,V2,...: values of one field (repeat per field).",
        flag_values=flag_values,
    )
    flags.DEFINE_multi_string(
        "set",
        [],
        "FIELD=VALUE: a field fixed for every point (repeat per field).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer("random", None, "Sample this many grid points.", flag_values=flag_values)
    flags.DEFINE_integer("seed", 0, "Seed of the random sample.", flag_values=flag_values)
    flags.mark_flags_as_required(["out", "grid"], flag_values=flag_values)


def parse_values(text: str, flag: str = "--grid") -> tuple[str, list[Any]]:
    """``"field=v1,v2"`` → ``("field", [v1, v2])`` with values as Python literals.

    Raises:
      ConfigError: when ``text`` is not ``FIELD=VALUES`` (the message names ``flag``).
    """
    field, equals, values = text.partition("=")
    if not field or not equals:
        raise ConfigError(f"{flag}: expected FIELD=VALUE[,VALUE...], got {text!r}")
    return field, [_literal(v) for v in values.split(",")]


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def sweep_points(grid: dict[str, list[Any]], samples: int | None, seed: int) -> list[dict]:
    """All grid points, or ``samples`` of them drawn without replacement."""
    points = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    if samples is not None and samples < len(points):
        points = random.Random(seed).sample(points, samples)
    return points


def run_name(point: dict[str, Any]) -> str:
    """A folder name for one point, e.g. ``batch_size=32,learning_rate=0.001``."""
    return ",".join(f"{k}={v}" for k, v in sorted(point.items()))


def preset_config(preset: str, fields: list[str]) -> ml_collections.ConfigDict:
    """The preset's config, after checking that it exists and has every field in ``fields``.

    Raises:
      ConfigError: for an unknown preset or field.
    """
    if preset not in configs.preset_names():
        raise ConfigError(
            f"--config: unknown preset {preset!r} (choose from {', '.join(configs.preset_names())})"
        )
    config = importlib.import_module(f"flaxmnist.configs.{preset}").get_config()
    unknown = [field for field in fields if field not in config]
    if unknown:
        raise ConfigError(f"preset {preset!r} has no config field {', '.join(unknown)}")
    return config


def run_sweep(preset: str, out: Path, points: list[dict], fixed: dict[str, Any]) -> list[dict]:
    """Trains every point (resuming where possible) and writes the sorted results table."""
    from flaxmnist.training import loop  # JAX after the flags: a bad flag fails at once

    rows = []
    for point in points:
        config = preset_config(preset, [*fixed, *point])
        config.update({**fixed, **point})
        metrics = loop.train_and_evaluate(config, out / run_name(point))
        rows.append(
            {
                **point,
                "val_accuracy": metrics.get("final_val_accuracy"),
                "test_accuracy": metrics["test_accuracy"],
                "train_time_s": round(metrics["train_time_s"], 1),
                "run": run_name(point),
            }
        )
    rows.sort(key=lambda r: -(r["val_accuracy"] or 0.0))
    files.write_csv_atomic(out / "results.csv", rows)
    header = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in r.values()) + " |\n" for r in rows)
    files.write_text_atomic(out / "results.md", header + body)
    return rows


def sweep(flag_values: flags.FlagValues) -> None:
    """Runs the sweep the parsed ``flag_values`` describe and prints its results table."""
    out = Path(flag_values.out)
    with errors.reported(out):
        grid = dict(parse_values(item) for item in flag_values.grid)
        pairs = [parse_values(item, "--set") for item in flag_values.set]
        fixed = {field: values[0] for field, values in pairs}
        preset_config(flag_values.config, [*grid, *fixed])  # fail before the first training
        points = sweep_points(grid, flag_values.random, flag_values.seed)
        rows = run_sweep(flag_values.config, out, points, fixed)
    console.say((out / "results.md").read_text().rstrip("\n"))
    console.say(f"best: {rows[0]['run']}")


def main(argv: list[str]) -> None:
    """Runs the sweep the command-line flags describe."""
    del argv  # cli.parse_flags refuses positional arguments
    logging.set_verbosity(logging.WARNING)
    sweep(flags.FLAGS)


if __name__ == "__main__":
    errors.exit_on_signals()
    define_flags(flags.FLAGS)
    cli.run(main)
