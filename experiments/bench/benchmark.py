"""Side-by-side training speed on this CPU: flaxmnist vs Keras 3 vs PyTorch, same data and models.

    pip install -e '.[bench]'
    python experiments/bench/benchmark.py                   # every section
    python experiments/bench/benchmark.py --quick           # models section, 3 models
    python experiments/bench/benchmark.py --sections=startup,batch,tiling --repeats=1
    python experiments/bench/benchmark.py --sections=pipelines --repeats=3 --epochs=3
    python experiments/bench/benchmark.py --sections=race --seeds=10,11,12,13,14
    python experiments/bench/benchmark.py --sections=models,race --smoke   # commands work?

Sections (``--sections``, comma-separated, run in this order; a full run runs them all, ``--quick``
only ``models``; ``--frameworks`` and ``--models`` are comma-separated too):

* ``models`` (``models_section.py``): every (framework, model) pair runs in a fresh worker
  process (``pair_worker.py``), one after another, on the vendored MNIST arrays in memory, with
  Adam (lr 1e-3) and sparse cross-entropy at the reference batch size; the Keras and PyTorch
  models are twins of flaxmnist's, built from one layer list (``recipes.py``). flaxmnist and
  PyTorch: 200 timed steps x 3 repeats after a warm-up run (quick: dense, cnn_simple and
  convnet, 30 steps x 2 repeats); each timed run shuffles the ``batch x steps`` images it trains
  on (a whole 60,000-image shuffle per 200 steps would weigh far more than it does in an
  epoch). Keras: one ``fit`` of ``1 + repeats`` whole 60,000-image epochs, the first the
  warm-up (it compiles the last, partial batch too), so ``fit``'s fixed cost weighs what it
  does in a real epoch. Seconds per epoch are the median time per step times the steps of a
  60,000-image epoch. Startup is process start (``/proc``) to the first compiled training step
  done, timed apart from the timed runs (Keras: a one-batch ``fit`` first). GFLOP/s uses the
  training FLOPs per step that XLA counts for the flaxmnist step, for every framework, against
  this machine's measured matmul peak. ``--smoke``: a few hundred images per run, results
  printed only (checks the commands).
* ``race`` (``race.py``): launch-to-exit wall time to >= 99 % test accuracy, each run a fresh
  process, the contestants interleaved over fresh seeds (``--seeds``; ``--contestants``): our
  ``fast`` preset, the same recipe in Keras and in PyTorch, and the published references (Keras's
  simple convnet, pytorch/examples mnist), with s/epoch, GFLOP/s, peak RSS and test accuracy.
* ``startup`` (``end_to_end.py``): process start to the first training step of
  ``--config=fast`` with a cold, then a warm compilation cache (``--repeats`` warm runs).
* ``pipelines`` (``pipelines.py``, workers ``pipeline_worker.py``): the three input pipelines
  side by side on the CNN and recipe of Flax's MNIST example (SGD lr 0.1, momentum 0.9, batch
  128, all 60,000 training images): each run is a fresh process that builds its feeder
  (``device``, ``tfds`` or ``grain``, the tfds dataset prepared first, both its formats) and
  trains ``--epochs`` epochs; the runs take turns (``--repeats`` of each, the order rotating),
  and the table gives the median of every epoch after the first (compiled, caches filled), peak
  RSS, the test accuracy and each pipeline's ratios to ``device``. The table also goes into
  ``docs/data.md``, between its ``pipelines`` markers.
* ``batch``, ``tiling`` (``scaling.py``): flaxmnist throughput vs batch size; epoch time vs
  training-set size (1x, 2x, 4x the 60,000 images). Named together with ``--quick`` they run
  smaller variants (cnn_simple only and shorter runs; 1x and 2x only).

Writes ``results/benchmark.{json,md,png}`` and ``results/throughput_vs_batch.png`` beside this
file. The JSON and markdown keep the results of each CPU type apart (``report.results_by_cpu``):
sections that do not run keep this CPU's previous results; the charts are this CPU's. Bad flags
end in one line on stderr and exit status 2.

Frameworks (``models_section.FRAMEWORK_SETTINGS``): ``flaxmnist``, ``flaxmnist_tfds``, ``keras``,
``keras_default``, ``torch`` and ``torch_eager``; the ratios compare with each framework's faster
variant.
"""

from __future__ import annotations

import time
import types

import end_to_end
import models_section
import pipelines
import race
import recipes
import report
import scaling
from absl import flags

from flaxmnist import cli, errors
from flaxmnist.cpu import cpu_model
from flaxmnist.errors import ConfigError

SECTIONS = ("models", "pipelines", "race", "startup", "batch", "tiling")
QUICK_SECTIONS = ("models",)
SMOKE_SECTIONS = ("models", "race")
SMOKE_STEPS = 4  # --smoke: steps per timed run (and Keras's epochs are this many batches)
FLAG_NAMES = ("quick", "sections", "steps", "repeats", "frameworks", "models", "epochs")
FLAG_NAMES += ("smoke", "seeds", "contestants", "keras_steps_per_execution")
RESULTS_JSON = report.RESULTS / "benchmark.json"


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the command's flags in ``flag_values`` (``flags.FLAGS`` when run as a script)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_bool("quick", False, "The short variant (see the top).", **fv)
    flags.DEFINE_list("sections", None, f"Sections to run: {', '.join(SECTIONS)}.", **fv)
    flags.DEFINE_integer(
        "steps", None, "Timed steps per run (200; --quick: 30).", lower_bound=1, **fv
    )
    flags.DEFINE_integer("repeats", None, "Repeats (3; --quick: 2).", lower_bound=1, **fv)
    flags.DEFINE_list(
        "frameworks", list(models_section.FRAMEWORKS), "Frameworks of the models section.", **fv
    )
    flags.DEFINE_bool(
        "smoke", False, "Tiny runs that check the commands; prints, writes no results.", **fv
    )
    flags.DEFINE_list("seeds", ["10", "11", "12", "13", "14"], "Seeds of the race.", **fv)
    flags.DEFINE_list("contestants", None, "Contestants of the race (race.py).", **fv)
    flags.DEFINE_integer(
        "keras_steps_per_execution",
        recipes.KERAS_STEPS_PER_EXECUTION,
        "Keras with XLA: steps per execution.",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_list("models", None, "Models of the models and batch sections.", **fv)
    flags.DEFINE_integer("epochs", 2, "Epochs of each pipelines-section run.", lower_bound=1, **fv)


def settings(flag_values: flags.FlagValues) -> types.SimpleNamespace:
    """The parsed flags, with the --quick / full defaults filled in.

    Args:
      flag_values: parsed flags of :func:`define_flags`.

    Returns:
      Every flag by name; ``steps``, ``repeats`` and ``sections`` (in the order of
      :data:`SECTIONS`) filled in.

    Raises:
      ConfigError: a list flag names something unknown.
    """
    args = types.SimpleNamespace(**{name: flag_values[name].value for name in FLAG_NAMES})
    known_items = {
        "sections": SECTIONS,
        "frameworks": models_section.FRAMEWORKS,
        "models": tuple(recipes.BENCHMARK_MODELS),
        "contestants": tuple(race.CONTESTANTS),
    }
    for name, known in known_items.items():
        unknown = [item for item in getattr(args, name) or () if item not in known]
        if unknown:
            raise ConfigError(
                f"--{name}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(known)}"
            )
    args.seeds = seed_list(args.seeds)
    args.contestants = args.contestants or list(race.DEFAULT_CONTESTANTS)
    args.steps = args.steps or (SMOKE_STEPS if args.smoke else 30 if args.quick else 200)
    args.repeats = args.repeats or (1 if args.smoke else 2 if args.quick else 3)
    chosen = args.sections or (
        SMOKE_SECTIONS if args.smoke else QUICK_SECTIONS if args.quick else SECTIONS
    )
    args.sections = [name for name in SECTIONS if name in chosen]
    return args


def seed_list(items: list[str]) -> list[int]:
    """``--seeds`` as integers, each once, in order.

    Raises:
      ConfigError: an item is not a non-negative integer.
    """
    bad = [item for item in items if not item.isdigit()]
    if bad or not items:
        raise ConfigError(f"--seeds: expected non-negative integers, got {','.join(items)!r}")
    return list(dict.fromkeys(int(item) for item in items))


def run_section(name: str, args: types.SimpleNamespace) -> dict:
    """Runs section ``name``; returns the entries of the results it (re)writes."""
    spe = args.keras_steps_per_execution
    if name == "models":
        models = args.models or list(
            models_section.QUICK_MODELS if args.quick else recipes.BENCHMARK_MODELS
        )
        return models_section.models_section(
            models, args.frameworks, args.steps, args.repeats, spe, args.smoke
        )
    if name == "race":
        return {"race": race.race_section(args.contestants, args.seeds, args.smoke, spe)}
    if name == "pipelines":
        return pipelines.pipelines_section(args.repeats, args.epochs)
    if name == "startup":
        return {"startup": end_to_end.startup(warm_runs=args.repeats)}
    if name == "batch":
        return {"batch_scaling": scaling.batch_scaling(args.quick, args.repeats, args.models)}
    return {"tiling": scaling.tiling(args.quick)}


def document(results: dict) -> str:
    """One CPU's results: the per-model table, then every further section that has results."""
    parts = [models_section.markdown(results), pipelines.markdown(results)]
    parts += [race.markdown(results), end_to_end.markdown(results), scaling.markdown(results)]
    return "\n".join(part for part in parts if part)


def write_results(by_cpu: dict[str, dict], sections: list[str]) -> None:
    """Writes ``benchmark.{json,md}``, this CPU's figures of the sections that ran, the data doc."""
    intro = "Written by `python experiments/bench/benchmark.py`: the results of each CPU type."
    text = report.by_cpu_markdown("Benchmark by CPU", intro, by_cpu, document)
    report.write_result_files(report.RESULTS, "benchmark", {"cpus": by_cpu}, text)
    results = by_cpu[cpu_model()]
    if "models" in sections:
        models_section.chart(results["rows"], report.RESULTS / "benchmark.png")
    if "pipelines" in sections:
        pipelines.write_data_doc_table(results)
    if "batch" in sections:
        scaling.chart(results["batch_scaling"], report.RESULTS / "throughput_vs_batch.png")


def main(argv: list[str]) -> None:
    """Runs the chosen sections and writes the results.

    Sections that do not run keep this CPU's previous results in ``benchmark.json``.
    """
    del argv  # cli.parse_flags refuses positional arguments
    with errors.reported(report.RESULTS):
        args = settings(flags.FLAGS)
        by_cpu = report.results_by_cpu(RESULTS_JSON)
        ran = {}
        for name in args.sections:
            begin = time.perf_counter()
            ran.update(run_section(name, args))
            print(f"section {name}: {time.perf_counter() - begin:.0f} s", flush=True)
        if args.smoke:  # a check of the commands, not a measurement
            print(document(ran))
            return
        by_cpu[cpu_model()] = {**by_cpu.get(cpu_model(), {}), **ran}
        write_results(by_cpu, args.sections)


if __name__ == "__main__":
    errors.exit_on_signals()
    define_flags(flags.FLAGS)
    cli.run(main)
