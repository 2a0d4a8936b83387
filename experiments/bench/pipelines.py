"""The ``pipelines`` section: flaxmnist's three input pipelines side by side, fresh processes.

The CNN and recipe of Flax's MNIST example (SGD lr 0.1, momentum 0.9, batch 128, all 60,000
training images): each run is a fresh ``pipeline_worker.py`` process that builds its feeder
(``device``, ``tfds`` or ``grain``, the tfds dataset prepared first, both its formats) and trains
``--epochs`` epochs; the runs take turns (``--repeats`` of each, the order rotating), and the
table gives the median of every epoch after the first (compiled, caches filled), peak RSS, the
test accuracy and each pipeline's ratios to ``device``. The table also goes into
``docs/data.md``, between its ``pipelines`` markers (:func:`write_data_doc_table`).
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import measure

from flaxmnist.cpu import cpu_model
from flaxmnist.testing import write_between_markers

PIPELINES = ("device", "tfds", "grain")
PIPELINE_BATCH = 128  # the Flax MNIST example's recipe
PIPELINE_WORKER = Path(__file__).resolve().with_name("pipeline_worker.py")
DATA_DOC = Path(__file__).resolve().parents[2] / "docs" / "data.md"
DOC_MARKERS = "pipelines"
DOC_WRITER = "experiments/bench/benchmark.py"  # the command that runs this section
SUMMARY_KEYS = ("setup_s", "eval_s", "peak_rss_mb", "test_accuracy")


def pipeline_runs(repeats: int, epochs: int) -> list[dict]:
    """``repeats`` runs of each pipeline, taking turns (device, tfds, grain; tfds, grain, ...).

    Args:
      repeats: runs per pipeline.
      epochs: epochs per run.

    Returns:
      Every run's worker result (or ``{"pipeline", "error"}``), in the order they ran.
    """
    from flaxmnist.data import datasets, tfds_prepare

    # What the tfds and grain runs read, in both formats: the runs time training, not preparing.
    tfds_prepare.prepare_idx("mnist", datasets.idx_folder("mnist"))
    runs = []
    for repeat in range(repeats):
        turn = repeat % len(PIPELINES)
        for pipeline in PIPELINES[turn:] + PIPELINES[:turn]:
            command = [sys.executable, str(PIPELINE_WORKER), f"--pipeline={pipeline}"]
            raw = measure.run_worker([*command, f"--epochs={epochs}"])
            runs.append(measure.logged({"pipeline": pipeline, **raw}))
    return runs


def pipelines_summary(runs: list[dict]) -> dict:
    """Medians per pipeline over the runs, and each pipeline's ratios to ``device``.

    Args:
      runs: the results of :func:`pipeline_runs`.

    Returns:
      ``{pipeline: {epoch_s, first_epoch_s, setup_s, eval_s, peak_rss_mb, test_accuracy, runs,
      epoch_ratio, rss_ratio}}``; the ratios (over ``device``'s) only when ``device`` ran.
    """
    summary = {}
    for pipeline in PIPELINES:
        ok = [r for r in runs if r["pipeline"] == pipeline and "error" not in r]
        if not ok:
            continue
        steady = [s for r in ok for s in (r["epoch_s"][1:] or r["epoch_s"])]
        summary[pipeline] = {
            "epoch_s": statistics.median(steady),
            "first_epoch_s": statistics.median(r["epoch_s"][0] for r in ok),
            **{key: statistics.median(r[key] for r in ok) for key in SUMMARY_KEYS},
            "runs": len(ok),
        }
    if "device" in summary:
        device = summary["device"]
        for row in summary.values():
            row["epoch_ratio"] = row["epoch_s"] / device["epoch_s"]
            row["rss_ratio"] = row["peak_rss_mb"] / device["peak_rss_mb"]
    return summary


def pipelines_section(repeats: int, epochs: int) -> dict:
    """The ``pipelines`` entry of the results: machine, every run, and the summary."""
    runs = pipeline_runs(repeats, epochs)
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "repeats": repeats, "epochs": epochs}
    return {"pipelines": {"machine": machine, "runs": runs, "summary": pipelines_summary(runs)}}


def pipeline_row(pipeline: str, row: dict) -> str:
    """One pipeline's row of the table."""
    epoch_ratio, rss_ratio = (
        (f"{row['epoch_ratio']:.2f}x", f"{row['rss_ratio']:.2f}x")
        if "epoch_ratio" in row
        else ("-", "-")
    )
    return (
        f"| {pipeline} | {row['epoch_s']:.1f} | {epoch_ratio} | {row['first_epoch_s']:.1f} | "
        f"{row['setup_s']:.1f} | {row['eval_s']:.2f} | {row['peak_rss_mb']:.0f} | {rss_ratio} | "
        f"{row['test_accuracy']:.2%} |"
    )


def pipelines_table(section: dict) -> str:
    """The ``pipelines`` section's caption and table (markdown)."""
    machine, summary = section["machine"], section["summary"]
    lines = [
        f"{machine['cpu']}, {machine['cores']} cores; the Flax MNIST example's CNN, SGD lr 0.1 "
        f"momentum 0.9, batch {PIPELINE_BATCH}, 468 steps per epoch; {machine['repeats']} runs "
        f"of {machine['epochs']} epochs per pipeline, taking turns, each in a fresh process; "
        "medians (s/epoch: the epochs after the first).",
        "",
        "| pipeline | s/epoch | vs device | first epoch s | feeder set-up s | test eval s "
        "| peak RSS MB | vs device | test accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [pipeline_row(name, summary[name]) for name in PIPELINES if name in summary]
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    """The ``pipelines`` section as markdown (empty when it has not run)."""
    if "pipelines" not in results:
        return ""
    heading = "### Input pipelines: device-resident, tfds (tf.data) and grain (no TensorFlow)"
    return f"{heading}\n\n{pipelines_table(results['pipelines'])}"


def write_data_doc_table(results: dict, doc: Path = DATA_DOC) -> None:
    """Puts the ``pipelines`` section's table between ``doc``'s ``pipelines`` markers.

    Args:
      results: the benchmark's results, with a ``pipelines`` section.
      doc: the markdown file holding the markers (``docs/data.md``; one without them gets them
        at its end).
    """
    table = pipelines_table(results["pipelines"])
    write_between_markers(doc, DOC_MARKERS, table, DOC_WRITER)
