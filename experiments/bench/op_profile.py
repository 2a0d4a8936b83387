r"""Where a training step's time goes: XLA's own per-op timings of flaxmnist's step, on this CPU.

    python experiments/bench/op_profile.py                             # the reference CNNs
    python experiments/bench/op_profile.py --models=convnet --steps=50
    python experiments/bench/op_profile.py --set=pool_impl=fast --out=/tmp/unfused  # a layer switch

For each preset (its model and batch size; Adam, lr 1e-3, as the benchmark's models section),
JAX's profiler traces ``--steps`` compiled ``train_step`` calls after a warm-up. Every XLA op's
self time (the ops nested in it taken out: a loop's body is counted once, in its ops) is summed
and mapped, through the compiled program's metadata, to the layer it computes and its pass:
forward, backward, or the rest (loss, optimizer update). The step time is measured apart, without
the profiler. ``--set FIELD=VALUE`` (repeated) changes one of the model's layer fields
(``MODEL_FIELDS``). Writes ``OUT/op_profile.{json,md}`` (default ``experiments/bench/results``) and
prints the tables.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import recipes
import report
from absl import flags

from flaxmnist import cli, configs, errors
from flaxmnist.cpu import machine_name

REFERENCE_PRESETS = ("cnn_simple", "convnet", "cnn3")
COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.-]+) \(.*\) -> .* \{$")
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.-]+) = ")
OP_NAME = re.compile(r'op_name="([^"]*)"')
CALLS = re.compile(r"calls=%?([\w.-]+)")
LAYER = re.compile(r"^(Conv|Dense|BatchNorm|Dropout)_\d+$|^head$")
TOP_OPS = 8
MODEL_FIELDS = ("conv_impl", "pool_impl", "dtype", "activation")


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the command's flags in ``flag_values`` (``flags.FLAGS`` when run as a script)."""
    flags.DEFINE_list(
        "models", list(REFERENCE_PRESETS), "Presets to profile.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "steps", 30, "Traced (and timed) steps.", lower_bound=1, flag_values=flag_values
    )
    flags.DEFINE_multi_string(
        "set",
        [],
        f"FIELD=VALUE: a model field override, FIELD one of {', '.join(MODEL_FIELDS)} (repeat).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "out", str(report.RESULTS), "Folder for the results.", flag_values=flag_values
    )


def model_overrides(items: list[str]) -> dict[str, str]:
    """``--set`` items (``FIELD=VALUE``) as a dict; a ConfigError names the first bad one."""
    overrides = {}
    for item in items:
        field, equals, value = item.partition("=")
        if not equals or field not in MODEL_FIELDS:
            raise errors.ConfigError(
                f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(MODEL_FIELDS)}"
            )
        overrides[field] = value
    return overrides


def op_metadata(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Each instruction of a compiled HLO module -> the op names of its layer and of its root.

    A fusion's own metadata names only its root (the ReLU after a convolution, say): its layer is
    the first ``op_name`` inside its fused computation that names a layer, where there is one.
    """
    own: dict[str, str] = {}
    calls: dict[str, str] = {}
    inside: dict[str, list[str]] = collections.defaultdict(list)
    computation = ""
    for line in hlo_text.splitlines():
        if header := COMPUTATION.match(line):
            computation = header.group(1)
        elif instruction := INSTRUCTION.match(line):
            name = instruction.group(1)
            if op_name := OP_NAME.search(line):
                own[name] = op_name.group(1)
                inside[computation].append(op_name.group(1))
            if called := CALLS.search(line):
                calls[name] = called.group(1)
    names = {name: (op_name, op_name) for name, op_name in own.items()}
    for name, computation in calls.items():
        layered = [op for op in inside[computation] if _layer_names(op)]
        if layered and name in own:
            names[name] = (layered[0], own[name])
    return names


def _layer_names(op_name: str) -> list[str]:
    return [part for part in op_name.split("/") if LAYER.match(part)]


def layer_and_pass(op_name: str) -> tuple[str, str]:
    """The layer (``Conv_0``, ``head``, ``max_pool``...) and pass an op's ``op_name`` names."""
    step = "backward" if "transpose(" in op_name else "forward" if "jvp(" in op_name else "rest"
    layers = _layer_names(op_name)
    if layers:
        return layers[-1], step
    for word in ("max_pool", "relu", "dropout", "loss", "adam"):
        if word in op_name:
            return word, step
    return "other", step


def self_times(events: list[dict], known: dict) -> collections.Counter:
    """Microseconds of self time per op, from complete (``ph: X``) trace events of ``known`` ops.

    An op's self time is its duration less that of the ops nested in it on the same thread.
    """
    by_thread = collections.defaultdict(list)
    for event in events:
        if event.get("ph") == "X" and event["name"] in known:
            by_thread[event.get("tid")].append(event)
    totals = collections.Counter()
    for thread_events in by_thread.values():
        thread_events.sort(key=lambda e: (e["ts"], -e["dur"]))
        open_ops: list[list] = []  # [end, name, duration, time of the ops nested in it]
        for event in [*thread_events, None]:
            while open_ops and (event is None or event["ts"] >= open_ops[-1][0]):
                _, name, duration, nested = open_ops.pop()
                totals[name] += duration - nested
                if open_ops:
                    open_ops[-1][3] += duration
            if event is not None:
                open_ops.append([event["ts"] + event["dur"], event["name"], event["dur"], 0.0])
    return totals


def profile(preset: str, steps: int, overrides: dict[str, str]) -> dict:
    """Traces ``steps`` train steps of ``preset`` and sums its ops' self time by layer and pass."""
    import flax_timing  # JAX, loaded once the flags are checked
    import jax

    config = configs.load(preset)
    state, fns = flax_timing.flax_state_and_steps(config.model, **overrides)
    batch = {
        "image": np.zeros((config.batch_size, 28, 28, 1), np.uint8),
        "label": np.zeros(config.batch_size, np.int32),
    }
    rng = jax.random.key(1)
    train_step = fns.train_step.lower(state, batch, rng).compile()  # the one program, timed
    metadata = op_metadata(train_step.as_text())
    for _ in range(3):
        state, metrics = train_step(state, batch, rng)
    jax.block_until_ready(metrics)
    step_s = []
    for _ in range(steps):
        begin = time.perf_counter()
        state, metrics = train_step(state, batch, rng)
        jax.block_until_ready(metrics)
        step_s.append(time.perf_counter() - begin)
    with tempfile.TemporaryDirectory(prefix="flaxmnist-profile-") as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for _ in range(steps):
            state, metrics = train_step(state, batch, rng)
        jax.block_until_ready(metrics)
        jax.profiler.stop_trace()
        (trace,) = Path(trace_dir).rglob("perfetto_trace.json.gz")
        events = json.loads(gzip.decompress(trace.read_bytes()))
    events = events["traceEvents"] if isinstance(events, dict) else events
    totals = self_times(events, metadata)
    per_step_ms = {name: us / 1000 / steps for name, us in totals.items()}
    attributed = {name: layer_and_pass(metadata[name][0]) for name in per_step_ms}
    layers: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, ms in per_step_ms.items():
        layer, step = attributed[name]
        layers[layer][step] += ms
    top = sorted(per_step_ms.items(), key=lambda item: -item[1])[:TOP_OPS]
    return {
        "preset": preset,
        "model": config.model,
        "batch_size": config.batch_size,
        "step_ms": 1000 * statistics.median(step_s),
        "profiled_ms": sum(per_step_ms.values()),
        "layers": {layer: dict(passes) for layer, passes in layers.items()},
        "top_ops": [
            {
                "op": name,
                "ms": ms,
                "layer": attributed[name][0],
                "root": metadata[name][1],
            }
            for name, ms in top
        ],
    }


def markdown(results: list[dict], machine: str, steps: int, command: str) -> str:
    """The tables ``command`` made: per preset, step time by layer and pass, then slowest ops."""
    lines = [
        f"# Where a training step's time goes ({machine})",
        "",
        f"`{command}` ({steps} traced steps each). Self time per "
        "step of every XLA op, by layer and pass; the step time is measured without the profiler.",
    ]
    for result in results:
        lines += [
            "",
            f"## `{result['preset']}` (model `{result['model']}`, batch {result['batch_size']}): "
            f"{result['step_ms']:.2f} ms per step, {result['profiled_ms']:.2f} ms in XLA ops",
            "",
            "| layer | forward ms | backward ms | rest ms | share |",
            "|---|---|---|---|---|",
        ]
        by_total = sorted(result["layers"].items(), key=lambda item: -sum(item[1].values()))
        for layer, passes in by_total:
            total = sum(passes.values())
            cells = [f"{passes.get(p, 0.0):.2f}" for p in ("forward", "backward", "rest")]
            share = 100 * total / result["profiled_ms"]
            lines.append(f"| `{layer}` | {' | '.join(cells)} | {share:.0f} % |")
        lines += ["", "| slowest ops | ms | layer | root op (HLO metadata) |", "|---|---|---|---|"]
        for op in result["top_ops"]:
            root = op["root"].removeprefix("jit(train_step)/")
            lines.append(f"| `{op['op']}` | {op['ms']:.2f} | `{op['layer']}` | `{root}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    """Profiles every preset named and writes the results."""
    del argv  # cli.parse_flags refuses positional arguments
    values = flags.FLAGS
    out = Path(values.out)
    with errors.reported(out):
        recipes.check_presets(values.models)
        overrides = model_overrides(values.set)
        results = [profile(preset, values.steps, overrides) for preset in values.models]
    machine = machine_name()
    record = {"machine": machine, "steps": values.steps, "overrides": overrides, "results": results}
    given = [f"--set={item}" for item in values.set]
    if values.models != list(REFERENCE_PRESETS):
        given.insert(0, f"--models={','.join(values.models)}")
    command = " ".join(["python experiments/bench/op_profile.py", *given])
    table = markdown(results, machine, values.steps, command)
    report.write_result_files(out, "op_profile", record, table)


if __name__ == "__main__":
    errors.exit_on_signals()
    define_flags(flags.FLAGS)
    cli.run(main)
