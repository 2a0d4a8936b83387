"""Benchmark sections on scaling: flaxmnist throughput vs batch size, epoch time vs data size.

Both time the device-resident training path with the flaxmnist worker (``pair_worker.py``), one
fresh subprocess per point, after one untimed (compiling) run of the same shape:

* ``batch``: examples/s of ``convnet`` and ``cnn_simple`` (or the ``--models`` named) at batch 32
  to 1024, each timed run about 12,800 examples, the median of the repeats; figure
  ``results/throughput_vs_batch.png``. Quick: ``cnn_simple`` only, about 3,200 examples per run.
* ``tiling``: one full epoch of ``cnn_simple`` (batch 32) over the 60,000 training images tiled
  (``numpy.tile``) 1×, 2× and 4×; linear scaling gives epoch-time ratios 1, 2, 4. Quick: 1×, 2×.

Run through ``benchmark.py --sections=batch,tiling``.
"""

from __future__ import annotations

from pathlib import Path

import measure
import recipes
import report
from models_section import run_pair

from flaxmnist.cpu import machine_name

BATCH_SIZES = (32, 64, 128, 256, 512, 1024)
BATCH_MODELS = ("convnet", "cnn_simple")
QUICK_BATCH_MODELS = ("cnn_simple",)
EXAMPLES_PER_RUN = 12_800
QUICK_EXAMPLES_PER_RUN = 3_200
TILE_MODEL = "cnn_simple"
TILES = (1, 2, 4)
QUICK_TILES = (1, 2)


def steps_for(batch: int, examples: int) -> int:
    """Steps in a timed run of about ``examples`` examples: at least one, at most an epoch."""
    return max(1, min(examples, recipes.TRAIN_EXAMPLES) // batch)


def batch_scaling(quick: bool, repeats: int, models: list[str] | None = None) -> dict:
    """Throughput of each of ``models`` (default: ``BATCH_MODELS``) at each of ``BATCH_SIZES``."""
    models = models or (QUICK_BATCH_MODELS if quick else BATCH_MODELS)
    examples = QUICK_EXAMPLES_PER_RUN if quick else EXAMPLES_PER_RUN
    rows = [
        measure.logged(
            run_pair("flaxmnist", model, steps_for(batch, examples), repeats, batch=batch)
        )
        for model in models
        for batch in BATCH_SIZES
    ]
    return {
        "machine": machine_name(),
        "examples_per_run": examples,
        "repeats": repeats,
        "rows": rows,
    }


def tiling(quick: bool) -> dict:
    """One epoch of ``TILE_MODEL`` over the training set tiled by each factor of ``TILES``."""
    batch = recipes.BENCHMARK_MODELS[TILE_MODEL]
    rows = []
    for tile in QUICK_TILES if quick else TILES:
        steps = tile * recipes.TRAIN_EXAMPLES // batch  # one whole epoch of the tiled set
        rows.append(measure.logged(run_pair("flaxmnist", TILE_MODEL, steps, 1, tile=tile)))
    return {"machine": machine_name(), "model": TILE_MODEL, "batch": batch, "rows": rows}


def epoch_ratios(rows: list[dict]) -> list[float | None]:
    """Each row's epoch time over the first (1×) row's: linear scaling gives the tile factors."""
    if "error" in rows[0]:
        return [None] * len(rows)
    base = rows[0]["timed_s"]
    return [None if "error" in row else row["timed_s"] / base for row in rows]


def batch_markdown(section: dict) -> str:
    """The throughput-vs-batch table."""
    lines = [
        "### Throughput vs batch size (flaxmnist, device-resident path)",
        "",
        f"{section['machine']}; about {section['examples_per_run']:,} examples per timed run, "
        f"median of {section['repeats']}.",
        "",
        "| model | batch | examples/s | step ms | GFLOP/s | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for row in section["rows"]:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['batch']} | failed | | | |")
            continue
        lines.append(
            f"| {row['model']} | {row['batch']} | {row['examples_per_s']:,.0f} | "
            f"{row['step_ms']:.1f} | {measure.gflops(row['flops_per_step'], row['step_ms']):.1f} | "
            f"{row['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def tiling_markdown(section: dict) -> str:
    """The epoch-time-vs-training-set-size table."""
    lines = [
        f"### Epoch time vs training-set size ({section['model']}, batch {section['batch']}, "
        "device-resident path)",
        "",
        f"{section['machine']}; one timed epoch after one compiling epoch.",
        "",
        "| training set | images | s/epoch | ratio to 1x | s per 60,000 images | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for row, ratio in zip(section["rows"], epoch_ratios(section["rows"]), strict=True):
        size = f"| {row['tile']}x | {row['tile'] * recipes.TRAIN_EXAMPLES:,} |"
        if "error" in row:
            lines.append(f"{size} failed | | | |")
            continue
        lines.append(
            f"{size} {row['timed_s']:.1f} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} | {row['timed_s'] / row['tile']:.1f} | "
            f"{row['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    """The markdown of this module's sections that have results ("" when none has)."""
    return report.sections_markdown(
        results, {"batch_scaling": batch_markdown, "tiling": tiling_markdown}
    )


def chart(section: dict, path: Path) -> None:
    """Examples/s against batch size (log2 axis), one line per model."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.subplots()
    rows = [row for row in section["rows"] if "error" not in row]
    for model in dict.fromkeys(row["model"] for row in rows):
        points = [(row["batch"], row["examples_per_s"]) for row in rows if row["model"] == model]
        ax.plot(*zip(*points, strict=True), marker="o", label=model)
    ax.set_xscale("log", base=2)
    ax.set_xticks(BATCH_SIZES, [str(batch) for batch in BATCH_SIZES])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("batch size")
    ax.set_ylabel("examples/s (higher is better)")
    ax.set_title(f"flaxmnist training throughput on {section['machine']}")
    ax.legend()
    figure.savefig(path, dpi=110)
