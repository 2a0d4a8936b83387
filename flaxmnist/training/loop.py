"""The outer training loop: data, model, epochs, validation, test, and the run directory's files.

Everything with side effects lives here (progress bars, files); the numerical work is in the pure,
jitted functions of :mod:`flaxmnist.training.step_functions`. The run directory gets:

* ``config.json`` — the resolved config;
* ``history.json`` / ``history.csv`` — one record per epoch (train / val loss and accuracy, time);
* ``steps.csv`` — the loss and accuracy of every training step (the custom-loop loss curve);
* ``metrics.json`` — test loss and accuracy, example count, parameter count, timings, devices;
* ``checkpoints/`` — Orbax checkpoints (latest N and best), from which a rerun resumes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm

from flaxmnist import losses, models, optimizers, plugins
from flaxmnist.config_validation import validate_config
from flaxmnist.data import augment, datasets
from flaxmnist.errors import ConfigError, FlaxmnistError
from flaxmnist.storage import checkpointing, run_directory, scalar_log
from flaxmnist.training import early_stopping, feeders, parallel, step_functions, warm_start
from flaxmnist.training.train_state import TrainState, create_train_state

IMPORTED_AT = time.perf_counter()


def process_age_s() -> float:
    """Seconds since this process started (from /proc; elsewhere since this module's import)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - IMPORTED_AT


def say(message: str) -> None:
    """Prints ``message`` above the progress bar, from the primary process only."""
    if parallel.is_primary():
        tqdm.tqdm.write(message)


def summarize(sums: dict[str, Any]) -> tuple[float, float]:
    """(mean loss, accuracy) from metric sums (arrays of per-step sums are added up first)."""
    sums = {key: np.sum(value) for key, value in sums.items()}
    count = max(float(sums["count"]), 1.0)
    return float(sums["loss"]) / count, float(sums["correct"]) / count


@dataclasses.dataclass
class Experiment:
    """Everything a run needs, resolved from the config before any training starts."""

    config: ml_collections.ConfigDict
    dataset: datasets.Dataset
    train: datasets.ArraySplit
    validation: datasets.ArraySplit | None
    model: Any
    state: TrainState
    fns: step_functions.StepFunctions
    schedule: Any
    dropout_rng: jax.Array
    data_rng: jax.Array
    pixel_mean_std: tuple[float, float]
    mesh: jax.sharding.Mesh
    first_chunk_at_s: float | None = None  # process age when the first training chunk finished

    def data_info(self) -> dict[str, Any]:
        """What a model trained on this data needs at inference time."""
        return {
            "class_names": list(self.dataset.class_names),
            "image_shape": list(self.dataset.image_shape),
            "normalization": {"mean": self.pixel_mean_std[0], "std": self.pixel_mean_std[1]},
        }

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch (incomplete last batches are skipped)."""
        return len(self.train) // self.config.batch_size


def pixel_normalization(
    config: ml_collections.ConfigDict, dataset: datasets.Dataset
) -> tuple[float, float]:
    """(mean, std) subtracted and divided after scaling pixels to [0, 1]."""
    return dataset.pixel_stats() if config.normalization == "standardize" else (0.0, 1.0)


def make_augment(config: ml_collections.ConfigDict, mean: float, std: float):
    """The configured on-device augmentation (background = a black pixel), or None when off."""
    augment_config = augment.AugmentConfig.from_config(config)
    if not augment_config.enabled:
        return None
    return functools.partial(augment.augment_batch, cfg=augment_config, fill=(0.0 - mean) / std)


def build_experiment(
    config: ml_collections.ConfigDict, load_dataset: Callable[[], datasets.Dataset] | None = None
) -> Experiment:
    """Resolves every name, loads the data and initialises the state (no training).

    ``load_dataset`` returns the dataset ``config`` names (one already loading, from
    :func:`datasets.load_dataset_in_background`); by default it is loaded here.
    """
    validate_config(config)
    mesh = parallel.create_mesh(config.num_devices)
    parallel.check_divisible(
        mesh, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size
    )
    plugins.import_modules(config.import_modules)
    loss_fn = losses.get_loss(config.loss, config.loss_options)
    if load_dataset is None:
        load_dataset = functools.partial(
            datasets.load_dataset, config.dataset, config.data_dir or None
        )
    dataset = load_dataset()
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
    state = create_train_state(model, dataset.image_shape, tx, init_rng, config.ema_decay)
    if config.init_from:
        state = warm_start.warm_start(state, config.init_from, dataset.class_names)
    state = parallel.put_replicated(state, mesh)
    mean, std = pixel_normalization(config, dataset)
    preprocess = functools.partial(step_functions.normalize_images, mean=mean, std=std)
    fns = step_functions.make_step_functions(
        loss_fn, preprocess, make_augment(config, mean, std), tta_shift=config.tta_shift
    )
    return Experiment(
        config,
        dataset,
        train,
        validation,
        model,
        state,
        fns,
        schedule,
        dropout_rng,
        data_rng,
        (mean, std),
        mesh,
    )


def device_summary(mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """Backend, device kind and counts, for the record."""
    return {
        "backend": jax.default_backend(),
        "device_kind": mesh.devices.flat[0].device_kind,
        "device_count": mesh.size,
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


@dataclasses.dataclass
class Progress:
    """Where a run stands: what a checkpoint's ``meta`` item records besides the state."""

    epoch: int = 0  # completed epochs
    steps_into_epoch: int = 0  # > 0 when interrupted part-way through epoch ``epoch + 1``
    partial: dict[str, list[float]] | None = None  # that epoch's per-step sums so far
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    stopper: early_stopping.EarlyStoppingState = dataclasses.field(
        default_factory=early_stopping.EarlyStoppingState
    )
    train_time_s: float = 0.0

    def to_meta(self, state: TrainState, exp: Experiment) -> dict[str, Any]:
        """The JSON ``meta`` item of a checkpoint (with what inference needs to know)."""
        return {
            **dataclasses.asdict(self),
            **exp.data_info(),
            "fingerprint": checkpointing.fingerprint(state),
            "model": exp.config.model,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Progress:
        """Inverse of :meth:`to_meta`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in meta.items() if k in fields}
        values["stopper"] = early_stopping.EarlyStoppingState(**values["stopper"])
        return cls(**values)

    @property
    def done(self) -> bool:
        """Whether early stopping ended the run."""
        return self.stopper.stopped


class TrainingInterruptedError(FlaxmnistError):
    """Training was stopped by SIGINT/SIGTERM after saving a checkpoint (exit 128 + signal)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class InterruptFlag:
    """Turns SIGINT/SIGTERM into a flag checked between chunks.

    The handler only sets the flag (it raises nothing, so no signal is lost in a callback that
    swallows exceptions) and puts the previous handlers back: a second signal does what a signal
    did before the loop (the CLI: stop at once, :func:`flaxmnist.errors.stop_now`).
    """

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> InterruptFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        self.restore()
        say(
            "stopping after the current step; saving a checkpoint "
            "(signal again to abort without saving)"
        )

    def restore(self) -> None:
        """Puts back the handlers that were there before."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __exit__(self, *exc_info) -> None:
        self.restore()


def check_finite(
    chunk: dict[str, np.ndarray],
    epoch: int,
    first_step: int,
    checkpoints: checkpointing.RunCheckpoints,
):
    """Raises a one-line error naming the epoch and step of the first non-finite loss."""
    bad = np.flatnonzero(~np.isfinite(chunk["loss"]))
    if bad.size:  # only now look at the checkpoints: this runs after every chunk
        raise FlaxmnistError(
            f"loss became {chunk['loss'][bad[0]]} at epoch {epoch}, "
            f"step {first_step + bad[0] + 1}; {last_good_message(checkpoints)} "
            "(try a lower learning_rate or --config.nan_policy=skip_step)"
        )


def monitored_field(config) -> str:
    """The history field early stopping and the best checkpoint follow."""
    monitor = config.early_stopping.monitor
    early_stopping.monitor_mode(monitor)
    if config.validation_fraction == 0 and monitor.startswith("val_"):
        return "train_" + monitor.removeprefix("val_")
    return monitor


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


def start_or_resume(
    run: run_directory.RunDirectory, checkpoints: checkpointing.RunCheckpoints, exp: Experiment
) -> tuple[TrainState, Progress, list[dict]]:
    """The state, progress and step log to start from: the latest checkpoint, or scratch."""
    config, state, progress = exp.config, exp.state, Progress()
    if run.has_run():
        if not config.resume:
            raise FlaxmnistError(
                f"workdir {run.path} already holds a run and resume is off; "
                "use a new --workdir (nothing was changed)"
            )
        run.check_resumable(config)
        restored = checkpoints.restore_latest(exp.state)
        if restored is not None:
            state, meta = restored
            progress = Progress.from_meta(meta)
            say(f"resuming {run.path} after epoch {progress.epoch} (step {int(state.step)})")
        elif (run.path / "metrics.json").exists():
            raise FlaxmnistError(
                f"workdir {run.path} holds a finished run without checkpoints; use a new --workdir"
            )
    step_log = run.read_step_log(int(state.step))  # a damaged log stops the run before any write
    parallel.sync("flaxmnist-run-directory-checked")  # every process looked before the write
    run.write_config(config)
    return state, progress, step_log


def should_save(config, epoch: int, improved: bool, stopping: bool) -> bool:
    """Whether to checkpoint at the end of ``epoch``."""
    every = config.checkpoint_every_epochs
    return every > 0 and (epoch % every == 0 or improved or stopping or epoch == config.num_epochs)


def last_good_message(checkpoints: checkpointing.RunCheckpoints) -> str:
    """Which checkpoint a failed run leaves behind, for its error message."""
    checkpoints.wait_until_finished()
    saved = checkpoints.steps()
    return f"the last good checkpoint (step {saved[-1]}) is kept" if saved else "no checkpoint"


def train_one_epoch(
    exp: Experiment,
    runner,
    state: TrainState,
    progress: Progress,
    epoch: int,
    interrupt: InterruptFlag,
    checkpoints: checkpointing.RunCheckpoints,
):
    """Trains ``epoch`` (or its rest, after an interruption); returns state and per-step sums.

    On SIGINT/SIGTERM it saves a mid-epoch checkpoint and raises :class:`TrainingInterruptedError`.
    """
    config = exp.config
    parts = [{k: np.asarray(v) for k, v in progress.partial.items()}] if progress.partial else []
    done = progress.steps_into_epoch
    with tqdm.tqdm(
        total=exp.steps_per_epoch,
        initial=done,
        unit="step",
        dynamic_ncols=True,
        desc=f"epoch {epoch}/{config.num_epochs}",
        disable=not parallel.is_primary(),
    ) as bar:
        for new_state, chunk in runner.train_chunks(state, epoch, exp.dropout_rng, done):
            state = new_state
            if config.nan_policy == "stop":
                check_finite(
                    chunk,
                    epoch,
                    int(state.step) - len(chunk["loss"]),
                    checkpoints,
                )
            parts.append(chunk)
            if exp.first_chunk_at_s is None:
                exp.first_chunk_at_s = process_age_s()
            done += len(chunk["loss"])
            bar.update(len(chunk["loss"]))
            bar.set_postfix(loss=f"{summarize(chunk)[0]:.4f}")
            if interrupt.signal is not None and done < exp.steps_per_epoch:
                partial = {k: np.concatenate([p[k] for p in parts]).tolist() for k in parts[0]}
                paused = dataclasses.replace(progress, steps_into_epoch=done, partial=partial)
                checkpoints.save(state, paused.to_meta(state, exp), best_order=-1)
                raise TrainingInterruptedError(
                    interrupted_message(epoch, int(state.step)), interrupt.signal
                )
    return state, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def interrupted_message(epoch: int, step: int) -> str:
    """What the user reads after Ctrl-C."""
    return (
        f"interrupted in epoch {epoch} at step {step}; checkpoint saved, "
        "rerun the same command to resume"
    )


@dataclasses.dataclass(frozen=True)
class RunOutputs:
    """Where a run's results go: its directory, checkpoints and TensorBoard log."""

    run: run_directory.RunDirectory
    checkpoints: checkpointing.RunCheckpoints
    scalars: scalar_log.ScalarLog


def train_epochs(
    exp: Experiment,
    runner,
    out: RunOutputs,
    state: TrainState,
    progress: Progress,
    step_log: list[dict],
) -> tuple[TrainState, Progress]:
    """The epoch loop: train, validate, record, checkpoint, stop early."""
    config = exp.config
    run, checkpoints, scalars = out.run, out.checkpoints, out.scalars
    monitor = monitored_field(config)
    es = config.early_stopping
    with InterruptFlag() as interrupt:
        for epoch in range(progress.epoch + 1, config.num_epochs + 1):
            if progress.done:
                break
            epoch_start, first_step = time.perf_counter(), int(state.step)
            first_step -= progress.steps_into_epoch
            state, per_step = train_one_epoch(
                exp, runner, state, progress, epoch, interrupt, checkpoints
            )
            val_sums = runner.evaluate(state, "validation") if exp.validation else None
            seconds = time.perf_counter() - epoch_start
            record = epoch_record(
                epoch, per_step, val_sums, seconds, float(exp.schedule(int(state.step)))
            )
            record["step"] = int(state.step)
            record["examples_per_s"] = len(per_step["loss"]) * config.batch_size / seconds
            stopper = early_stopping.update(
                progress.stopper,
                record[monitor],
                epoch,
                mode=early_stopping.monitor_mode(es.monitor),
                min_delta=es.min_delta,
                patience=es.patience,
            )
            progress = Progress(
                epoch=epoch,
                history=[*progress.history, record],
                stopper=stopper,
                train_time_s=progress.train_time_s + seconds,
            )
            new_rows = step_rows(per_step, first_step, epoch)
            step_log.extend(new_rows)
            say(format_record(record))
            run.write_history(progress.history, step_log)
            scalars.epoch(record)
            scalars.steps(new_rows)
            improved = stopper.best_epoch == epoch
            if should_save(config, epoch, improved, stopper.stopped) or interrupt.signal:
                checkpoints.save(
                    state, progress.to_meta(state, exp), best_order=epoch if improved else -1
                )
            if interrupt.signal is not None:
                raise TrainingInterruptedError(
                    interrupted_message(epoch, int(state.step)), interrupt.signal
                )
            if stopper.stopped:
                say(
                    f"early stopping: no {monitor} improvement for {es.patience} "
                    f"epochs; best epoch {stopper.best_epoch}"
                )
    return state, progress


def best_state(
    exp: Experiment,
    checkpoints: checkpointing.RunCheckpoints,
    state: TrainState,
    progress: Progress,
) -> tuple[TrainState, int]:
    """The state to test and the epoch it comes from: the best one under ``restore_best``."""
    best_epoch = progress.stopper.best_epoch
    if not exp.config.early_stopping.restore_best or best_epoch in (0, progress.epoch):
        return state, progress.epoch
    checkpoints.wait_until_finished()
    best_step = progress.history[best_epoch - 1]["step"]
    restored, _ = checkpoints.restore(best_step, state)
    return restored, best_epoch


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    load_dataset: Callable[[], datasets.Dataset] | None = None,
) -> dict[str, Any]:
    """Trains per ``config``, resuming from ``workdir``'s checkpoints, then tests.

    The library form of ``python -m flaxmnist.train`` (also ``flaxmnist.train_and_evaluate``):
    it writes ``config.json``, ``history.json`` / ``.csv``, ``steps.csv``, ``metrics.json``,
    TensorBoard scalars and Orbax checkpoints into ``workdir``. Rerunning it on the same
    ``workdir`` continues the run (bitwise as if uninterrupted); a finished run is reported again.

    Args:
      config: a run config (``flaxmnist.configs.default.get_config()`` or a preset's), checked
        before anything is written.
      workdir: the run directory (created; locked while the run lasts).
      load_dataset: returns the dataset; by default ``config.dataset`` is loaded from
        ``config.data_dir`` (as :func:`build_experiment` does).

    Returns:
      The contents of ``metrics.json``: ``test_accuracy``, ``test_loss``, ``epochs_completed``,
      ``steps``, ``num_params``, ``train_time_s``, ...

    Raises:
      FlaxmnistError: for a bad config, missing data, a locked or incompatible ``workdir``, a
        non-finite loss under ``nan_policy="stop"``; ``TrainingInterruptedError`` (exit code
        128 + signal) after SIGINT / SIGTERM, with a checkpoint saved.

    Example::

        from flaxmnist.configs import fast
        from flaxmnist.training import loop

        config = fast.get_config()
        config.num_epochs = 1
        metrics = loop.train_and_evaluate(config, "runs/fast-1")
        print(f"{metrics['test_accuracy']:.2%}")
    """
    start_time = time.perf_counter()
    exp = build_experiment(config, load_dataset)
    primary = parallel.is_primary()
    with run_directory.RunDirectory(workdir, writer=primary) as run:
        checkpoints = checkpointing.RunCheckpoints(run.checkpoint_dir, config.keep_checkpoints)
        scalars = scalar_log.ScalarLog(
            run.path / "tensorboard", config.log_every_steps, enabled=primary
        )
        try:
            state, progress, step_log = start_or_resume(run, checkpoints, exp)
            eval_splits = {"test": exp.dataset.test}
            if exp.validation is not None:
                eval_splits["validation"] = exp.validation
            runner = feeders.RUNNERS[config.input_pipeline](
                feeders.RunnerInputs(
                    exp.fns,
                    config,
                    exp.train,
                    eval_splits,
                    exp.data_rng,
                    exp.mesh,
                )
            )
            run.write_history(progress.history, step_log)
            outputs = RunOutputs(run, checkpoints, scalars)
            state, progress = train_epochs(exp, runner, outputs, state, progress, step_log)
            state, evaluated_epoch = best_state(exp, checkpoints, state, progress)
            test_loss, test_accuracy = summarize(runner.evaluate(state, "test"))
        finally:
            scalars.close()
            checkpoints.close()
        metrics = {
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "num_test_examples": len(exp.dataset.test),
            "num_params": models.count_params(state.params),
            "model": config.model,
            "dataset": config.dataset,
            "epochs": config.num_epochs,
            "epochs_completed": progress.epoch,
            "evaluated_epoch": evaluated_epoch,
            "best_epoch": progress.stopper.best_epoch,
            "stopped_early": progress.stopper.stopped,
            "steps": int(state.step),
            "train_time_s": progress.train_time_s,
            "total_time_s": time.perf_counter() - start_time,
            **device_summary(exp.mesh),
            **throughput(progress.history, exp),
            "time_to_first_chunk_s": exp.first_chunk_at_s,
        }
        run.write_metrics(metrics)
    return metrics


def throughput(history: list[dict], exp: Experiment) -> dict[str, Any]:
    """Final accuracies, median epoch time and examples per second, when epochs were run."""
    if not history:
        return {}
    median_time = float(np.median([r["epoch_time_s"] for r in history]))
    return {
        "final_train_accuracy": history[-1]["train_accuracy"],
        "final_val_accuracy": history[-1].get("val_accuracy"),
        "median_epoch_time_s": median_time,
        "examples_per_s": exp.steps_per_epoch * exp.config.batch_size / median_time,
    }
