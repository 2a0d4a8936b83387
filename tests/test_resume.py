"""Runs that survive: resume, early stopping, checkpoints, faults, locks, reload."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from drills.common import untimed_records
from helpers import REPO_ROOT, run_module

import flaxmnist
from flaxmnist.configs import default
from flaxmnist.data import datasets
from flaxmnist.errors import FlaxmnistError
from flaxmnist.storage import checkpointing, files, run_directory
from flaxmnist.training import early_stopping, experiment, interruption, loop


def _launch(
    config_args: list[str], workdir: Path, data_dir: Path, cache_dir: Path
) -> subprocess.Popen:
    """Starts ``python -m flaxmnist.train`` on cnn_simple (``cache_dir``: the session's cache)."""
    command = [
        sys.executable,
        "-m",
        "flaxmnist.train",
        "--config=cnn_simple",
        f"--config.data_dir={data_dir}",
        "--config.batch_size=32",
        "--config.eval_batch_size=64",
        f"--config.compilation_cache_dir={cache_dir}",
        f"--workdir={workdir}",
        *config_args,
    ]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def _final_state(workdir: Path):
    return flaxmnist.load_run(workdir).state


@pytest.mark.slow
def test_rerunning_a_finished_run_reports_the_same_metrics(tiny_config, tmp_path):
    first = loop.train_and_evaluate(tiny_config, tmp_path / "run")
    again = loop.train_and_evaluate(tiny_config, tmp_path / "run")
    for key in ("test_loss", "test_accuracy", "steps", "epochs_completed"):
        assert again[key] == first[key]


@pytest.mark.slow
def test_more_epochs_continue_the_epoch_count(tiny_config, tmp_path):
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    tiny_config.num_epochs = 3
    metrics = loop.train_and_evaluate(tiny_config, tmp_path / "run")
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert metrics["epochs_completed"] == 3


@pytest.mark.slow
def test_resume_off_refuses_an_existing_run(tiny_config, tmp_path):
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    before = (tmp_path / "run" / "metrics.json").read_text()
    tiny_config.resume = False
    with pytest.raises(FlaxmnistError, match="already holds a run and resume is off"):
        loop.train_and_evaluate(tiny_config, tmp_path / "run")
    assert (tmp_path / "run" / "metrics.json").read_text() == before


@pytest.mark.slow
def test_a_different_config_in_the_workdir_is_refused(tiny_config, tmp_path):
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    steps_before = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    tiny_config.model = "dense"
    with pytest.raises(FlaxmnistError, match="different config \\(model: 'cnn_simple' -> 'dense'"):
        loop.train_and_evaluate(tiny_config, tmp_path / "run")
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == steps_before


def test_a_run_recorded_before_a_field_existed_resumes_with_its_default(tiny_config, tmp_path):
    recorded = json.loads(tiny_config.to_json())
    del recorded["adam_b1"]  # as a version without the field wrote it
    files.write_json_atomic(tmp_path / "config.json", recorded)
    with run_directory.RunDirectory(tmp_path) as run:
        run.check_resumable(tiny_config)  # the default value: the same run
        tiny_config.adam_b1 = 0.7
        with pytest.raises(FlaxmnistError, match=r"\(adam_b1: 0.9 -> 0.7\)"):
            run.check_resumable(tiny_config)


def test_a_restored_state_has_the_fresh_state_types_so_steps_need_no_new_program(
    tiny_config, tmp_path
):
    exp = experiment.build_experiment(tiny_config)
    checkpoints = checkpointing.RunCheckpoints(tmp_path / "ckpt", keep_latest=2)
    checkpoints.save(exp.state, {"fingerprint": checkpointing.fingerprint(exp.state)}, best_order=1)
    restored, _ = checkpoints.restore_latest(exp.state)
    checkpoints.close()
    types = [jax.typeof(leaf) for leaf in jax.tree_util.tree_leaves(exp.state)]
    assert [jax.typeof(leaf) for leaf in jax.tree_util.tree_leaves(restored)] == types
    assert not jax.typeof(exp.state.step).weak_type


def test_checkpoint_of_another_model_is_incompatible(tiny_config, tmp_path):
    exp = experiment.build_experiment(tiny_config)
    saver = checkpointing.RunCheckpoints(tmp_path / "ckpt", keep_latest=2)
    saver.save(
        exp.state, {"fingerprint": checkpointing.fingerprint(exp.state), "model": "x"}, best_order=1
    )
    saver.close()
    tiny_config.model = "dense"
    other = experiment.build_experiment(tiny_config)
    reader = checkpointing.RunCheckpoints(tmp_path / "ckpt", keep_latest=2)
    with pytest.raises(checkpointing.IncompatibleCheckpointError, match="different model"):
        reader.restore_latest(other.state)
    reader.close()
    assert (tmp_path / "ckpt" / "0").is_dir()


def test_checkpoint_with_another_state_layout_is_incompatible_not_damaged(tiny_config, tmp_path):
    exp = experiment.build_experiment(tiny_config)  # no EMA: the saved state has no ema_params
    saver = checkpointing.RunCheckpoints(tmp_path / "ckpt", keep_latest=2)
    saver.save(exp.state, {"fingerprint": checkpointing.fingerprint(exp.state)}, best_order=1)
    saver.close()
    tiny_config.ema_decay = 0.9  # same parameters, one more state field
    other = experiment.build_experiment(tiny_config)
    reader = checkpointing.RunCheckpoints(tmp_path / "ckpt", keep_latest=2)
    with pytest.raises(checkpointing.IncompatibleCheckpointError, match="laid out differently"):
        reader.restore_latest(other.state)
    reader.close()
    assert (tmp_path / "ckpt" / "0").is_dir()  # not set aside as damaged


def _truncate_every_file(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(tiny_config, tmp_path, capsys):
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints"
    steps = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    assert len(steps) == 2
    _truncate_every_file(ckpt / str(steps[-1]))
    tiny_config.num_epochs = 3
    capsys.readouterr()
    metrics = loop.train_and_evaluate(tiny_config, tmp_path / "run")
    out, err = capsys.readouterr()
    assert "warning: checkpoint step" in err
    assert f"after epoch 1 (step {steps[0]})" in out  # resumed from the good one, not restarted
    assert (ckpt / f"{steps[-1]}.corrupt").is_dir()  # set aside, not deleted
    assert metrics["epochs_completed"] == 3
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]


def test_a_second_run_on_a_locked_workdir_refuses(tiny_config, tmp_path):
    with (
        run_directory.RunDirectory(tmp_path / "run"),
        pytest.raises(FlaxmnistError, match="in use by another run"),
    ):
        loop.train_and_evaluate(tiny_config, tmp_path / "run")


@pytest.mark.slow
def test_cli_refuses_a_locked_workdir(synthetic_data_dir, tmp_path, session_compilation_cache):
    with run_directory.RunDirectory(tmp_path / "run"):
        run = _launch([], tmp_path / "run", synthetic_data_dir, session_compilation_cache)
        code, _, stderr = _finish(run)
    assert code == 2 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("error: workdir")
    assert "in use by another run" in stderr


@pytest.mark.slow
def test_nan_loss_stops_naming_epoch_and_step(
    synthetic_data_dir, tmp_path, session_compilation_cache
):
    args = ["--config.optimizer=sgd", "--config.learning_rate=1e12", "--config.num_epochs=2"]
    run = _launch(args, tmp_path / "run", synthetic_data_dir, session_compilation_cache)
    code, _, stderr = _finish(run)
    assert code == 2 and "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: loss became nan at epoch 1, step ") or "inf at epoch 1" in last
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_skip_step_policy_keeps_parameters_finite(tiny_config, tmp_path):
    tiny_config.update(optimizer="sgd", learning_rate=1e12, nan_policy="skip_step", num_epochs=1)
    metrics = loop.train_and_evaluate(tiny_config, tmp_path / "run")
    state = _final_state(tmp_path / "run")
    assert all(bool(np.isfinite(x).all()) for x in jax.tree_util.tree_leaves(state.params))
    assert metrics["epochs_completed"] == 1


@pytest.mark.parametrize(
    ("monitor", "validation_fraction", "followed"),
    [
        ("val_loss", 0.1, "val_loss"),
        ("val_accuracy", 0.0, "train_accuracy"),  # no validation split: its training twin
        ("val_loss", 0.0, "train_loss"),
        ("train_loss", 0.1, "train_loss"),
    ],
)
def test_the_monitored_field_falls_back_to_training_without_validation(
    monitor, validation_fraction, followed
):
    config = default.get_config()
    config.validation_fraction = validation_fraction
    config.early_stopping.monitor = monitor
    assert loop.monitored_field(config) == followed


def test_early_stopping_follows_keras_semantics():
    update = lambda s, v, e: early_stopping.update(  # noqa: E731
        s, v, e, mode="min", min_delta=0.1, patience=2
    )
    state = early_stopping.EarlyStoppingState()
    state = update(state, 1.0, 1)
    state = update(state, 0.95, 2)  # not better by more than min_delta
    assert (state.best, state.best_epoch, state.wait, state.stopped) == (1.0, 1, 1, False)
    state = update(state, 0.5, 3)
    assert (state.best_epoch, state.wait) == (3, 0)
    state = update(update(state, 0.6, 4), 0.45, 5)
    assert state.stopped and state.best_epoch == 3


@pytest.mark.slow
def test_restore_best_tests_the_best_epoch_and_the_commands_read_that_one_by_default(
    tiny_config, tmp_path
):
    # val_accuracy reaches 1.0 at once on the easy synthetic data and cannot improve after.
    tiny_config.num_epochs = 8
    tiny_config.early_stopping.update(monitor="val_accuracy", patience=2, restore_best=True)
    metrics = loop.train_and_evaluate(tiny_config, tmp_path / "run")
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    best = max(range(len(history)), key=lambda i: (history[i]["val_accuracy"], -i)) + 1
    assert metrics["stopped_early"] and metrics["epochs_completed"] == best + 2
    assert metrics["best_epoch"] == best and metrics["evaluated_epoch"] == best
    assert flaxmnist.load_run(tmp_path / "run", "best").epoch == best
    # The commands that read a run (evaluate, predict, export, serve) default to the tested one.
    assert flaxmnist.load_run(tmp_path / "run", "latest").epoch == best + 2
    evaluated = run_module("evaluate", f"--workdir={tmp_path / 'run'}", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    written = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert written["checkpoint_step"] == flaxmnist.load_run(tmp_path / "run", "tested").step
    assert written["checkpoint_step"] == best * history[0]["step"]


@pytest.mark.slow
def test_only_the_latest_keep_checkpoints_and_the_best_are_kept(tiny_config, tmp_path):
    # val_accuracy reaches its top early on the easy synthetic data: the best is an old epoch.
    tiny_config.update(num_epochs=5, keep_checkpoints=2)
    tiny_config.early_stopping.update(monitor="val_accuracy", patience=10)
    metrics = loop.train_and_evaluate(tiny_config, tmp_path / "run")
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    best = max(range(5), key=lambda i: (history[i]["val_accuracy"], -i)) + 1
    assert metrics["best_epoch"] == best
    steps_per_epoch = history[0]["step"]
    kept = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == sorted({best * steps_per_epoch, 4 * steps_per_epoch, 5 * steps_per_epoch})
    assert flaxmnist.load_run(tmp_path / "run", "best").epoch == best


@pytest.mark.slow
def test_reloaded_run_gives_identical_test_predictions_in_a_fresh_process(tiny_config, tmp_path):
    metrics = loop.train_and_evaluate(tiny_config, tmp_path / "run")
    script = (
        "import json, numpy as np, flaxmnist\n"
        "from flaxmnist.data import datasets\n"
        f"run = flaxmnist.load_run({str(tmp_path / 'run')!r})\n"
        f"test = datasets.load_dataset('mnist', {tiny_config.data_dir!r}).test\n"
        "logits = run.predict(test.images, batch_size=7)\n"
        "print(json.dumps(float((logits.argmax(-1) == test.labels).mean())))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == metrics["test_accuracy"]
    here = flaxmnist.load_run(tmp_path / "run")
    test = datasets.load_dataset("mnist", tiny_config.data_dir).test
    np.testing.assert_array_equal(
        here.predict(test.images).argmax(-1),
        here.predict(test.images, batch_size=13).argmax(-1),
    )


def test_atomic_write_leaves_the_old_file_when_the_disk_is_full(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    files.write_json_atomic(target, {"old": 1})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        files.write_json_atomic(target, {"new": 2})
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp file left


@pytest.mark.slow
def test_one_tensorboard_event_file_holds_the_history_of_a_resumed_run(tiny_config, tmp_path):
    import tensorflow as tf

    tiny_config.log_every_steps = 5
    tiny_config.num_epochs = 1
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    tiny_config.num_epochs = 2  # resumed: epoch 2 is trained by a second call
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    scalars: dict[str, dict[int, float]] = {}
    (event_file,) = (tmp_path / "run" / "tensorboard").iterdir()  # one file, from the log
    for event in tf.compat.v1.train.summary_iterator(str(event_file)):
        for value in event.summary.value:
            scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    assert scalars["val/accuracy"] == pytest.approx(
        {r["epoch"]: r["val_accuracy"] for r in history}
    )
    assert scalars["train/loss"][2] == pytest.approx(history[1]["train_loss"])
    assert set(scalars["step/loss"]) == set(range(5, history[-1]["step"] + 1, 5))
    assert {"learning_rate", "epoch_time_s", "val/loss", "train/accuracy"} <= set(scalars)


@pytest.mark.slow
def test_a_checkpoint_is_not_started_without_room_for_it(tiny_config, tmp_path, monkeypatch):
    tiny_config.num_epochs = 1
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    nearly_full = shutil.disk_usage(tmp_path)._replace(free=64 << 10)  # 64 KiB left
    monkeypatch.setattr(shutil, "disk_usage", lambda path: nearly_full)
    tiny_config.num_epochs = 2
    with pytest.raises(OSError, match=r"a checkpoint needs about \d+ KiB, 64 KiB free") as e:
        loop.train_and_evaluate(tiny_config, tmp_path / "run")
    assert e.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == saved


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:os.fork")  # the child only calls setrlimit before exec
def test_cli_on_a_full_disk_fails_in_one_line_without_partial_files(synthetic_data_dir, tmp_path):
    import resource

    def small_file_limit():  # files may not grow past 1,500 bytes: steps.csv will not fit
        resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))

    command = [
        sys.executable,
        "-m",
        "flaxmnist.train",
        "--config=cnn_simple",
        f"--config.data_dir={synthetic_data_dir}",
        "--config.batch_size=32",
        "--config.eval_batch_size=64",
        "--config.compilation_cache_dir=",
        "--config.checkpoint_every_epochs=0",
        f"--workdir={tmp_path / 'run'}",
    ]
    result = subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=small_file_limit,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot write")
    run = tmp_path / "run"
    assert not (run / "metrics.json").exists()
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    json.loads((run / "history.json").read_text())  # what was written is whole


@pytest.mark.slow
def test_an_internal_error_ends_in_one_line_with_its_traceback_and_the_rerun_finishes(
    synthetic_data_dir, tmp_path, session_compilation_cache
):
    # A library failing after training (as a bug would): patched in through import_modules.
    plugin = tmp_path / "fails_after_training.py"
    plugin.write_text(
        "from flaxmnist.training import loop\n"
        "def fail(*args):\n"
        "    raise RuntimeError('simulated library failure')\n"
        "loop.throughput = fail\n"
    )
    workdir = tmp_path / "run"
    args = ["--config.num_epochs=2", f"--config.import_modules={plugin}"]
    code, _, stderr = _finish(_launch(args, workdir, synthetic_data_dir, session_compilation_cache))
    assert code == 1
    assert stderr.strip().splitlines()[-1] == (
        "error: internal error (RuntimeError: simulated library failure); "
        f"full traceback in {workdir / 'error.log'}"
    )
    assert "Traceback" not in stderr
    assert "simulated library failure" in (workdir / "error.log").read_text()
    assert not (workdir / "metrics.json").exists()
    args = ["--config.num_epochs=2"]
    rerun = _launch(args, workdir, synthetic_data_dir, session_compilation_cache)
    code, stdout, stderr = _finish(rerun)
    assert code == 0, stderr
    assert "resuming" in stdout + stderr
    assert json.loads((workdir / "metrics.json").read_text())["epochs_completed"] == 2


def test_the_first_signal_sets_the_flag_and_a_second_does_what_signals_did_before():
    before = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: before.append(signum))
    try:
        with interruption.InterruptFlag() as interrupt:
            os.kill(os.getpid(), signal.SIGTERM)
            assert interrupt.signal == signal.SIGTERM and before == []
            os.kill(os.getpid(), signal.SIGTERM)
            assert before == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
@pytest.mark.parametrize("damaged", ["steps.csv", "config.json"])
def test_a_damaged_log_or_config_refuses_the_resume_and_changes_nothing(
    tiny_config, tmp_path, damaged
):
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    (tmp_path / "run" / damaged).write_text("\x00{garbage")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    tiny_config.num_epochs = 3  # a field that may change on resume: config.json would be rewritten
    with pytest.raises(FlaxmnistError, match=rf"{re.escape(damaged)} is damaged") as refused:
        loop.train_and_evaluate(tiny_config, tmp_path / "run")
    assert "\n" not in str(refused.value)
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    assert after == before


@pytest.mark.slow
def test_a_damaged_history_is_rewritten_from_the_checkpoint_and_the_run_resumes(
    tiny_config, tmp_path, capsys
):
    tiny_config.num_epochs = 3
    loop.train_and_evaluate(tiny_config, tmp_path / "whole")
    tiny_config.num_epochs = 2
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    (tmp_path / "run" / "history.json").write_text('[{"epoch": 1, "train_lo')
    tiny_config.num_epochs = 3
    capsys.readouterr()
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    assert "after epoch 2 (step 28)" in capsys.readouterr().out
    assert untimed_records(tmp_path / "run") == untimed_records(tmp_path / "whole")
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 3


# Loaded into the training process below (sitecustomize): a mid-epoch save says so and then
# takes 60 s, so that a second signal lands while it is in progress.
SLOW_MID_EPOCH_SAVE = """
import sys, time
from flaxmnist.storage import checkpointing
save = checkpointing.RunCheckpoints.save
def slow_save(self, state, meta, **kwargs):
    if meta.get("steps_into_epoch"):
        print("mid-epoch save started", file=sys.stderr, flush=True)
        time.sleep(60)
    return save(self, state, meta, **kwargs)
checkpointing.RunCheckpoints.save = slow_save
"""


def _wait_for(process: subprocess.Popen, log: Path, text: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text(errors="replace"):
        assert process.poll() is None, f"ended before {text!r}: {log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"no {text!r} in {timeout_s} s"
        time.sleep(0.01)


@pytest.mark.slow
def test_a_second_signal_during_the_mid_epoch_save_stops_at_once_and_loses_nothing(tmp_path):
    """Ctrl-C, then Ctrl-C again while the checkpoint is being saved: exit 130 in one line, the
    epoch-1 checkpoint intact and no mid-epoch one; the rerun resumes after epoch 1."""
    from flaxmnist.testing import write_idx_dataset

    write_idx_dataset(tmp_path / "data" / "mnist", num_train=40_000, num_test=100)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_MID_EPOCH_SAVE)
    args = [
        "--config=cnn_simple",
        "--config.num_epochs=2",
        f"--config.data_dir={tmp_path / 'data'}",
        "--config.compilation_cache_dir=",
        f"--workdir={tmp_path / 'run'}",
    ]
    stderr = tmp_path / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO_ROOT)])}
    with stderr.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "flaxmnist.train", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            _wait_for(process, stderr, "epoch 2/2:")
            epoch_1 = tmp_path / "run" / "checkpoints" / "1125"
            while not epoch_1.is_dir():  # committed (Orbax renames it into place)
                assert process.poll() is None, stderr.read_text()[-2000:]
                time.sleep(0.01)
            process.send_signal(signal.SIGINT)
            _wait_for(process, stderr, "mid-epoch save started")
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=30) == 130
        finally:
            process.kill()
    lines = stderr.read_text().strip().splitlines()
    assert lines[-1].startswith("error: stopped by SIGINT; rerun the same command to resume")
    assert "Traceback" not in stderr.read_text()
    committed = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert [name for name in committed if name.isdigit()] == ["1125"]  # epoch 1 only
    rerun = run_module("train", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "after epoch 1 (step 1125)" in rerun.stdout
