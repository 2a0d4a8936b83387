"""Write failures at every write site: each write of each command fails midway, then is judged.

    python tests/drills/write_faults.py               # every site, ENOSPC, EIO and a full disk
    python tests/drills/write_faults.py --only=train  # one command's sites
    python tests/drills/write_faults.py --kinds=ENOSPC --hits=first
    python tests/drills/write_faults.py --only=train --sites=orbax   # sites matching a regex
    python tests/drills/write_faults.py --combine=a.json,b.json      # one report of two runs
    python tests/drills/write_faults.py --combine=old.json,new.json --replace  # new.json's
                                                    # commands rerun: their trials replace old's

The sites are found, not listed: every command (training, new and resumed; evaluation; export;
comparison; tfds preparation of IDX files, of a damaged dataset and of the stock ``mnist``; a
tuning study; all on small synthetic data) first runs with an injector loaded into its process
at start-up (a generated ``sitecustomize.py``) that counts every write-type call on a file under
the trial folder: ``write`` (on the raw file under any ``open``, ``os.fdopen``, ``Path.write_*``,
``shutil`` copy, or ``os.write``), ``fsync``, ``rename`` / ``replace`` and ``mkdir``. A site is
the call, where in flaxmnist it comes from (the innermost frame in ``flaxmnist/`` other than the
atomic-write helpers; a library's frame for a library's own threads) and the file's path with its
temp-name and digits generalised. Then each site is made to fail, in a fresh copy of the trial
folder, at its first and at its last hit, in three ways:

* ``ENOSPC`` / ``EIO``: the write at that hit writes half its bytes and returns the short count,
  as Linux does on a disk filling up, and the next raises ``OSError``; from then on every write,
  ``fsync`` and ``mkdir`` under the folder fails the same way (the disk stays full or broken). A
  ``fsync``, ``rename`` or ``mkdir`` site raises at once.
* ``full``: at that hit the folder's own tmpfs is filled to the last byte and the call goes on:
  the kernel fails whatever comes next, the writes of native code included (Orbax's TensorStore,
  TensorFlow's record writers, SQLite), which no Python-level injector sees.

A trial passes when the command exits 2 with its last stderr line the only ``error: ...`` line and
no traceback; every file there before is byte-identical or a complete newer version; no file
ends truncated under its final name (checked by its format: JSON, CSV, TFRecord framing and
CRCs, PNG end chunk, ``np.load``, ``jax.export.deserialize``, SQLite's integrity check, ...;
checkpoints by restoring them); no temp file or staging folder is left (an unfinished Orbax
checkpoint folder must be gone after the rerun); and a rerun without faults exits 0 with every
output an uninterrupted run writes the same way byte-identical to it (for training: ``steps.csv``
and the final parameters; for a study, whose failed trial stays failed, every output complete).
A fault that fires in a run that still exits 0 passes only when every output is complete and
equal to the uninterrupted run's. A command still running 10 s after its error line is hung.

Writes ``experiments/results/write_faults.json`` and ``.md`` (``--noreport``: neither); exits 1
when any trial failed. Drill runs of different trials (say, in two checkouts at one commit, to
use two cores' time, or one with ENOSPC and one with EIO) make one report with ``--combine``:
each run's command and commit are named above the tables; with ``--replace``, a later run's
commands (rerun on newer code) replace those commands' sites and trials of the earlier runs,
and the report names them. The ``full`` trials mount tmpfs
folders and need root; elsewhere they are skipped. Not covered: the JAX compilation cache (kept
outside the trial folder: the fault matrix's cache torture fills it and makes it read-only) and
other processes than the command's own (a hit is counted per process).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a script, sys.path[0] is tests/drills: make `drills` importable
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from absl import flags, logging

from drills.common import REPO_ROOT, mount_tmpfs, snapshot, unmount
from drills.injector import KINDS, PASS, plan_environment, read_log, write_sitecustomize
from drills.write_judge import Reference, alike, all_paths, digests, final_problems, state_problems
from drills.write_scenarios import SCENARIOS, Scenario, run_command, temp_environment
from flaxmnist import cli, console, errors
from flaxmnist.cpu import machine_name
from flaxmnist.errors import ConfigError
from flaxmnist.storage import files
from flaxmnist.testing import revision, write_idx_dataset

RESULTS_JSON = REPO_ROOT / "experiments" / "results" / "write_faults.json"
RESULTS_MD = REPO_ROOT / "experiments" / "results" / "write_faults.md"
TMPFS_SIZE = "256m"
HIT_CHOICES = ("first", "last")


@dataclasses.dataclass(frozen=True)
class Site:
    """A write site: ``op location pattern`` and how often an uninterrupted run hits it."""

    key: str
    hits: int


@dataclasses.dataclass
class Trial:
    """One planned fault and its verdict (no problems: passed)."""

    scenario: str
    site: str
    hit: int
    kind: str
    fired: bool = False
    code: int | None = None
    last_line: str = ""
    problems: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def result(self) -> str:
        """``pass``, ``FAIL`` or ``not reached`` (the site was not hit this time)."""
        if not self.fired:
            return "not reached"
        return "FAIL" if self.problems else "pass"


class Workspace:
    """The drill's folders: shared data and cache, and the trial folder on a tmpfs of its own.

    The trial folder ``disk/trial`` is where every command writes; ``disk`` is a tmpfs when it
    can be mounted (root), so that ``full`` trials fill it and not the machine's disk.
    """

    def __init__(self, shared: Path):
        self.shared = shared
        self.disk, self.root = shared / "disk", shared / "disk" / "trial"
        self.filler = self.disk / "filler"
        self.disk.mkdir(parents=True)
        self.tmpfs = mount_tmpfs(self.disk, TMPFS_SIZE)
        write_idx_dataset(shared / "data" / "mnist", num_train=512, num_test=100)
        write_sitecustomize(shared / "site")
        self._logs = 0

    def close(self) -> None:
        """Unmounts the tmpfs (if one was mounted)."""
        if self.tmpfs:
            unmount(self.disk)

    def reset(self, template: Path | None) -> None:
        """Empties the trial folder, then copies ``template`` into it (if given)."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.filler.unlink(missing_ok=True)
        if template is None:
            self.root.mkdir()
        else:
            shutil.copytree(template, self.root, symlinks=True)

    def keep(self, name: str) -> Path:
        """Copies the trial folder to ``shared/name`` (a template or a reference); returns it."""
        target = self.shared / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.root, target, symlinks=True)
        return target

    def plan(self, site: str | None = None, hit: int = 0, kind: str | None = None) -> dict:
        """The environment that loads the injector with a fresh log (and a fault, if given)."""
        self._logs += 1
        log = self.shared / "logs" / f"{self._logs:04d}.jsonl"
        log.parent.mkdir(exist_ok=True)
        plan = {"root": str(self.root), "log": str(log), "site": site, "hit": hit, "kind": kind}
        plan_env = plan_environment(self.shared / "site", {**plan, "filler": str(self.filler)})
        return {**temp_environment(self.shared), **plan_env}


def sites_of(lines: list[dict[str, Any]]) -> list[Site]:
    """The sites of a log, in the order they were first hit, with their hit counts."""
    counts = collections.Counter(line["site"] for line in lines)
    return [Site(key, counts[key]) for key in dict.fromkeys(line["site"] for line in lines)]


# --- trials -----------------------------------------------------------------------------------


def make_template(ws: Workspace, scenario: Scenario) -> Path:
    """The trial folder as it is before ``scenario``'s command (kept under the shared folder)."""
    ws.reset(None)
    scenario.setup(ws.root, ws.shared)
    return ws.keep(f"template-{scenario.name}")


def discover(ws: Workspace, scenario: Scenario, template: Path) -> tuple[list[Site], Reference]:
    """The write sites of ``scenario``'s command, and what two uninterrupted runs of it leave.

    The first run counts the sites; files both runs write byte-identical are deterministic.
    """
    runs = []
    for count in (True, False):
        ws.reset(template)
        env = ws.plan() if count else temp_environment(ws.shared)
        outcome = run_command(scenario.argv(ws.root, ws.shared), env, scenario.timeout)
        if outcome.code != 0:
            raise RuntimeError(f"{scenario.name}: uninterrupted run failed: {outcome.last_line()}")
        runs.append(snapshot(ws.root))
        if count:
            sites, paths, found = sites_of(read_log(env)), all_paths(ws.root), digests(ws.root)
            if not sites:
                raise RuntimeError(f"{scenario.name}: the injector saw no write (not loaded?)")
    first, second = runs
    same = {
        relative for relative, data in first.items() if alike(relative, second.get(relative), data)
    }
    return sites, Reference(first, paths, same, found)


def hits_to_fail(site: Site, choices: tuple[str, ...]) -> list[int]:
    """The hits of ``site`` to fail: its ``first`` and / or ``last``."""
    return sorted({1 if choice == "first" else site.hits for choice in choices})


def run_trial(
    ws: Workspace, scenario: Scenario, template: Path, reference: Reference, trial: Trial
) -> Trial:
    """Runs ``scenario``'s command with ``trial``'s fault, judges it, reruns it; fills ``trial``."""
    start = time.monotonic()
    ws.reset(template)
    before = snapshot(ws.root)
    argv = scenario.argv(ws.root, ws.shared)
    env = ws.plan(trial.site, trial.hit, trial.kind)
    outcome = run_command(argv, env, scenario.timeout)
    ws.filler.unlink(missing_ok=True)  # the disk has room again
    trial.fired = any(
        line["site"] == trial.site and line["hit"] == trial.hit and line["action"] != PASS
        for line in read_log(env)
    )
    trial.code, trial.last_line = outcome.code, outcome.last_line()
    if trial.fired:
        trial.problems = state_problems(ws.root, before, reference)
        if outcome.code == 0:  # the fault was absorbed: only whole, equal outputs will do
            trial.notes.append("exit 0 after the fault")
            trial.problems += final_problems(ws.root, reference, scenario.exact)
        else:
            trial.problems += outcome.problems()
            trial.problems += rerun_problems(ws, scenario, reference)
    trial.seconds = time.monotonic() - start
    return trial


def rerun_problems(ws: Workspace, scenario: Scenario, reference: Reference) -> list[str]:
    """Reruns the command without faults: it must exit 0 and end as an uninterrupted run."""
    outcome = run_command(
        scenario.argv(ws.root, ws.shared), temp_environment(ws.shared), scenario.timeout
    )
    if outcome.code != 0:
        return [f"rerun: exit {outcome.code}: {outcome.last_line()}"]
    return [f"rerun: {p}" for p in final_problems(ws.root, reference, scenario.exact)]


@dataclasses.dataclass(frozen=True)
class Choice:
    """Which trials to run: the kinds of fault, the hits of each site, the sites (a regex)."""

    kinds: tuple[str, ...] = KINDS
    hits: tuple[str, ...] = HIT_CHOICES
    sites: str = ""


def planned_trials(scenario: Scenario, sites: list[Site], choice: Choice) -> list[Trial]:
    """A trial for every chosen site, kind and hit (only ``full`` at ``covered`` sites)."""
    return [
        Trial(scenario.name, site.key, hit, kind)
        for site in sites
        if re.search(choice.sites, site.key)
        for kind in choice.kinds
        if kind == "full" or not re.search(scenario.covered, site.key)
        for hit in hits_to_fail(site, choice.hits)
    ]


def run_scenario(
    ws: Workspace, scenario: Scenario, choice: Choice
) -> tuple[list[Site], list[Trial]]:
    """Finds ``scenario``'s sites and runs its trials, printing each verdict as it lands.

    Without a tmpfs, the ``full`` trials are left out.
    """
    template = make_template(ws, scenario)
    sites, reference = discover(ws, scenario, template)
    console.say(f"[write faults] {scenario.name}: {len(sites)} write sites")
    if not ws.tmpfs:
        choice = dataclasses.replace(choice, kinds=tuple(k for k in choice.kinds if k != "full"))
    trials = planned_trials(scenario, sites, choice)
    for trial in trials:
        run_trial(ws, scenario, template, reference, trial)
        console.say(
            f"[write faults]   {trial.result:<11} {trial.kind:<6} hit {trial.hit} {trial.site}"
            + (f": {'; '.join(trial.problems)[:400]}" if trial.problems else "")
        )
    return sites, trials


# --- report -----------------------------------------------------------------------------------


def cell(trials: list[Trial]) -> str:
    """One table cell: the verdicts of a site's trials of one kind (first hit, then last)."""
    if not trials:
        return "-"
    return ", ".join(f"{t.result} (hit {t.hit})" if len(trials) > 1 else t.result for t in trials)


def table(sites: dict[str, list[Site]], trials: list[Trial], kinds: tuple[str, ...]) -> str:
    """The markdown table: a row per site, a column per kind of fault."""
    lines = [
        "| command | site | hits | " + " | ".join(kinds) + " |",
        "|---|---|---|" + "---|" * len(kinds),
    ]
    for scenario, found in sites.items():
        for site in found:
            mine = [t for t in trials if t.scenario == scenario and t.site == site.key]
            cells = [cell([t for t in mine if t.kind == kind]) for kind in kinds]
            lines.append(f"| {scenario} | `{site.key}` | {site.hits} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(sites: dict[str, list[Site]], trials: list[Trial]) -> str:
    """The markdown table of each command's sites and trial verdicts."""
    lines = [
        "| command | sites | trials | passed | failed | not reached | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for scenario, found in sites.items():
        mine = [t for t in trials if t.scenario == scenario]
        counts = collections.Counter(t.result for t in mine)
        lines.append(
            f"| {scenario} | {len(found)} | {len(mine)} | {counts['pass']} | {counts['FAIL']} "
            f"| {counts['not reached']} | {sum(t.seconds for t in mine) / 60:.0f} |"
        )
    return "\n".join(lines)


def summary(trials: list[Trial]) -> str:
    """``N trials: P passed, F failed, U not reached``."""
    counts = collections.Counter(t.result for t in trials)
    return (
        f"{len(trials)} trials: {counts['pass']} passed, {counts['FAIL']} failed, "
        f"{counts['not reached']} not reached"
    )


def run_header(command: str, commit: str, trials: list[Trial], pending: Sequence[str] = ()) -> dict:
    """What one drill run records about itself: command, machine, date, commit and summary.

    ``commit``: the code's, read before the drill wrote anything (its own result files would
    make the checkout look modified). ``pending``: the commands asked for and not run yet (the
    summary names them).
    """
    not_run = f"; not run yet: {', '.join(pending)}" if pending else ""
    return {
        "command": command,
        "machine": machine_name(),
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit,
        "summary": summary(trials) + not_run,
    }


def write_report(
    runs: list[dict],
    sites: dict[str, list[Site]],
    trials: list[Trial],
    replaced: Sequence[str] = (),
) -> None:
    """Writes the JSON results and the markdown table (``experiments/results/write_faults.*``).

    ``runs``: the headers (:func:`run_header`) of the drill runs whose trials these are.
    ``replaced``: the commands whose trials are a later run's, replacing an earlier run's.
    """
    kinds = tuple(kind for kind in KINDS if any(t.kind == kind for t in trials))
    files.write_json_atomic(
        RESULTS_JSON,
        {
            "runs": runs,
            "sites": {
                name: [dataclasses.asdict(s) for s in found] for name, found in sites.items()
            },
            "trials": [{**dataclasses.asdict(t), "result": t.result} for t in trials],
            "replaced": list(replaced),
        },
    )
    failures = [
        f"- {t.scenario}, {t.kind} at hit {t.hit} of `{t.site}`: exit {t.code}; "
        + "; ".join(t.problems)
        for t in trials
        if t.result == "FAIL"
    ]
    runs_text = [
        f"- `{run['command']}` on {run['machine']}, {run['date']} (commit {run['commit']}): "
        f"{run['summary']}."
        for run in runs
    ]
    text = [
        "# Write faults",
        "",
        *runs_text,
        *(
            [f"- Trials of {', '.join(replaced)}: a later run's, replacing the earlier runs'."]
            if replaced
            else []
        ),
        "",
        f"All together: {summary(trials)}.",
        "",
        summary_table(sites, trials),
        "",
        table(sites, trials, kinds),
        "",
        *(failures or ["No trial failed."]),
    ]
    files.write_text_atomic(RESULTS_MD, "\n".join(text) + "\n")


def combine(paths: Sequence[str], replace: bool = False) -> None:
    """Writes one report from the JSON results of drill runs that covered different trials.

    The runs may share commands (one ran ENOSPC, another EIO): a command's sites are the union
    of theirs. The same trial (command, site, hit, kind) in two runs is refused, unless
    ``replace``: then a file's commands replace the sites and trials of those commands that the
    files before it hold (a rerun on newer code).
    """
    runs: list[dict] = []
    sites: dict[str, list[Site]] = {}
    trials: dict[tuple, Trial] = {}
    replaced: dict[str, None] = {}
    fields = {f.name for f in dataclasses.fields(Trial)}
    for path in paths:
        try:
            saved = json.loads(Path(path).read_text())
            saved_runs, saved_sites, saved_trials = saved["runs"], saved["sites"], saved["trials"]
            found_sites = {name: [Site(**s) for s in found] for name, found in saved_sites.items()}
            found_trials = [Trial(**{k: t[k] for k in t if k in fields}) for t in saved_trials]
            replaced.update(dict.fromkeys(saved.get("replaced", [])))
        except (OSError, ValueError) as e:
            raise ConfigError(f"--combine: {path}: cannot read it ({e})") from None
        except (KeyError, TypeError, AttributeError):
            raise ConfigError(f"--combine: {path}: holds no drill run's results") from None
        runs += saved_runs
        rerun = [name for name in found_sites if name in sites] if replace else []
        for name in rerun:  # a later run's commands: their earlier sites and trials go
            del sites[name]
            trials = {key: trial for key, trial in trials.items() if key[0] != name}
            replaced[name] = None
        for name, found in found_sites.items():
            known = sites.setdefault(name, [])
            keys = {site.key for site in known}
            known += [site for site in found if site.key not in keys]
        for trial in found_trials:
            key = (trial.scenario, trial.site, trial.hit, trial.kind)
            if key in trials:
                raise ConfigError(
                    f"--combine: {path} repeats a trial: {trial.kind} at hit {trial.hit} of "
                    f"{trial.scenario}'s `{trial.site}`"
                )
            trials[key] = trial
    order = [name for name in SCENARIOS if name in sites]
    write_report(runs, {name: sites[name] for name in order}, list(trials.values()), list(replaced))
    console.say(summary(list(trials.values())))


# --- command line -----------------------------------------------------------------------------


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines the command's flags in ``flag_values`` (``flags.FLAGS`` when run as a script)."""
    flags.DEFINE_list("only", list(SCENARIOS), "Comma-separated commands.", flag_values=flag_values)
    flags.DEFINE_list("kinds", list(KINDS), "Comma-separated faults.", flag_values=flag_values)
    flags.DEFINE_list(
        "hits", list(HIT_CHOICES), "Which hit of each site fails.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "sites", "", "Only the sites matching this regular expression.", flag_values=flag_values
    )
    flags.DEFINE_boolean("keep", False, "Keep the drill's folder.", flag_values=flag_values)
    flags.DEFINE_boolean(
        "report", True, "Write experiments/results/write_faults.*.", flag_values=flag_values
    )
    flags.DEFINE_list(
        "combine",
        [],
        "Run nothing: write the report from these saved results (JSON files of drill runs that "
        "covered different trials).",
        flag_values=flag_values,
    )
    flags.DEFINE_boolean(
        "replace",
        False,
        "With --combine: a later file's commands replace the earlier files' trials of them.",
        flag_values=flag_values,
    )


def check_choices(flag_values: flags.FlagValues) -> None:
    """Raises ConfigError for an unknown command, kind or hit choice, or a bad ``--sites``."""
    for name, valid in (("only", SCENARIOS), ("kinds", KINDS), ("hits", HIT_CHOICES)):
        unknown = sorted(set(getattr(flag_values, name)) - set(valid))
        if unknown:
            raise ConfigError(f"--{name}: unknown {', '.join(unknown)}; valid: {', '.join(valid)}")
    try:
        re.compile(flag_values.sites)
    except re.error as e:
        raise ConfigError(f"--sites: not a regular expression ({e})") from None


def drill(flag_values: flags.FlagValues) -> list[Trial]:
    """Runs the trials the parsed ``flag_values`` ask for; prints and writes the report.

    The report is rewritten after each command's trials, so a drill stopped part-way leaves the
    table of the commands it finished (and names the ones it did not run).
    """
    choice = Choice(tuple(flag_values.kinds), tuple(flag_values.hits), flag_values.sites)
    command, commit = " ".join(["python", *sys.argv]), revision()
    shared = Path(tempfile.mkdtemp(prefix="flaxmnist-write-faults-"))
    ws = Workspace(shared)
    sites: dict[str, list[Site]] = {}
    trials: list[Trial] = []
    try:
        for number, name in enumerate(flag_values.only, 1):
            sites[name], mine = run_scenario(ws, SCENARIOS[name], choice)
            trials += mine
            if flag_values.report:
                header = run_header(command, commit, trials, flag_values.only[number:])
                write_report([header], sites, trials)
    finally:
        ws.close()
        if not flag_values.keep:
            shutil.rmtree(shared, ignore_errors=True)
    console.say(table(sites, trials, choice.kinds))
    console.say(summary(trials))
    return trials


def main(argv: list[str]) -> None:
    """Runs the drill the command-line flags describe; exits 1 when a trial failed."""
    del argv  # cli.run refuses positional arguments
    sys.stdout.reconfigure(line_buffering=True)  # each verdict as it lands, even through a pipe
    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint it restores
    with errors.reported(RESULTS_JSON.parent):
        check_choices(flags.FLAGS)
        if flags.FLAGS.combine:
            combine(flags.FLAGS.combine, flags.FLAGS.replace)
            return
        trials = drill(flags.FLAGS)
    if any(t.result == "FAIL" for t in trials):
        sys.exit(1)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwinds: the tmpfs is unmounted
    define_flags(flags.FLAGS)
    cli.run(main)
