"""The epoch loop: train, validate, record, checkpoint, stop early, test (train_and_evaluate).

Everything with side effects lives here (progress bars, files); the numerical work is in the pure,
jitted functions of :mod:`flaxmnist.training.step_functions`, the set-up in
:mod:`flaxmnist.training.experiment`. The run directory gets:

* ``config.json`` — the resolved config;
* ``history.json`` / ``history.csv`` — one record per epoch (train / val loss and accuracy, time);
* ``steps.csv`` — the loss and accuracy of every training step (the custom-loop loss curve);
* ``metrics.json`` — test loss and accuracy, example count, parameter count, timings, devices;
* ``checkpoints/`` — Orbax checkpoints (latest N and best), from which a rerun resumes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
import tqdm

from flaxmnist import models, optimizers
from flaxmnist.console import is_primary, say, warn
from flaxmnist.errors import DivergedError, FlaxmnistError
from flaxmnist.storage import checkpointing, run_directory
from flaxmnist.training import early_stopping, feeders, parallel
from flaxmnist.training.experiment import Experiment, build_experiment
from flaxmnist.training.interruption import (
    FirstChunkClock,
    InterruptFlag,
    TrainingInterruptedError,
    interrupted_message,
)
from flaxmnist.training.records import (
    Progress,
    device_summary,
    epoch_record,
    format_record,
    step_rows,
    summarize,
    throughput,
)
from flaxmnist.training.train_state import TrainState


def check_finite(
    chunk: dict[str, np.ndarray],
    epoch: int,
    first_step: int,
    checkpoints: checkpointing.RunCheckpoints,
):
    """Raises a one-line error naming the epoch and step of the first non-finite loss."""
    bad = np.flatnonzero(~np.isfinite(chunk["loss"]))
    if bad.size:  # only now look at the checkpoints: this runs after every chunk
        raise DivergedError(
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
        recorded = run.check_resumable(config)
        check_schedule_kept(run, exp, recorded["num_epochs"], max(checkpoints.steps(), default=0))
        restored = checkpoints.restore_latest(exp.state)
        if restored is not None:
            state, meta = restored
            progress = Progress.from_meta(meta)
            check_not_past_the_end(run, exp, int(state.step))
            say(f"resuming {run.path} after epoch {progress.epoch} (step {int(state.step)})")
        elif (run.path / "metrics.json").exists():
            raise FlaxmnistError(
                f"workdir {run.path} holds a finished run without checkpoints; use a new --workdir"
            )
        elif run.recorded_epochs() > 0:  # its first checkpoint was never written
            warn(
                f"workdir {run.path} records {run.recorded_epochs()} epochs but holds no "
                "checkpoint: training from step 0 (its history is kept until this run passes it)"
            )
    step_log = run.read_step_log(int(state.step))  # a damaged log stops the run before any write
    parallel.sync("flaxmnist-run-directory-checked")  # every process looked before the write
    run.write_config(config)
    return state, progress, step_log


def check_schedule_kept(
    run: run_directory.RunDirectory, exp: Experiment, recorded_epochs: int, steps: int
) -> None:
    """Refuses a new ``num_epochs`` that changes the learning rates of the ``steps`` taken."""
    config = exp.config
    if recorded_epochs == config.num_epochs or not optimizers.schedule_differs(
        config, recorded_epochs, exp.steps_per_epoch, steps
    ):
        return
    raise FlaxmnistError(
        f"workdir {run.path} was trained with num_epochs={recorded_epochs}, and the "
        f"{config.schedule} schedule spans num_epochs: {config.num_epochs} would change the "
        f"learning rate of the {steps} steps already taken; keep num_epochs={recorded_epochs}, "
        "or start a new --workdir (--config.init_from to start from these weights)"
    )


def check_not_past_the_end(run: run_directory.RunDirectory, exp: Experiment, steps: int) -> None:
    """Refuses a ``num_epochs`` that ends before the ``steps`` the run has already taken."""
    if steps <= exp.config.num_epochs * exp.steps_per_epoch:
        return
    needed = -(-steps // exp.steps_per_epoch)
    raise FlaxmnistError(
        f"workdir {run.path} has trained {steps} steps, past the end of "
        f"num_epochs={exp.config.num_epochs}; set num_epochs >= {needed}, or start a new "
        "--workdir (--config.init_from to start from these weights)"
    )


def should_save(config, epoch: int, improved: bool, stopping: bool) -> bool:
    """Whether to checkpoint at the end of ``epoch``."""
    every = config.checkpoint_every_epochs
    return every > 0 and (epoch % every == 0 or improved or stopping or epoch == config.num_epochs)


def last_good_message(checkpoints: checkpointing.RunCheckpoints) -> str:
    """Which checkpoint a failed run leaves behind, for its error message."""
    checkpoints.wait_until_finished()
    saved = checkpoints.steps()
    return f"the last good checkpoint (step {saved[-1]}) is kept" if saved else "no checkpoint"


@dataclasses.dataclass(frozen=True)
class RunOutputs:
    """Where a run's results go: directory (its log), checkpoints, clock, epoch callback."""

    run: run_directory.RunDirectory
    checkpoints: checkpointing.RunCheckpoints
    clock: FirstChunkClock
    on_epoch: Callable[[dict[str, Any]], None] | None = None


def train_one_epoch(
    exp: Experiment,
    feeder: feeders.Feeder,
    state: TrainState,
    progress: Progress,
    epoch: int,
    interrupt: InterruptFlag,
    out: RunOutputs,
) -> tuple[TrainState, dict[str, np.ndarray]]:
    """Trains ``epoch`` (or its rest, after an interruption); returns state and per-step sums.

    On SIGINT/SIGTERM it saves a mid-epoch checkpoint and raises :class:`TrainingInterruptedError`.
    """
    config = exp.config
    # The step's sums are float32 (step_functions.metric_sums): restored as float32, the epoch's
    # totals add up exactly as in a run that was never interrupted.
    partial = progress.partial
    parts = [{k: np.asarray(v, np.float32) for k, v in partial.items()}] if partial else []
    done = progress.steps_into_epoch
    with tqdm.tqdm(
        total=exp.steps_per_epoch,
        initial=done,
        unit="step",
        dynamic_ncols=True,
        desc=f"epoch {epoch}/{config.num_epochs}",
        disable=not is_primary(),
    ) as bar:
        for new_state, chunk in feeder.train_chunks(state, epoch, exp.dropout_rng, done):
            state = new_state
            if config.nan_policy == "stop":
                check_finite(
                    chunk,
                    epoch,
                    int(state.step) - len(chunk["loss"]),
                    out.checkpoints,
                )
            parts.append(chunk)
            out.clock.tick()
            done += len(chunk["loss"])
            bar.update(len(chunk["loss"]))
            bar.set_postfix(loss=f"{summarize(chunk)[0]:.4f}")
            if interrupt.signal is not None and done < exp.steps_per_epoch:
                partial = {k: np.concatenate([p[k] for p in parts]).tolist() for k in parts[0]}
                paused = dataclasses.replace(progress, steps_into_epoch=done, partial=partial)
                out.checkpoints.save(state, paused.to_meta(state, exp), best_order=-1)
                raise TrainingInterruptedError(
                    interrupted_message(epoch, int(state.step)), interrupt.signal
                )
    return state, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def train_epochs(
    exp: Experiment,
    feeder: feeders.Feeder,
    out: RunOutputs,
    state: TrainState,
    progress: Progress,
    step_log: list[dict],
) -> tuple[TrainState, Progress]:
    """The epoch loop: train, validate, record, checkpoint, stop early."""
    config = exp.config
    run, checkpoints = out.run, out.checkpoints
    monitor = monitored_field(config)
    es = config.early_stopping
    with InterruptFlag() as interrupt:
        for epoch in range(progress.epoch + 1, config.num_epochs + 1):
            if progress.done:
                break
            epoch_start, first_step = time.perf_counter(), int(state.step)
            first_step -= progress.steps_into_epoch
            state, per_step = train_one_epoch(exp, feeder, state, progress, epoch, interrupt, out)
            val_sums = feeder.evaluate(state, "validation") if exp.validation else None
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
            step_log.extend(step_rows(per_step, first_step, epoch))
            say(format_record(record))
            run.write_history(progress.history, step_log, config.log_every_steps)
            improved = stopper.best_epoch == epoch
            if should_save(config, epoch, improved, stopper.stopped) or interrupt.signal:
                checkpoints.save(
                    state, progress.to_meta(state, exp), best_order=epoch if improved else -1
                )
            if out.on_epoch is not None:
                out.on_epoch(record)  # after the checkpoint: an exception here loses no epoch
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
    if best_step in checkpoints.steps():
        try:
            restored, _ = checkpoints.restore_checked(best_step, state)
            return restored, best_epoch
        except checkpointing.CheckpointDamagedError as e:
            checkpoints.set_aside(best_step, e)
    warn(
        f"the best checkpoint (epoch {best_epoch}, step {best_step}) cannot be restored: "
        f"testing the latest state (epoch {progress.epoch}) instead"
    )
    return state, progress.epoch


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
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
      on_epoch: called with each epoch's record (``epoch``, ``train_loss``, ``val_accuracy``,
        ...) once the epoch is written and checkpointed; an exception it raises ends the run
        (the tuner's pruning does so).

    Returns:
      The contents of ``metrics.json``: ``test_accuracy``, ``test_loss``, ``epochs_completed``,
      ``steps``, ``num_params``, ``train_time_s``, ...

    Raises:
      FlaxmnistError: for a bad config, missing data, a locked or incompatible ``workdir``;
        ``DivergedError`` for a non-finite loss under ``nan_policy="stop"``;
        ``TrainingInterruptedError`` (exit code 128 + signal) after SIGINT / SIGTERM, with a
        checkpoint saved.

    Example::

        from flaxmnist.configs import fast
        from flaxmnist.training import loop

        config = fast.get_config()
        config.num_epochs = 1
        metrics = loop.train_and_evaluate(config, "runs/fast-1")
        print(f"{metrics['test_accuracy']:.2%}")
    """
    start_time = time.perf_counter()
    exp = build_experiment(config)
    primary = is_primary()
    with run_directory.RunDirectory(workdir, writer=primary) as run:
        checkpoints = checkpointing.RunCheckpoints(run.checkpoint_dir, config.keep_checkpoints)
        try:
            state, progress, step_log = start_or_resume(run, checkpoints, exp)
            eval_splits = {"test": exp.dataset.test}
            if exp.validation is not None:
                eval_splits["validation"] = exp.validation
            feeder = feeders.FEEDERS[config.input_pipeline](
                feeders.FeederInputs(
                    exp.fns,
                    config,
                    exp.train,
                    eval_splits,
                    exp.positions,
                    exp.data_rng,
                    exp.mesh,
                )
            )
            run.write_history(progress.history, step_log, config.log_every_steps)
            outputs = RunOutputs(run, checkpoints, FirstChunkClock(), on_epoch)
            state, progress = train_epochs(exp, feeder, outputs, state, progress, step_log)
            state, evaluated_epoch = best_state(exp, checkpoints, state, progress)
            test_loss, test_accuracy = summarize(feeder.evaluate(state, "test"))
        finally:
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
            "time_to_first_chunk_s": outputs.clock.seconds,
        }
        run.write_metrics(metrics)
    return metrics
