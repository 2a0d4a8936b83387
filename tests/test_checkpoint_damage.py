"""Nothing lost when checkpoints break: damaged, swapped, twice damaged, unreadable for a moment.

Each test damages the checkpoints of a real run and checks what the next run does: resume from
the newest good checkpoint and end bitwise equal to a run that never broke, or stop in one line
with every file as it was.
"""

from __future__ import annotations

import dataclasses
import errno
import shutil
from pathlib import Path

import chex
import jax.numpy as jnp
import pytest

import flaxmnist
from flaxmnist.errors import FlaxmnistError
from flaxmnist.storage import checkpointing, run_directory
from flaxmnist.training import experiment, loop
from flaxmnist.training.records import Progress


def saved_steps(run: Path) -> list[int]:
    return sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())


def flip_bytes(step_dir: Path) -> None:
    """Inverts the middle byte of every file of a checkpoint's state (bits flipped on disk)."""
    for path in sorted((step_dir / "state").rglob("*")):
        if path.is_file() and path.stat().st_size:
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))


def run_files(run: Path) -> dict[str, bytes]:
    """Every file of a run directory but the lock and the TensorBoard log, by relative path."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != ".lock" and "tensorboard" not in p.parts
    }


def steps_csv(run: Path) -> str:
    return (run / "steps.csv").read_text()


def history_writes(monkeypatch) -> list[int]:
    """The number of epochs in each ``history.json`` written from now on, in order."""
    written = []
    write_json = run_directory.write_json_atomic

    def recording_write_json(path, obj):
        if Path(path).name == "history.json":
            written.append(len(obj))
        write_json(path, obj)

    monkeypatch.setattr(run_directory, "write_json_atomic", recording_write_json)
    return written


@pytest.fixture
def reference(tiny_config, tmp_path) -> Path:
    """A 3-epoch run that never broke."""
    config = tiny_config.copy_and_resolve_references()
    config.num_epochs = 3
    loop.train_and_evaluate(config, tmp_path / "reference")
    return tmp_path / "reference"


def test_the_checksum_sees_one_changed_element_and_nothing_else():
    state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(4)}
    same = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(4)}
    changed = {"w": jnp.arange(6.0).reshape(2, 3).at[1, 2].set(5.000001), "step": jnp.int32(4)}
    reshaped = {"w": jnp.arange(6.0).reshape(3, 2), "step": jnp.int32(4)}
    assert checkpointing.state_checksum(state) == checkpointing.state_checksum(same)
    assert checkpointing.state_checksum(state) != checkpointing.state_checksum(changed)
    assert checkpointing.state_checksum(state) != checkpointing.state_checksum(reshaped)


@pytest.mark.slow
def test_a_checkpoint_holding_another_steps_arrays_is_found_by_its_checksum(
    tiny_config, tmp_path, reference, capsys
):
    """Orbax reads swapped arrays without complaint: only the checksum can tell."""
    loop.train_and_evaluate(tiny_config, tmp_path / "run")  # 2 epochs: two checkpoints
    first, second = saved_steps(tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints"
    shutil.rmtree(ckpt / str(second) / "state")
    shutil.copytree(ckpt / str(first) / "state", ckpt / str(second) / "state")
    tiny_config.num_epochs = 3
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    err = capsys.readouterr().err
    assert f"checkpoint step {second}" in err and "do not match their checksum" in err
    assert f"set it aside as {second}.corrupt; resuming from step {first}" in err
    assert steps_csv(tmp_path / "run") == steps_csv(reference)
    chex.assert_trees_all_equal(
        flaxmnist.load_run(tmp_path / "run").state.params,
        flaxmnist.load_run(reference).state.params,
    )


@pytest.mark.slow
def test_the_only_checkpoint_damaged_stops_in_one_line_and_changes_nothing(tiny_config, tmp_path):
    tiny_config.update(keep_checkpoints=1, num_epochs=1)
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    (step,) = saved_steps(tmp_path / "run")
    state_files = (tmp_path / "run" / "checkpoints" / str(step) / "state").rglob("*")
    biggest = max((p for p in state_files if p.is_file()), key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])  # TensorStore fails
    before = run_files(tmp_path / "run")
    tiny_config.num_epochs = 2
    with pytest.raises(checkpointing.CheckpointDamagedError) as stopped:
        loop.train_and_evaluate(tiny_config, tmp_path / "run")
    message = str(stopped.value)
    assert f"checkpoint step {step}" in message and "it is the only one" in message
    assert "nothing was changed" in message and "\n" not in message
    assert "<bound method" not in message  # TensorStore's empty pointer to its details
    assert run_files(tmp_path / "run") == before  # the history and the checkpoint as they were


@pytest.mark.slow
def test_damage_twice_at_one_step_resumes_each_time_keeps_both_copies_and_never_shortens_history(
    tiny_config, tmp_path, reference, monkeypatch
):
    run = tmp_path / "run"
    loop.train_and_evaluate(tiny_config, run)  # epochs 1-2
    written = history_writes(monkeypatch)  # the epochs of each history.json from here on
    for _ in range(2):  # damage the newest step, resume; the same step is written and damaged
        newest = saved_steps(run)[-1]
        flip_bytes(run / "checkpoints" / str(newest))
        written.clear()
        metrics = loop.train_and_evaluate(tiny_config, run)
        assert metrics["epochs_completed"] == 2
        assert written == [2]  # epoch 2 trained again; never a history of 1 epoch written
    ckpt = run / "checkpoints"
    assert (ckpt / f"{newest}.corrupt").is_dir() and (ckpt / f"{newest}.corrupt.2").is_dir()
    tiny_config.num_epochs = 3
    loop.train_and_evaluate(tiny_config, run)
    assert steps_csv(run) == steps_csv(reference)
    chex.assert_trees_all_equal(
        flaxmnist.load_run(run).state.params, flaxmnist.load_run(reference).state.params
    )


def failing_reads(monkeypatch, failures: int, error: Exception) -> list[int]:
    """Makes the first ``failures`` Orbax restores raise ``error``; returns the call count."""
    calls = [0]
    restore = checkpointing.RunCheckpoints.restore

    def flaky(self, step, target):
        calls[0] += 1
        if calls[0] <= failures:
            raise error
        return restore(self, step, target)

    monkeypatch.setattr(checkpointing.RunCheckpoints, "restore", flaky)
    return calls


@pytest.mark.slow
def test_a_read_error_once_is_read_again_and_sets_nothing_aside(
    tiny_config, tmp_path, monkeypatch, capsys
):
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    newest = saved_steps(tmp_path / "run")[-1]
    failing_reads(monkeypatch, 1, OSError(errno.EIO, "Input/output error"))
    tiny_config.num_epochs = 3
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    captured = capsys.readouterr()
    assert f"resuming {tmp_path / 'run'} after epoch 2 (step {newest})" in captured.out
    assert "damaged" not in captured.err
    assert not list((tmp_path / "run" / "checkpoints").glob("*.corrupt*"))


@pytest.mark.slow
def test_a_read_error_that_persists_stops_in_one_line_and_changes_nothing(
    tiny_config, tmp_path, monkeypatch
):
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    before = run_files(tmp_path / "run")
    failing_reads(monkeypatch, 10, OSError(errno.EIO, "Input/output error"))
    tiny_config.num_epochs = 3
    with pytest.raises(checkpointing.CheckpointReadError, match="rerun when the disk reads again"):
        loop.train_and_evaluate(tiny_config, tmp_path / "run")
    assert run_files(tmp_path / "run") == before


@pytest.mark.slow
def test_a_damaged_best_checkpoint_is_set_aside_and_the_latest_state_tested(
    tiny_config, tmp_path, capsys
):
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    first, _ = saved_steps(tmp_path / "run")
    flip_bytes(tmp_path / "run" / "checkpoints" / str(first))
    tiny_config.early_stopping.restore_best = True
    exp = experiment.build_experiment(tiny_config)
    checkpoints = checkpointing.RunCheckpoints(tmp_path / "run" / "checkpoints", keep_latest=2)
    state, meta = checkpoints.restore_latest(exp.state)
    progress = Progress.from_meta(meta)
    progress = dataclasses.replace(
        progress, stopper=dataclasses.replace(progress.stopper, best_epoch=1)
    )
    tested, epoch = loop.best_state(exp, checkpoints, state, progress)
    checkpoints.close()
    assert epoch == 2 and tested is state
    assert "testing the latest state (epoch 2)" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoints" / f"{first}.corrupt").is_dir()


@pytest.mark.slow
def test_loading_a_damaged_checkpoint_is_one_line_not_an_internal_error(tiny_config, tmp_path):
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    newest = saved_steps(tmp_path / "run")[-1]
    flip_bytes(tmp_path / "run" / "checkpoints" / str(newest))
    with pytest.raises(FlaxmnistError, match=f"checkpoint step {newest} .* is damaged"):
        flaxmnist.load_run(tmp_path / "run", "latest")
    assert flaxmnist.load_run(tmp_path / "run", saved_steps(tmp_path / "run")[0]).step > 0


@pytest.mark.slow
def test_history_without_any_checkpoint_trains_again_and_never_shortens_the_history(
    tiny_config, tmp_path, reference, monkeypatch, capsys
):
    """Epochs recorded, checkpoints gone (a full disk, say): trained again from step 0."""
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    shutil.move(tmp_path / "run" / "checkpoints", tmp_path / "moved-away")
    (tmp_path / "run" / "metrics.json").unlink()
    written = history_writes(monkeypatch)  # the epochs of each history.json from here on
    tiny_config.num_epochs = 3
    loop.train_and_evaluate(tiny_config, tmp_path / "run")
    assert "records 2 epochs but holds no checkpoint: training from step 0" in (
        capsys.readouterr().err
    )
    assert written == [2, 3]  # epochs 1 and 2 trained again without a shorter history written
    assert steps_csv(tmp_path / "run") == steps_csv(reference)
