"""Hyper-parameter tuning with Optuna: TPE sampling, median pruning, a run directory per trial.

The library behind ``python -m flaxmnist.tune``. A study lives in an Optuna storage: SQLite in
the work directory by default (``WORKDIR/study.db``, nothing to start), or any SQLAlchemy URL
(PostgreSQL) that many machines share; messages show such a URL with its password hidden
(:func:`shown_url`). Every trial is a normal run,
:func:`flaxmnist.training.loop.train_and_evaluate` into ``WORKDIR/trials/NNNN``, scored by its
validation accuracy, which it reports after every epoch so that the median pruner can stop a
hopeless trial early. Any number of workers can open one study:

* workers on one machine take turns, under a file lock, to count the study's trials and start
  the next one, so a study of ``N`` trials runs exactly ``N`` (across machines, with one storage
  and a work directory each, a study may overshoot by one trial per extra worker);
* a worker killed mid-trial stops sending heartbeats; after three missed beats its trial is
  marked failed and queued again, and the next worker resumes it from the trial's checkpoints
  (a worker stopped by Ctrl-C queues its trial again itself);
* a trial whose loss diverges is pruned (a bad region of the space), not an error.

After every trial the worker writes ``results.csv`` / ``results.md`` (best first) and
``best_config.py``, a config file that trains the best trial with
``python -m flaxmnist.train --config=WORKDIR/best_config.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import logging
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ml_collections
import optuna
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from flaxmnist import config_schema, configs, plugins
from flaxmnist.config_validation import validate_config
from flaxmnist.console import say
from flaxmnist.errors import ConfigError, DivergedError, one_line
from flaxmnist.storage import files
from flaxmnist.training import loop
from flaxmnist.training.interruption import TrainingInterruptedError

# RDBStorage's heartbeats and the stale-trial retry are marked experimental.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SearchSpace = Callable[[optuna.Trial, ml_collections.ConfigDict], None]

HIDDEN = "***"
# A password in a URL: from ``scheme://user:`` to the last ``@`` before a blank (a password may
# hold an unescaped ``@``), and a ``password=`` query parameter.
URL_PASSWORD = re.compile(r"(\b[A-Za-z][\w+.-]*://[^\s:/@]*:)(\S*)@")
QUERY_PASSWORD = re.compile(r"(\bpassword=)([^&\s]*)", re.IGNORECASE)

STUDY_FILE = "study.db"
LOCK_FILE = ".study.lock"
OPTIMIZE_LOGGER = "optuna.study._optimize"  # logs a failed trial's traceback, then raises it
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
BEST_CONFIG = "best_config.py"
# Trials score on validation data, never on the test set: a preset without a validation split
# holds out this fraction of the training split while it is tuned.
VALIDATION_FRACTION = 0.1
# A trial whose worker died (no heartbeat) or was interrupted is queued again, at most twice,
# with its run directory and reports: the next worker resumes it from its checkpoints.
RETRY = optuna.storages.RetryHeartbeatStaleTrialCallback(
    max_retry=2, inherit_intermediate_values=True
)


def shown_url(url: str) -> str:
    """``url`` as messages show it: its password, if any, replaced by ``***``."""
    with contextlib.suppress(ArgumentError, ValueError):  # else the patterns alone hide it
        url = make_url(url).render_as_string(hide_password=True)
    return hide_url_passwords(url)


def hide_url_passwords(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``."""
    text = URL_PASSWORD.sub(rf"\1{HIDDEN}@", text)
    return QUERY_PASSWORD.sub(rf"\1{HIDDEN}", text)


def hide_passwords(text: str, url: str) -> str:
    """``text`` (a driver's error message, say) without ``url``'s password or any URL's.

    ``url``'s password is hidden wherever it stands alone, not inside a longer word: a password
    ``p`` leaves the word "password" as it is.
    """
    text = hide_url_passwords(text)
    for password in url_passwords(url):
        text = re.sub(rf"(?<!\w){re.escape(password)}(?!\w)", HIDDEN, text)
    return text


def url_passwords(url: str) -> set[str]:
    """The passwords in ``url``: as written, and as SQLAlchemy decodes them."""
    found = {match[2] for match in URL_PASSWORD.finditer(url)}
    found |= {match[2] for match in QUERY_PASSWORD.finditer(url)}
    with contextlib.suppress(ArgumentError, ValueError):
        found.add(make_url(url).password or "")
    return found - {"", HIDDEN}


def default_space(trial: optuna.Trial, config: ml_collections.ConfigDict) -> None:
    """The search space without ``--space``: learning rate (log scale) and batch size."""
    config.learning_rate = trial.suggest_float("learning_rate", 1e-4, 3e-2, log=True)
    config.batch_size = trial.suggest_categorical("batch_size", [32, 64, 128, 256])


def load_space(path: str) -> SearchSpace:
    """The ``suggest(trial, config)`` function of the Python file at ``path`` ("" = default).

    Raises:
      ConfigError: for a missing file, one that fails to load, or one without ``suggest``.
    """
    if not path:
        return default_space
    return plugins.function_from_file(path, "suggest", "--space: file", "suggest(trial, config)")


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """What a study tunes and where it lives (the flags of ``python -m flaxmnist.tune``).

    Attributes:
      config: the preset name or config file every trial starts from.
      workdir: the folder of the trial runs, the results and the default SQLite storage.
      space: the search-space file (``suggest(trial, config)``); "" for :func:`default_space`.
      storage: an SQLAlchemy URL; "" for ``sqlite:///WORKDIR/study.db``.
      study_name: the study's name in the storage.
      seed: the TPE sampler's seed (None: fresh randomness; give each worker its own seed).
      heartbeat_s: seconds between a running trial's heartbeats.
    """

    config: str
    workdir: Path
    space: str = ""
    storage: str = ""
    study_name: str = "flaxmnist"
    seed: int | None = None
    heartbeat_s: int = 10

    @property
    def storage_url(self) -> str:
        """The storage URL (SQLite in the work directory by default)."""
        return self.storage or f"sqlite:///{(self.workdir / STUDY_FILE).resolve()}"

    @property
    def shown_storage(self) -> str:
        """The storage URL as messages show it, without its password."""
        return shown_url(self.storage_url)

    @property
    def base(self) -> str:
        """``config`` as ``best_config.py`` names it: a preset, or an absolute path."""
        path, sep, arg = self.config.partition(":")
        if path in configs.preset_names():
            return self.config
        return str(Path(path).resolve()) + sep + arg


@contextlib.contextmanager
def study_lock(workdir: Path) -> Iterator[Callable[[], None]]:
    """Holds ``WORKDIR/.study.lock`` (an exclusive ``flock``); yields a function that releases it.

    Held while a worker counts the trials and starts one, so two workers on this machine never
    both start the last trial. The kernel drops the lock of a killed worker.
    """
    fd = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    held = [True]

    def release() -> None:
        if held[0]:
            held[0] = False
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    try:
        yield release
    finally:
        release()


def without_traceback(record: logging.LogRecord) -> bool:
    """Whether to keep an Optuna log record: not its traceback of a failed trial.

    The trial's exception is raised on to :func:`tune`: it ends the worker in one error line
    (or, for a bug, a traceback in error.log).
    """
    return record.exc_info is None


def open_study(spec: StudySpec) -> optuna.Study:
    """Creates the study or opens it (a second worker, or a rerun continuing it).

    Raises:
      ConfigError: when the storage cannot be opened, or the study was started from another
        ``--config`` or ``--space``.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger(OPTIMIZE_LOGGER).addFilter(without_traceback)
    engine = {"connect_args": {"timeout": 60}} if spec.storage_url.startswith("sqlite") else {}
    try:
        storage = optuna.storages.RDBStorage(
            spec.storage_url,
            engine_kwargs=engine,
            heartbeat_interval=spec.heartbeat_s,
            grace_period=3 * spec.heartbeat_s,
            heartbeat_stale_trial_callback=RETRY,
        )
        study = optuna.create_study(
            storage=storage,
            study_name=spec.study_name,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=spec.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2),
            load_if_exists=True,
        )
    except Exception as e:  # SQLAlchemy's and Optuna's errors for a bad URL or database
        reason = hide_passwords(one_line(e), spec.storage_url)
        raise ConfigError(f"--storage: cannot open {spec.shown_storage} ({reason})") from None
    for key, value in (("config", spec.base), ("space", spec.space)):
        recorded = study.user_attrs.get(key)
        if recorded is None:
            study.set_user_attr(key, value)
        elif recorded != value:
            raise ConfigError(
                f"study {spec.study_name!r} in {spec.shown_storage} was started with "
                f"--{key}={recorded}, not {value}; use another --workdir or --study_name"
            )
    return study


def trial_config(
    base: ml_collections.ConfigDict, space: SearchSpace, trial: optuna.Trial
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
    """The trial's config and the fields its suggestions changed (flattened names).

    The config is locked while ``space`` runs, so a misspelt field is an error, not a new field.

    Raises:
      ConfigError: when ``space`` fails or its values do not validate.
    """
    config = ml_collections.ConfigDict(base.to_dict())
    config.lock()
    try:
        space(trial, config)
    except optuna.TrialPruned:
        raise
    except Exception as e:
        raise ConfigError(
            f"--space: suggest() failed ({type(e).__name__}: {one_line(e)})"
        ) from None
    before = config_schema.flatten(base.to_dict())
    changed = config_schema.flatten(config.to_dict())
    overrides = {k: v for k, v in changed.items() if before[k] != v}
    if config.validation_fraction == 0:
        config.validation_fraction = VALIDATION_FRACTION
    validate_config(config)
    return config, overrides


def objective(
    trial: optuna.Trial, spec: StudySpec, base: ml_collections.ConfigDict, space: SearchSpace
) -> float:
    """Trains one trial; returns the validation accuracy of the epoch whose weights it tested.

    A retried trial inherits its run directory (a user attribute) and resumes there.
    """
    config, overrides = trial_config(base, space, trial)
    run = trial.user_attrs.get("run") or f"trials/{trial.number:04d}"
    trial.set_user_attr("run", run)
    trial.set_user_attr("overrides", overrides)

    def report(record: dict[str, Any]) -> None:
        trial.report(record["val_accuracy"], record["epoch"])
        if trial.should_prune():
            trial.set_user_attr("note", f"pruned after epoch {record['epoch']}")
            raise optuna.TrialPruned()

    try:
        metrics = loop.train_and_evaluate(config, spec.workdir / run, on_epoch=report)
    except DivergedError as e:
        trial.set_user_attr("note", one_line(e).split(";")[0])
        raise optuna.TrialPruned() from None
    trial.set_user_attr("test_accuracy", metrics["test_accuracy"])
    trial.set_user_attr("epochs", metrics["epochs_completed"])
    history = json.loads((spec.workdir / run / "history.json").read_text())
    return history[metrics["evaluated_epoch"] - 1]["val_accuracy"]


def start_trial(
    release: Callable[[], None],
    started: list[int],
    spec: StudySpec,
    base: ml_collections.ConfigDict,
    space: SearchSpace,
    trial: optuna.Trial,
) -> float:
    """The objective as a worker runs it: the trial exists now, so other workers may start."""
    release()
    started.append(trial.number)
    return objective(trial, spec, base, space)


def count_trials(study: optuna.Study) -> tuple[int, int]:
    """(finished trials — complete or pruned —, running trials)."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    finished = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
    return finished, states.count(TrialState.RUNNING)


def tune(spec: StudySpec, num_trials: int) -> optuna.Study:
    """Works on the study until it holds ``num_trials`` finished trials; returns it.

    Trains one trial at a time; at the end waits for other workers' last trials (or for them to
    go stale and be queued again, then runs them); writes the results after every trial.

    Raises:
      FlaxmnistError: for a bad config, space or storage (before any trial), or from a trial
        (its space's values, a locked run directory, an interruption: exit 128 + signal).
    """
    base, space = configs.load(spec.config), load_space(spec.space)
    created = not spec.workdir.exists()
    spec.workdir.mkdir(parents=True, exist_ok=True)
    try:
        with study_lock(spec.workdir):  # creating the SQLite tables is not safe to race
            study = open_study(spec)
    except ConfigError:
        if created:  # a bad --storage leaves nothing behind
            shutil.rmtree(spec.workdir)
        raise
    while True:
        with study_lock(spec.workdir) as release:
            optuna.storages.fail_stale_trials(study)
            finished, running = count_trials(study)
            if finished >= num_trials:
                break
            if finished + running < num_trials:  # a queued trial first, else a new one
                started: list[int] = []
                run_one = functools.partial(start_trial, release, started, spec, base, space)
                try:
                    study.optimize(run_one, n_trials=1, gc_after_trial=False)
                except TrainingInterruptedError:
                    RETRY(study, study.trials[started[0]])  # a rerun resumes it
                    raise
                finally:
                    write_results(study, spec)
                say(describe_trial(study.trials[started[0]]))
                continue
        time.sleep(spec.heartbeat_s)  # other workers' trials are still running
    write_results(study, spec)
    return study


def describe_trial(trial: optuna.trial.FrozenTrial) -> str:
    """``trial 3 complete: val accuracy 98.12 % (learning_rate=0.003, batch_size=64)``."""
    params = ", ".join(f"{k}={format_value(v)}" for k, v in trial.params.items())
    score = trial.value if trial.value is not None else last_report(trial)
    text = f"trial {trial.number} {trial.state.name.lower()}"
    if score is not None:
        text += f": val accuracy {100 * score:.2f} %"
    note = trial.user_attrs.get("note")
    return text + f" ({params})" + (f"; {note}" if note else "")


def last_report(trial: optuna.trial.FrozenTrial) -> float | None:
    """The last validation accuracy a trial reported (a pruned one has no value)."""
    if not trial.intermediate_values:
        return None
    return trial.intermediate_values[max(trial.intermediate_values)]


def format_value(value: Any) -> str:
    """A parameter for a table: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def result_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: complete ones best first, then pruned ones, then the rest by number."""
    trials = study.get_trials(deepcopy=False)
    names = sorted({name for t in trials for name in t.params})
    order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1}

    def key(t: optuna.trial.FrozenTrial) -> tuple:
        score = t.value if t.value is not None else last_report(t)
        return order.get(t.state, 2), -(score or 0.0) if t.state in order else t.number

    rows = []
    for t in sorted(trials, key=key):
        score = t.value if t.value is not None else last_report(t)
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name.lower(),
                "val_accuracy": score,
                "test_accuracy": t.user_attrs.get("test_accuracy"),
                "epochs": t.user_attrs.get("epochs", len(t.intermediate_values)),
                **{name: t.params.get(name) for name in names},
                "run": t.user_attrs.get("run", ""),
                "note": t.user_attrs.get("note", ""),
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (accuracies in %)."""

    def cell(name: str, value: Any) -> str:
        if value is None:
            return "-"
        if name.endswith("accuracy"):
            return f"{100 * value:.2f} %"
        return format_value(value)

    header = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
    body = "".join("| " + " | ".join(cell(k, v) for k, v in r.items()) + " |\n" for r in rows)
    return header + body


def write_results(study: optuna.Study, spec: StudySpec) -> None:
    """Writes ``results.csv``, ``results.md`` and (once a trial completed) ``best_config.py``."""
    rows = result_rows(study)
    if not rows:
        return
    files.write_csv_atomic(spec.workdir / RESULTS_CSV, rows)
    files.write_text_atomic(spec.workdir / RESULTS_MD, markdown_table(rows))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = max(complete, key=lambda t: t.value)
        files.write_text_atomic(spec.workdir / BEST_CONFIG, best_config_text(spec, best))


def best_config_text(spec: StudySpec, trial: optuna.trial.FrozenTrial) -> str:
    """A config file: the study's base config with the best trial's changed fields."""
    overrides = dict(sorted(trial.user_attrs.get("overrides", {}).items()))
    score = f"{100 * trial.value:.2f} %"
    return f'''"""Trial {trial.number} of the study in {spec.workdir}: validation accuracy {score}.

The best trial so far, written by python -m flaxmnist.tune; train it with
python -m flaxmnist.train --config={spec.workdir / BEST_CONFIG}
"""

from flaxmnist import configs, plugins

BASE = {spec.base!r}
OVERRIDES = {overrides!r}


def get_config():
    """The base config with the tuned fields."""
    config = configs.load(BASE)
    config.update_from_flattened_dict(OVERRIDES)
    return config
'''
