"""The outer training loop: data, model, epochs, validation, test, and the run directory's files.

Everything with side effects lives here (progress bars, files); the numerical work is in the pure,
jitted functions of :mod:`flaxmnist.steps`. The run directory receives:

* ``config.json`` — the resolved config;
* ``history.json`` / ``history.csv`` — one record per epoch (train / val loss and accuracy, time);
* ``steps.csv`` — the loss and accuracy of every training step (the custom-loop loss curve);
* ``metrics.json`` — test loss and accuracy, example count, parameter count, timings, devices.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from flaxmnist import datasets, input_pipeline, losses, models, optimizers, plugins, steps
from flaxmnist.errors import ConfigError, FlaxmnistError
from flaxmnist.files import write_csv_atomic, write_json_atomic
from flaxmnist.train_state import TrainState, create_train_state

NORMALIZATIONS = ("unit", "standardize")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Rejects values no run can use, with a message naming the field."""
    checks = [
        (config.batch_size > 0, f"batch_size must be positive, got {config.batch_size}"),
        (
            config.eval_batch_size > 0,
            f"eval_batch_size must be positive, got {config.eval_batch_size}",
        ),
        (config.num_epochs >= 0, f"num_epochs must be >= 0, got {config.num_epochs}"),
        (config.learning_rate > 0, f"learning_rate must be positive, got {config.learning_rate}"),
        (
            0 <= config.validation_fraction < 1,
            f"validation_fraction must be in [0, 1), got {config.validation_fraction}",
        ),
        (
            config.chunks_per_epoch > 0,
            f"chunks_per_epoch must be positive, got {config.chunks_per_epoch}",
        ),
        (
            config.input_pipeline in input_pipeline.PIPELINES,
            f"unknown input_pipeline {config.input_pipeline!r}; valid: "
            f"{', '.join(input_pipeline.PIPELINES)}",
        ),
        (
            config.normalization in NORMALIZATIONS,
            f"unknown normalization {config.normalization!r}; valid: {', '.join(NORMALIZATIONS)}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def summarize(sums: dict[str, Any]) -> tuple[float, float]:
    """(mean loss, accuracy) from metric sums (arrays of per-step sums are added up first)."""
    sums = {key: np.sum(value) for key, value in sums.items()}
    count = max(float(sums["count"]), 1.0)
    return float(sums["loss"]) / count, float(sums["correct"]) / count


class DeviceRunner:
    """The fast path: data lives on the device; an epoch is a few ``lax.scan`` calls."""

    def __init__(self, fns: steps.StepFunctions, config, train, eval_splits, data_rng):
        self.fns, self.config, self.data_rng = fns, config, data_rng
        self.num_train = len(train)
        self.images, self.labels = jax.device_put((train.images, train.labels))
        self.eval_batches = {
            name: jax.device_put(input_pipeline.pad_to_batches(split, config.eval_batch_size))
            for name, split in eval_splits.items()
        }

    def train_epoch(self, state, epoch: int, rng, progress) -> tuple[TrainState, dict]:
        """Runs one epoch; returns the state and per-step metric sums as numpy arrays."""
        indices = input_pipeline.epoch_batch_indices(
            self.data_rng, epoch, num_examples=self.num_train, batch_size=self.config.batch_size
        )
        chunk = math.ceil(len(indices) / self.config.chunks_per_epoch)
        per_step = []
        for start in range(0, len(indices), chunk):
            state, metrics = self.fns.train_on_indices(
                state, self.images, self.labels, indices[start : start + chunk], rng
            )
            per_step.append(jax.device_get(metrics))
            progress.update(len(per_step[-1]["count"]))
            progress.set_postfix(loss=f"{summarize(per_step[-1])[0]:.4f}")
        return state, {k: np.concatenate([m[k] for m in per_step]) for k in per_step[0]}

    def evaluate(self, state, split_name: str) -> dict:
        """Metric sums over a whole split, with one host sync."""
        return jax.device_get(self.fns.evaluate_batches(state, self.eval_batches[split_name]))


class StreamingRunner:
    """The tf.data path: batches stream from a seeded, prefetching tf.data pipeline."""

    sync_every = 50  # steps between progress-bar updates (each one waits for the device)

    def __init__(self, fns: steps.StepFunctions, config, train, eval_splits, data_rng):
        del data_rng  # tf.data shuffles with seeds derived from config.seed
        self.fns, self.config, self.train = fns, config, train
        self.eval_splits = eval_splits

    def train_epoch(self, state, epoch: int, rng, progress) -> tuple[TrainState, dict]:
        """Runs one epoch; returns the state and per-step metric sums as numpy arrays."""
        dataset = input_pipeline.tf_train_dataset(
            self.train, self.config.batch_size, seed=self.config.seed, epoch=epoch
        )
        per_step = []
        for batch in dataset.as_numpy_iterator():
            state, metrics = self.fns.train_step(state, batch, rng)
            per_step.append(metrics)
            if len(per_step) % self.sync_every == 0:
                progress.update(self.sync_every)
                progress.set_postfix(loss=f"{summarize(jax.device_get(metrics))[0]:.4f}")
        progress.update(len(per_step) % self.sync_every)
        stacked = jax.device_get(jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *per_step))
        return state, stacked

    def evaluate(self, state, split_name: str) -> dict:
        """Metric sums over a whole split (padded, masked last batch)."""
        totals = None
        split = self.eval_splits[split_name]
        for batch in input_pipeline.tf_eval_dataset(split, self.config.eval_batch_size):
            metrics = self.fns.eval_step(state, {k: v.numpy() for k, v in batch.items()})
            totals = metrics if totals is None else jax.tree_util.tree_map(jnp.add, totals, metrics)
        return jax.device_get(totals)


RUNNERS = {"device": DeviceRunner, "tfds": StreamingRunner}


@dataclasses.dataclass
class Experiment:
    """Everything a run needs, resolved from the config before any training starts."""

    config: ml_collections.ConfigDict
    dataset: datasets.Dataset
    train: datasets.ArraySplit
    validation: datasets.ArraySplit | None
    model: Any
    state: TrainState
    fns: steps.StepFunctions
    schedule: Any
    dropout_rng: jax.Array
    data_rng: jax.Array

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch (incomplete last batches are skipped)."""
        return len(self.train) // self.config.batch_size


def make_preprocess(config: ml_collections.ConfigDict, dataset: datasets.Dataset):
    """The pixel normalisation the config asks for, as a pure function of uint8 images."""
    if config.normalization == "standardize":
        mean, std = dataset.pixel_stats()
        return functools.partial(steps.normalize_images, mean=mean, std=std)
    return steps.normalize_images


def build_experiment(config: ml_collections.ConfigDict) -> Experiment:
    """Resolves every name, loads the data and initialises the state (no training)."""
    validate_config(config)
    plugins.import_modules(config.import_modules)
    loss_fn = losses.get_loss(config.loss, config.loss_options)
    dataset = datasets.load_dataset(config.dataset, config.data_dir or None)
    model = models.create_model(config, dataset.num_classes)
    train, validation = datasets.split_validation(
        dataset.train, config.validation_fraction, config.seed
    )
    steps_per_epoch = len(train) // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"batch_size {config.batch_size} is larger than the {len(train)} training examples"
        )
    schedule = optimizers.create_schedule(config, steps_per_epoch)
    tx = optimizers.create_optimizer(config, steps_per_epoch)
    init_rng, dropout_rng, data_rng = jax.random.split(jax.random.key(config.seed), 3)
    state = create_train_state(model, dataset.image_shape, tx, init_rng)
    fns = steps.make_step_functions(loss_fn, make_preprocess(config, dataset))
    return Experiment(
        config, dataset, train, validation, model, state, fns, schedule, dropout_rng, data_rng
    )


def prepare_workdir(workdir: Path) -> None:
    """Creates the run directory; refuses one that already holds a run."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise FlaxmnistError(f"cannot write to workdir {workdir}: {e.strerror}") from None
    if (workdir / "config.json").exists():
        raise FlaxmnistError(
            f"workdir {workdir} already holds a run; pass a new --workdir to start another"
        )


def device_summary() -> dict[str, Any]:
    """Backend, device kind and counts, for the record."""
    devices = jax.devices()
    return {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
    }


def epoch_record(epoch, train_sums, val_sums, seconds, learning_rate) -> dict[str, Any]:
    """One history entry."""
    train_loss, train_accuracy = summarize(train_sums)
    record = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy}
    if val_sums is not None:
        record["val_loss"], record["val_accuracy"] = summarize(val_sums)
    record["epoch_time_s"] = seconds
    record["learning_rate"] = learning_rate
    return record


def step_rows(per_step: dict, first_step: int, epoch: int) -> list[dict[str, Any]]:
    """Rows of the per-step log for one epoch's stacked metric sums."""
    losses_ = per_step["loss"] / per_step["count"]
    accuracies = per_step["correct"] / per_step["count"]
    return [
        {
            "step": first_step + i + 1,
            "epoch": epoch,
            "loss": float(loss),
            "accuracy": float(accuracy),
        }
        for i, (loss, accuracy) in enumerate(zip(losses_, accuracies, strict=True))
    ]


def write_history(workdir: Path, history: list[dict], step_log: list[dict]) -> None:
    """Writes history.json, history.csv and steps.csv (atomically)."""
    write_json_atomic(workdir / "history.json", history)
    write_csv_atomic(workdir / "history.csv", history)
    write_csv_atomic(workdir / "steps.csv", step_log)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains per ``config``, evaluates on the test split and writes the run directory.

    Returns the contents of ``metrics.json``.
    """
    start_time = time.perf_counter()
    workdir = Path(workdir)
    exp = build_experiment(config)
    prepare_workdir(workdir)
    write_json_atomic(workdir / "config.json", config.to_dict())

    eval_splits = {"test": exp.dataset.test}
    if exp.validation is not None:
        eval_splits["validation"] = exp.validation
    runner = RUNNERS[config.input_pipeline](exp.fns, config, exp.train, eval_splits, exp.data_rng)
    state, history, step_log = exp.state, [], []
    write_history(workdir, history, step_log)
    for epoch in range(1, config.num_epochs + 1):
        epoch_start = time.perf_counter()
        first_step = int(state.step)
        with tqdm.tqdm(
            total=exp.steps_per_epoch,
            desc=f"epoch {epoch}/{config.num_epochs}",
            unit="step",
            dynamic_ncols=True,
        ) as progress:
            state, per_step = runner.train_epoch(state, epoch, exp.dropout_rng, progress)
            val_sums = runner.evaluate(state, "validation") if exp.validation else None
        record = epoch_record(
            epoch,
            per_step,
            val_sums,
            time.perf_counter() - epoch_start,
            float(exp.schedule(int(state.step))),
        )
        history.append(record)
        step_log.extend(step_rows(per_step, first_step, epoch))
        tqdm.tqdm.write(format_record(record))
        write_history(workdir, history, step_log)

    test_loss, test_accuracy = summarize(runner.evaluate(state, "test"))
    metrics = {
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        "num_test_examples": len(exp.dataset.test),
        "num_params": models.count_params(state.params),
        "model": config.model,
        "dataset": config.dataset,
        "epochs": config.num_epochs,
        "steps": int(state.step),
        "train_time_s": sum(r["epoch_time_s"] for r in history),
        "total_time_s": time.perf_counter() - start_time,
        **device_summary(),
    }
    if history:
        metrics["final_train_accuracy"] = history[-1]["train_accuracy"]
        metrics["final_val_accuracy"] = history[-1].get("val_accuracy")
        epoch_times = [r["epoch_time_s"] for r in history]
        metrics["median_epoch_time_s"] = float(np.median(epoch_times))
        metrics["examples_per_s"] = (
            exp.steps_per_epoch * config.batch_size / float(np.median(epoch_times))
        )
    write_json_atomic(workdir / "metrics.json", metrics)
    return metrics


def format_record(record: dict[str, Any]) -> str:
    """A one-line summary of an epoch for the terminal."""
    parts = [
        f"epoch {record['epoch']}",
        f"loss {record['train_loss']:.4f}",
        f"acc {record['train_accuracy']:.4f}",
    ]
    if "val_loss" in record:
        parts += [f"val_loss {record['val_loss']:.4f}", f"val_acc {record['val_accuracy']:.4f}"]
    parts.append(f"{record['epoch_time_s']:.1f}s")
    return " | ".join(parts)
