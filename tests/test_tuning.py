"""The Optuna tuner: search spaces, trial configs, pruning, resumable studies, shared workers."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from helpers import REPO_ROOT
from optuna.trial import FixedTrial, TrialState

from flaxmnist import configs, tuning
from flaxmnist.errors import ConfigError
from flaxmnist.testing import write_idx_dataset

LEARNING_RATE_SPACE = """
def suggest(trial, config):
    config.learning_rate = trial.suggest_float("learning_rate", 1e-8, 1e-2, log=True)
"""


def write_base_config(folder: Path, num_epochs: int, cache: str = "") -> Path:
    """A config file that trains cnn_simple on synthetic data (validation 0.25) in seconds."""
    write_idx_dataset(folder / "data" / "mnist")
    path = folder / "base.py"
    path.write_text(
        textwrap.dedent(
            f"""
            from flaxmnist.configs import default

            def get_config():
                config = default.get_config()
                config.update(
                    data_dir={str(folder / "data")!r}, model="cnn_simple", batch_size=32,
                    eval_batch_size=64, num_epochs={num_epochs}, validation_fraction=0.25,
                    compilation_cache_dir={cache!r},
                )
                return config
            """
        )
    )
    return path


def study_spec(folder: Path, num_epochs: int, cache: str = "", **fields) -> tuning.StudySpec:
    """A study of the learning rate over the base config; ``cache``: its runs' compilation cache."""
    (folder / "space.py").write_text(LEARNING_RATE_SPACE)
    base = write_base_config(folder, num_epochs, cache)
    return tuning.StudySpec(
        config=str(base), workdir=folder / "study", space=str(folder / "space.py"), **fields
    )


def test_a_space_file_must_load_and_define_suggest(tmp_path):
    assert tuning.load_space("") is tuning.default_space
    missing, broken, empty = tmp_path / "missing.py", tmp_path / "broken.py", tmp_path / "empty.py"
    broken.write_text("def suggest(trial, config)\n")
    empty.write_text("x = 1\n")
    for path, message in [
        (missing, f"--space: file {missing} does not exist"),
        (broken, f"--space: file {broken} cannot be loaded (SyntaxError:"),
        (empty, f"--space: file {empty} defines no suggest(trial, config) function"),
    ]:
        with pytest.raises(ConfigError) as error:
            tuning.load_space(str(path))
        assert str(error.value).startswith(message)


def test_a_trial_config_records_what_changed_and_holds_out_validation_data():
    base = configs.load("fast")
    assert base.validation_fraction == 0 and base.batch_size != 64
    untouched = base.to_dict()
    trial = FixedTrial({"learning_rate": 0.02, "batch_size": 64})
    config, overrides = tuning.trial_config(base, tuning.default_space, trial)
    assert overrides == {"learning_rate": 0.02, "batch_size": 64}
    assert (config.learning_rate, config.batch_size) == (0.02, 64)
    assert config.validation_fraction == tuning.VALIDATION_FRACTION  # never scored on test data
    assert base.to_dict() == untouched

    def misspelt(trial, config):
        config.learnig_rate = 0.1

    with pytest.raises(ConfigError, match=r"--space: suggest\(\) failed .*learnig_rate"):
        tuning.trial_config(base, misspelt, trial)

    def invalid(trial, config):
        config.learning_rate = -1.0

    with pytest.raises(ConfigError, match="learning_rate"):
        tuning.trial_config(base, invalid, trial)


def test_the_best_config_file_is_the_base_with_the_tuned_fields(tmp_path):
    spec = tuning.StudySpec(config="fast", workdir=tmp_path)
    trial = optuna.trial.create_trial(
        value=0.99,
        params={"learning_rate": 0.004},
        distributions={"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2)},
        user_attrs={"overrides": {"learning_rate": 0.004, "early_stopping.patience": 3}},
    )
    path = tmp_path / "best_config.py"
    path.write_text(tuning.best_config_text(spec, trial))
    config = configs.load(str(path))
    expected = configs.load("fast")
    expected.learning_rate, expected.early_stopping.patience = 0.004, 3
    assert config.to_dict() == expected.to_dict()
    assert "validation accuracy 99.00 %" in path.read_text()


@pytest.mark.slow
def test_a_study_prunes_a_hopeless_trial_and_a_rerun_adds_only_what_is_missing(tmp_path):
    spec = study_spec(tmp_path, num_epochs=3, seed=0)
    spec.workdir.mkdir()
    study = tuning.open_study(spec)
    assert isinstance(study.sampler, optuna.samplers.TPESampler)  # README: TPE sampling
    for learning_rate in (3e-3, 2e-3, 1e-8):  # two that learn, then one that cannot
        study.enqueue_trial({"learning_rate": learning_rate})
    tuning.tune(spec, num_trials=3)
    trials = tuning.open_study(spec).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED]
    hopeless = trials[2]
    assert hopeless.user_attrs["note"] == "pruned after epoch 1"
    history = json.loads((spec.workdir / "trials/0002/history.json").read_text())
    assert len(history) == 1  # stopped after its first epoch, of 3
    for trial in trials[:2]:
        run = spec.workdir / trial.user_attrs["run"]
        history = json.loads((run / "history.json").read_text())
        assert len(history) == 3 and trial.value == history[-1]["val_accuracy"] > 0.5
    rows = (spec.workdir / "results.csv").read_text().splitlines()
    assert rows[0].startswith("trial,state,val_accuracy,test_accuracy,epochs,learning_rate,run")
    assert [row.split(",")[1] for row in rows[1:]] == ["complete", "complete", "pruned"]
    table = (spec.workdir / "results.md").read_text().splitlines()  # the same rows, for people
    assert table[0] == "| " + " | ".join(rows[0].split(",")) + " |" and len(table) == 2 + 3
    assert [line.split(" | ")[1] for line in table[2:]] == ["complete", "complete", "pruned"]
    best = max(trials[:2], key=lambda t: t.value)
    assert (
        configs.load(str(spec.workdir / "best_config.py")).learning_rate
        == best.params["learning_rate"]
    )

    tuning.tune(spec, num_trials=3)  # the study is complete: nothing runs
    assert len(tuning.open_study(spec).get_trials()) == 3
    tuning.tune(spec, num_trials=4)  # one more trial, sampled
    trials = tuning.open_study(spec).get_trials()
    assert len(trials) == 4 and trials[3].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert sorted(p.name for p in (spec.workdir / "trials").iterdir()) == [
        "0000",
        "0001",
        "0002",
        "0003",
    ]


@pytest.mark.slow
def test_a_trial_whose_loss_diverges_is_pruned_with_a_note_saying_where(tmp_path):
    spec = study_spec(tmp_path, num_epochs=2, seed=0)
    (tmp_path / "space.py").write_text(
        "def suggest(trial, config):\n"
        "    config.optimizer = 'sgd'\n"
        "    config.learning_rate = trial.suggest_float('learning_rate', 1e29, 1e30, log=True)\n"
    )
    tuning.tune(spec, num_trials=1)
    (trial,) = tuning.open_study(spec).get_trials()
    assert trial.state == TrialState.PRUNED
    assert re.fullmatch(r"loss became (nan|-?inf) at epoch 1, step \d+", trial.user_attrs["note"])
    rows = (spec.workdir / "results.csv").read_text().splitlines()
    assert rows[1].split(",")[1] == "pruned"


def test_a_study_of_another_config_or_space_in_the_same_storage_is_refused(tmp_path):
    spec = study_spec(tmp_path, num_epochs=1)
    spec.workdir.mkdir()
    tuning.open_study(spec)
    other = tuning.StudySpec(config="fast", workdir=spec.workdir, space=spec.space)
    with pytest.raises(ConfigError, match=r"was started with --config=.*base\.py, not fast"):
        tuning.open_study(other)
    (tmp_path / "other_space.py").write_text(LEARNING_RATE_SPACE)
    other = dataclasses.replace(spec, space=str(tmp_path / "other_space.py"))
    with pytest.raises(ConfigError, match=r"was started with --space=.*/space\.py, not .*other"):
        tuning.open_study(other)
    with pytest.raises(ConfigError, match="--storage: cannot open nope://"):
        tuning.open_study(tuning.StudySpec(config="fast", workdir=tmp_path, storage="nope://x"))


def tune_command(spec: tuning.StudySpec, trials: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "flaxmnist.tune",
        f"--workdir={spec.workdir}",
        f"--config={spec.config}",
        f"--space={spec.space}",
        f"--trials={trials}",
        *extra,
    ]


def started_trials(output: str) -> set[int]:
    return {int(line.split()[1]) for line in output.splitlines() if line.startswith("trial ")}


@pytest.mark.slow
def test_two_workers_share_one_study_and_run_every_trial_once(tmp_path, session_compilation_cache):
    spec = study_spec(tmp_path, num_epochs=2, cache=str(session_compilation_cache))
    workers = [
        subprocess.Popen(tune_command(spec, 4, f"--seed={seed}"), stdout=subprocess.PIPE, text=True)
        for seed in (1, 2)
    ]
    outputs = [worker.communicate(timeout=240)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0]
    mine, theirs = (started_trials(output) for output in outputs)
    assert mine and theirs and not mine & theirs  # both worked, never on the same trial
    assert mine | theirs == {0, 1, 2, 3}
    trials = tuning.open_study(spec).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    for trial in trials:  # each run trained once: two epochs, one step log, no resume
        run = spec.workdir / trial.user_attrs["run"]
        assert len(json.loads((run / "history.json").read_text())) == 2
        assert (run / "metrics.json").exists()


def latest_checkpoint(run: Path) -> int:
    """The newest finished checkpoint's step in ``run`` (0 for none)."""
    return max((int(p.name) for p in run.glob("checkpoints/*") if p.name.isdigit()), default=0)


def stop_after_a_new_checkpoint(worker: subprocess.Popen, run: Path, signum: int) -> None:
    """Sends ``signum`` to ``worker`` once ``run`` holds a checkpoint newer than now."""
    before, deadline = latest_checkpoint(run), time.monotonic() + 120
    while latest_checkpoint(run) <= before:
        assert worker.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(worker.pid, signum)
    worker.wait(timeout=60)


@pytest.mark.slow
def test_an_interrupted_then_killed_trial_is_resumed_until_it_finishes(
    tmp_path, session_compilation_cache
):
    spec = study_spec(tmp_path, num_epochs=30, cache=str(session_compilation_cache))
    run = spec.workdir / "trials/0000"
    command = tune_command(spec, 1, "--heartbeat_s=1")
    interrupted = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stop_after_a_new_checkpoint(interrupted, run, signal.SIGINT)
    assert interrupted.returncode == 130
    assert interrupted.stderr.read().decode().splitlines()[-1].startswith("error: interrupted")
    killed = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop_after_a_new_checkpoint(killed, run, signal.SIGKILL)  # no heartbeats from now on
    assert len(json.loads((run / "history.json").read_text())) < 30

    last = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert last.returncode == 0, last.stderr
    assert "resuming" in last.stdout and "trial 2 complete" in last.stdout
    trials = tuning.open_study(spec).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert {t.user_attrs["run"] for t in trials} == {"trials/0000"}
    assert trials[2].params == trials[0].params
    epochs = [record["epoch"] for record in json.loads((run / "history.json").read_text())]
    assert epochs == list(range(1, 31))  # resumed twice, no epoch trained twice
    assert json.loads((run / "metrics.json").read_text())["epochs_completed"] == 30


def test_the_example_space_gives_valid_configs_for_every_preset():
    space = tuning.load_space(str(REPO_ROOT / "experiments" / "search_space.py"))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for preset in configs.preset_names():
        trial = study.ask()
        config, overrides = tuning.trial_config(configs.load(preset), space, trial)
        assert set(trial.params) <= set(overrides) | {"schedule", "batch_size"}
        assert config.learning_rate == trial.params["learning_rate"]
        assert config.augment.translate == trial.params["augment.translate"]
        study.tell(trial, 0.5)


@pytest.mark.slow
def test_bad_input_to_the_command_is_one_line_and_leaves_nothing(tmp_path):
    workdir = tmp_path / "study"
    for args, message in [
        (["--trials=0"], "error: --trials: 0 is not a positive integer"),
        ([f"--space={tmp_path}/no.py"], f"error: --space: file {tmp_path}/no.py does not exist"),
        (["--storage=nope://x"], "error: --storage: cannot open nope://x (Can't load plugin"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "flaxmnist.tune", f"--workdir={workdir}", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2
        assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
        assert not workdir.exists()
    without_optuna = (  # as where the tune extra is not installed
        "import runpy, sys\n"
        "sys.modules['optuna'] = None\n"
        f"sys.argv = ['tune', '--workdir={workdir}']\n"
        "runpy.run_module('flaxmnist.tune', run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", without_optuna], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert (
        result.stderr == "error: python -m flaxmnist.tune needs Optuna: pip install -e '.[tune]'\n"
    )
