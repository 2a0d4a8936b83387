r"""Which convolution and pooling kernels are fastest on this CPU, and whether ``auto`` picks them.

    python experiments/bench/kernels.py                     # every preset with convolutions
    python experiments/bench/kernels.py --models=fast,cnn3 --rounds=5

For each preset (its model and batch size; Adam, lr 1e-3, as ``op_profile.py``), the compiled
``train_step`` is timed with each kernel variant: im2col convolutions with the max-pool fused into
them, im2col convolutions then the ``fast`` max-pool, and XLA's native ops. The variants take
turns, ``--steps`` steps each per round, and each variant's time is the median of its rounds.
The table says which variant is fastest, which one ``auto`` runs on this CPU
(:func:`flaxmnist.cpu.fused_pool_pays`), and how far ``auto`` is from the fastest.

Results are kept per CPU type (``flaxmnist.cpu.cpu_model``): a run replaces this CPU's rows in
``experiments/bench/results/kernels.{json,md}`` and keeps the other CPUs', so the files gather a
table per CPU the command has run on.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import recipes
import report
from absl import flags

from flaxmnist import cli, configs, cpu, errors, testing

CONV_PRESETS = (
    "fast",
    "cnn_simple",
    "convnet",
    "cnn3",
    "cnn_dropout",
    "cnn_basic",
    "cnn_deep",
    "fast_fashion",
    "resnet_mnist",
)
VARIANTS = {
    "fused": {"conv_impl": "im2col", "pool_impl": "fused"},
    "im2col": {"conv_impl": "im2col", "pool_impl": "fast"},
    "xla": {"conv_impl": "xla", "pool_impl": "xla"},
}
# What the layers' "auto" runs on a CPU, by whether the fused pool pays there.
AUTO_VARIANT = {True: "fused", False: "im2col"}
STEM = "kernels"


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the command's flags in ``flag_values`` (``flags.FLAGS`` when run as a script)."""
    flags.DEFINE_list("models", list(CONV_PRESETS), "Presets to time.", flag_values=flag_values)
    flags.DEFINE_integer(
        "steps", 10, "Timed steps per variant and round.", lower_bound=1, flag_values=flag_values
    )
    flags.DEFINE_integer(
        "rounds", 3, "Rounds of turns; the median is kept.", lower_bound=1, flag_values=flag_values
    )
    flags.DEFINE_string(
        "out", str(report.RESULTS), "Folder for the results.", flag_values=flag_values
    )


def compiled_steps(preset: str) -> dict:
    """Per variant: ``(train_step, state, batch, rng)``, compiled and run once."""
    import flax_timing  # JAX, loaded once the flags are checked
    import jax

    config = configs.load(preset)
    batch = {
        "image": np.zeros((config.batch_size, 28, 28, 1), np.uint8),
        "label": np.zeros(config.batch_size, np.int32),
    }
    rng = jax.random.key(1)
    programs = {}
    for name, overrides in VARIANTS.items():
        state, fns = flax_timing.flax_state_and_steps(config.model, **overrides)
        step = fns.train_step.lower(state, batch, rng).compile()
        state, metrics = step(state, batch, rng)
        jax.block_until_ready(metrics)
        programs[name] = (step, state, batch, rng)
    return programs


def time_variants(preset: str, steps: int, rounds: int) -> dict[str, float]:
    """Median milliseconds per step of each variant, the variants taking turns each round."""
    import jax

    programs = compiled_steps(preset)
    times: dict[str, list[float]] = {name: [] for name in programs}
    for _ in range(rounds):
        for name, (step, state, batch, rng) in programs.items():
            begin = time.perf_counter()
            for _ in range(steps):
                state, metrics = step(state, batch, rng)
            jax.block_until_ready(metrics)
            times[name].append(1000 * (time.perf_counter() - begin) / steps)
            programs[name] = (step, state, batch, rng)
    return {name: statistics.median(ms) for name, ms in times.items()}


def verdict(step_ms: dict[str, float], auto: str) -> dict:
    """The fastest variant, the one ``auto`` runs and its time over the fastest's."""
    fastest = min(step_ms, key=step_ms.get)
    return {"fastest": fastest, "auto": auto, "auto_over_fastest": step_ms[auto] / step_ms[fastest]}


def cpu_markdown(record: dict) -> str:
    """One CPU's table: a row per preset."""
    names = list(VARIANTS)
    lines = [
        f"`{record['command']}` on {record['machine']}, {record['date']} "
        f"(commit {record['commit']}); ms per step, median of {record['rounds']} rounds of "
        f"{record['steps']} steps.",
        "",
        "| preset | batch | " + " | ".join(f"{n} ms" for n in names) + " | fastest | auto runs "
        "| auto / fastest |",
        "|---|---|" + "---|" * len(names) + "---|---|---|",
    ]
    for row in record["rows"]:
        cells = " | ".join(f"{row['step_ms'][n]:.1f}" for n in names)
        lines.append(
            f"| `{row['preset']}` | {row['batch_size']} | {cells} | {row['fastest']} "
            f"| {row['auto']} | {row['auto_over_fastest']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def markdown(by_cpu: dict[str, dict]) -> str:
    """The kernel tables of every CPU measured so far."""
    intro = (
        "Variants: `fused` = im2col convolutions with the max-pool computed inside them; "
        "`im2col` = im2col convolutions, then the `fast` max-pool; `xla` = XLA's native "
        "convolution and max-pool. `auto` runs `fused` on a CPU with AVX-512 and `im2col` on "
        "other CPUs. Written by `python experiments/bench/kernels.py`; each CPU's section is "
        "replaced when the command runs on that CPU type."
    )
    return report.by_cpu_markdown("Kernels by CPU", intro, by_cpu, cpu_markdown)


def main(argv: list[str]) -> None:
    """Times every preset named with every variant and writes this CPU's tables."""
    del argv  # cli.run refuses positional arguments
    values = flags.FLAGS
    out = Path(values.out)
    with errors.reported(out):
        recipes.check_presets(values.models)
        auto = AUTO_VARIANT[cpu.fused_pool_pays()]
        rows = []
        for preset in values.models:
            step_ms = time_variants(preset, values.steps, values.rounds)
            config = configs.load(preset)
            rows.append(
                {"preset": preset, "batch_size": config.batch_size, "step_ms": step_ms}
                | verdict(step_ms, auto)
            )
            print(f"{preset}: " + ", ".join(f"{n} {ms:.1f} ms" for n, ms in step_ms.items()))
        by_cpu = report.results_by_cpu(out / f"{STEM}.json")
    given = [f"--{name}={getattr(values, name)}" for name in ("steps", "rounds")]
    if values.models != list(CONV_PRESETS):
        given.insert(0, f"--models={','.join(values.models)}")
    by_cpu[cpu.cpu_model()] = {
        "command": " ".join(["python experiments/bench/kernels.py", *given]),
        "machine": cpu.machine_name(),
        "date": time.strftime("%Y-%m-%d"),
        "commit": testing.revision(),
        "steps": values.steps,
        "rounds": values.rounds,
        "rows": rows,
    }
    report.write_result_files(out, STEM, {"cpus": by_cpu}, markdown(by_cpu))


if __name__ == "__main__":
    errors.exit_on_signals()
    define_flags(flags.FLAGS)
    cli.run(main)
