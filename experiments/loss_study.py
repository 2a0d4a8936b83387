r"""Trains one preset once per loss and compares test accuracy, NLL and calibration.

    python experiments/loss_study.py --preset=cnn_simple --epochs=2
    python experiments/loss_study.py --losses=cross_entropy --losses=focal:gamma=1.0 \
        --seeds=0 --seeds=1 --seeds=2

A loss is ``NAME`` or ``NAME:OPTIONS`` (``OPTIONS`` as in ``--config.loss_options``); ``--losses``,
``--seeds`` and ``--set`` are repeated, one value each. The losses of
``experiments/custom_losses.py`` are available. Each (loss, seed) trains in a fresh
``python -m flaxmnist.train`` process in ``RUNS/<preset>-<epochs>ep/<loss>-seed<seed>``; a run that
already has ``metrics.json`` is reused, so an interrupted study picks up where it stopped (``--set``
overrides are not part of the folder name: use another ``--runs`` when changing them).

Every run's test predictions (the checkpoint behind its ``metrics.json``) give the test accuracy,
the test NLL (cross-entropy of the softmax, whatever the training loss) and the expected
calibration error over 15 confidence bins. Writes ``OUT/loss_comparison.{md,json,png}``
(default ``experiments/results``) and prints the table. Bad input (an unknown preset, loss or loss
option) ends in one line on stderr and exit status 2 before any training.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags, logging
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from flaxmnist import cli, configs, console, errors, losses, plugins
from flaxmnist.errors import ConfigError
from flaxmnist.evaluation import figures, metrics
from flaxmnist.evaluation.evaluator import predict_test
from flaxmnist.storage import files

EXPERIMENTS_DIR = Path(__file__).resolve().parent
RESULTS_DIR = EXPERIMENTS_DIR / "results"
CUSTOM_LOSSES = EXPERIMENTS_DIR / "custom_losses.py"
DEFAULT_LOSSES = ("cross_entropy", "label_smoothing", "focal", "hinge", "scheduled_smoothing")
NUM_BINS = 15
MIN_PLOTTED_BIN = 20  # predictions; emptier bins are too noisy to plot (the ECE counts them all)
SCORES = ("test_accuracy", "test_nll", "ece")  # per run; averaged over seeds per loss


def parse_loss(spec: str) -> tuple[str, str]:
    """``"focal:gamma=1.0"`` → ``("focal", "gamma=1.0")``; ``"hinge"`` → ``("hinge", "")``."""
    name, _, options = spec.partition(":")
    return name, options


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the command's flags in ``flag_values`` (``flags.FLAGS`` when run as a script)."""
    flags.DEFINE_string("preset", "cnn_simple", "Config preset name.", flag_values=flag_values)
    flags.DEFINE_integer("epochs", 2, "Training epochs of every run.", flag_values=flag_values)
    flags.DEFINE_multi_integer(
        "seeds", [0], "A seed to train (repeat for several).", flag_values=flag_values
    )
    flags.DEFINE_string(
        "runs", "runs/losses", "Root folder of the run directories.", flag_values=flag_values
    )
    flags.DEFINE_multi_string(
        "losses",
        list(DEFAULT_LOSSES),
        "NAME[:OPTIONS]: a loss to train (repeat).",
        flag_values=flag_values,
    )
    flags.DEFINE_multi_string(
        "set", [], "FIELD=VALUE: a config override (repeat).", flag_values=flag_values
    )
    flags.DEFINE_string("out", str(RESULTS_DIR), "Folder for the results.", flag_values=flag_values)


def check_losses(specs: Sequence[str]) -> None:
    """Resolves every loss and its options now, before any training starts.

    Raises:
      ConfigError: for an unknown loss or an option it rejects.
    """
    plugins.import_modules(str(CUSTOM_LOSSES))
    for spec in specs:
        losses.get_loss(*parse_loss(spec))


def train_run(
    preset: str, spec: str, seed: int, epochs: int, runs: Path, overrides: Sequence[str]
) -> Path:
    """Trains ``preset`` with loss ``spec`` in a subprocess unless the run is finished already.

    Args:
      preset: config preset name.
      spec: ``NAME`` or ``NAME:OPTIONS``.
      seed: the run's seed.
      epochs: number of training epochs.
      runs: root folder of the comparison's run directories.
      overrides: extra ``FIELD=VALUE`` config overrides.

    Returns:
      The run directory.
    """
    name, options = parse_loss(spec)
    workdir = runs / f"{preset}-{epochs}ep" / f"{spec}-seed{seed}"
    if not (workdir / "metrics.json").exists():
        command = [
            sys.executable,
            "-m",
            "flaxmnist.train",
            f"--config={preset}",
            f"--config.num_epochs={epochs}",
            f"--config.seed={seed}",
            f"--config.import_modules={CUSTOM_LOSSES}",
            f"--config.loss={name}",
            f"--config.loss_options={options}",
            *(f"--config.{item}" for item in overrides),
            f"--workdir={workdir}",
        ]
        subprocess.run(command, check=True)
    return workdir


def score_run(workdir: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Scores a run's test predictions.

    Returns:
      The run's scores (accuracy, NLL, ECE, training time), its test probabilities [N, K] and
      the test labels [N].
    """
    _, data, logits, summary, _ = predict_test(workdir)
    trained = json.loads((workdir / "metrics.json").read_text())
    scores = {
        "workdir": str(workdir),
        "checkpoint_step": summary["checkpoint_step"],
        "test_accuracy": summary["accuracy"],
        "test_nll": summary["loss"],
        "ece": summary["expected_calibration_error"],
        "train_time_s": trained["train_time_s"],
        "device_kind": trained["device_kind"],
    }
    return scores, metrics.softmax(logits), data.test.labels


def summarize(
    spec: str, seeds: Sequence[int], scored: list[tuple[dict, np.ndarray, np.ndarray]]
) -> dict[str, Any]:
    """One loss's row: mean and std over seeds, and reliability bins pooled over seeds."""
    runs = [{"seed": seed, **scores} for seed, (scores, _, _) in zip(seeds, scored, strict=True)]
    probabilities = np.concatenate([p for _, p, _ in scored])
    labels = np.concatenate([y for _, _, y in scored])
    confidence, accuracy, counts = metrics.calibration_bins(probabilities, labels, NUM_BINS)
    row: dict[str, Any] = {"loss": spec, "seeds": list(seeds)}
    for key in (*SCORES, "train_time_s"):
        values = [r[key] for r in runs]
        row[key] = statistics.mean(values)
        row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    row["reliability"] = {
        "confidence": confidence.tolist(),
        "accuracy": accuracy.tolist(),
        "count": counts.tolist(),
    }
    row["runs"] = runs
    return row


def _percent(value: float) -> str:
    return f"{100 * value:.2f} %"


def _plain(value: float) -> str:
    return f"{value:.4f}"


def _cell(row: dict[str, Any], key: str, fmt: Callable[[float], str]) -> str:
    spread = f" ± {fmt(row[f'{key}_std'])}" if len(row["seeds"]) > 1 else ""
    return fmt(row[key]) + spread


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The comparison table in markdown, one row per loss."""
    lines = [
        f"| loss | test accuracy | test NLL | ECE ({NUM_BINS} bins) | seeds | train time |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| `{r['loss']}` | {_cell(r, 'test_accuracy', _percent)} | {_cell(r, 'test_nll', _plain)}"
        f" | {_cell(r, 'ece', _percent)} | {len(r['seeds'])} | {r['train_time_s']:.0f} s |"
        for r in rows
    ]
    return "\n".join(lines)


def _bars(ax: Axes, values: Sequence[float], label: str, best: int) -> None:
    colors = ["0.65"] * len(values)
    colors[best] = "tab:green"
    bars = ax.barh(np.arange(len(values)), values, color=colors)
    ax.bar_label(bars, labels=[f"{v:.2%}" for v in values], padding=3, fontsize=8)
    ax.set_title(f"{label} (best in green)")
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.grid(axis="x", alpha=0.3)


def comparison_figure(rows: list[dict[str, Any]], title: str) -> Figure:
    """Test accuracy and ECE per loss (bars) and every loss's calibration gap per confidence bin."""
    names = [r["loss"] for r in rows]
    accuracy = [r["test_accuracy"] for r in rows]
    ece = [r["ece"] for r in rows]
    fig = Figure(figsize=(17, max(4.0, 0.5 * len(rows) + 2.5)), layout="constrained")
    acc_ax, ece_ax, gap_ax = fig.subplots(1, 3, width_ratios=[1, 1, 1.3])
    ece_ax.sharey(acc_ax)
    _bars(acc_ax, accuracy, "Test accuracy", int(np.argmax(accuracy)))
    error = 1.0 - min(accuracy)
    left = max(0.0, 1.0 - 2 * max(error, 0.01))  # zoom in: twice the worst error rate
    acc_ax.set_xlim(left, 1.0 + 0.2 * (1.0 - left))
    acc_ax.set_yticks(np.arange(len(rows)), names)
    acc_ax.invert_yaxis()  # first loss on top
    ece_ax.tick_params(labelleft=False)
    _bars(ece_ax, ece, f"ECE, {NUM_BINS} bins", int(np.argmin(ece)))
    ece_ax.set_xlim(0, 1.3 * max(max(ece), 1e-3))
    for row in rows:
        bins = {key: np.asarray(values) for key, values in row["reliability"].items()}
        used = bins["count"] >= MIN_PLOTTED_BIN
        gap = bins["accuracy"][used] - bins["confidence"][used]
        gap_ax.plot(bins["confidence"][used], gap, marker="o", ms=4, label=row["loss"])
    gap_ax.axhline(0.0, color="0.3", ls="--", lw=1, label="perfectly calibrated")
    gap_ax.set_xlabel("mean confidence of the bin")
    gap_ax.set_ylabel("accuracy - confidence (> 0: under-confident)")
    gap_ax.set_title(f"Calibration gap per confidence bin (bins of >= {MIN_PLOTTED_BIN} images)")
    gap_ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    gap_ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    gap_ax.grid(alpha=0.3)
    gap_ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=12)
    return fig


def check_preset(preset: str) -> None:
    """Raises ConfigError unless ``preset`` names a shipped config preset."""
    if preset not in configs.preset_names():
        raise ConfigError(
            f"--preset: unknown preset {preset!r} (choose from {', '.join(configs.preset_names())})"
        )


def study_losses(flag_values: flags.FlagValues) -> list[dict[str, Any]]:
    """Trains (or reuses) and scores every (loss, seed) run the parsed ``flag_values`` name.

    Returns:
      One row per loss, as :func:`summarize` makes it.
    """
    rows = []
    for spec in flag_values.losses:
        workdirs = [
            train_run(
                flag_values.preset,
                spec,
                seed,
                flag_values.epochs,
                Path(flag_values.runs),
                flag_values.set,
            )
            for seed in flag_values.seeds
        ]
        rows.append(summarize(spec, flag_values.seeds, [score_run(w) for w in workdirs]))
    return rows


def write_results(rows: list[dict[str, Any]], flag_values: flags.FlagValues) -> None:
    """Writes ``loss_comparison.{md,json,png}`` into the ``--out`` folder."""
    out, preset, epochs = Path(flag_values.out), flag_values.preset, flag_values.epochs
    devices = sorted({run["device_kind"] for row in rows for run in row["runs"]})
    epochs_text = f"{epochs} epoch{'' if epochs == 1 else 's'}"
    title = f"{preset}, {epochs_text}, seeds {', '.join(map(str, flag_values.seeds))}"
    header = (
        f"Loss comparison: {title}; measured on {', '.join(devices)} "
        f"({len(os.sched_getaffinity(0))} cores). NLL and ECE use the softmax of the logits "
        "for every loss, hinge included.\n\n"
    )
    out.mkdir(parents=True, exist_ok=True)
    files.write_text_atomic(out / "loss_comparison.md", header + markdown_table(rows) + "\n")
    record = {"preset": preset, "epochs": epochs, "overrides": flag_values.set, "rows": rows}
    files.write_json_atomic(out / "loss_comparison.json", record)
    figures.save_figure(comparison_figure(rows, title), out / "loss_comparison.png")


def loss_study(flag_values: flags.FlagValues) -> None:
    """Checks the parsed ``flag_values``, runs the study, writes the results, prints the table."""
    with errors.reported(Path(flag_values.out)):
        check_preset(flag_values.preset)
        check_losses(flag_values.losses)
        try:
            rows = study_losses(flag_values)
        except subprocess.CalledProcessError as error:
            errors.exit_with_error(
                f"a training run failed (exit {error.returncode}): {' '.join(error.cmd[3:])}",
                errors.EXIT_INTERNAL_ERROR,
            )
        write_results(rows, flag_values)
    console.say(markdown_table(rows))


def main(argv: list[str]) -> None:
    """Runs the study the command-line flags describe."""
    del argv  # cli.parse_flags refuses positional arguments
    logging.set_verbosity(logging.WARNING)
    loss_study(flags.FLAGS)


if __name__ == "__main__":
    errors.exit_on_signals()
    define_flags(flags.FLAGS)
    cli.run(main)
