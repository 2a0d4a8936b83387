"""The write-fault drill (``tests/drills/write_faults.py``): its injector, its judge, a few trials.

The injector's tests run tiny Python children (no training); the slow test finds the write sites
of a 1-epoch ``dense`` run and fails four of them midway.
"""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
from drills import injector, write_faults, write_judge, write_scenarios
from drills.common import Outcome

from flaxmnist.errors import ConfigError, DataError
from flaxmnist.storage import files, scalar_log

WRITES = """\
import os, shutil, tempfile
from pathlib import Path
Path("a.txt").write_text("hello")
with open("b.bin", "wb") as f:
    f.write(b"x" * 10)
fd = os.open("c.raw", os.O_WRONLY | os.O_CREAT)
os.write(fd, b"abc")
os.fsync(fd)
os.close(fd)
fd, tmp = tempfile.mkstemp(dir=".", prefix=".d.txt.", suffix=".tmp")
with os.fdopen(fd, "w") as f:
    f.write("d")
os.replace(tmp, "d.txt")
os.makedirs("e/f")
shutil.copyfile("a.txt", "e/f/g.txt")
Path({outside!r}).write_text("not watched")
print("hello on stdout is not watched")
"""


def run_injected(tmp_path, code: str, **fault) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Runs ``code`` in a child whose injector watches ``tmp_path/root``: (result, its log)."""
    root, log = tmp_path / "root", tmp_path / "log.jsonl"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    log.unlink(missing_ok=True)
    injector.write_sitecustomize(tmp_path / "site")
    plan = {"root": str(root), "log": str(log), **fault}
    env = {**os.environ, **injector.plan_environment(tmp_path / "site", plan)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True
    )
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, lines


def only_site(lines: list[dict], op: str, pattern: str) -> str:
    """The one site of ``op`` on files named ``pattern`` in a log."""
    (site,) = {line["site"] for line in lines if line["site"].split()[::2] == [op, pattern]}
    return site


@pytest.mark.slow
def test_counting_sees_every_write_path_under_the_root_only(tmp_path):
    code = WRITES.format(outside=str(tmp_path / "outside.txt"))
    result, lines = run_injected(tmp_path, code)
    assert result.returncode == 0, result.stderr
    seen = {(line["site"].split()[0], line["site"].split()[-1]) for line in lines}
    assert seen == {
        ("write", "a.txt"),
        ("write", "b.bin"),
        ("write", "c.raw"),
        ("fsync", "c.raw"),
        ("write", ".d.txt.*.tmp"),
        ("rename", "d.txt"),
        ("mkdir", "e"),
        ("mkdir", "e/f"),
        ("write", "e/f/g.txt"),
    }
    assert all(line["action"] == "pass" for line in lines)
    assert (tmp_path / "outside.txt").read_text() == "not watched"


@pytest.mark.slow
def test_an_enospc_write_writes_half_then_every_later_write_fails(tmp_path):
    code = (
        "import os\nfrom pathlib import Path\n"
        "try:\n    Path('a.txt').write_text('0123456789')\n"
        "except OSError as e:\n    print('a', e.errno)\n"
        "try:\n    Path('b.txt').write_text('x')\n"
        "except OSError as e:\n    print('b', e.errno)\n"
        f"Path({str(tmp_path / 'outside.txt')!r}).write_text('room elsewhere')\n"
        "os.replace('a.txt', 'c.txt')\n"
    )
    _, lines = run_injected(tmp_path, code)
    site = only_site(lines, "write", "a.txt")
    result, lines = run_injected(tmp_path, code, site=site, hit=1, kind="ENOSPC")
    root = tmp_path / "root"
    assert result.stdout.split("\n")[:2] == [f"a {28}", f"b {28}"]
    assert (root / "c.txt").read_text() == "01234"  # half its bytes, as a disk filling up
    assert (root / "b.txt").read_text() == ""
    assert (tmp_path / "outside.txt").read_text() == "room elsewhere"
    actions = [line["action"] for line in lines if line["site"] == site]
    assert actions[0] == "partial" and set(actions[1:]) == {"fail"}  # close() tries again


@pytest.mark.slow
@pytest.mark.parametrize("op", ["rename", "fsync"])
def test_an_eio_rename_or_fsync_raises_and_changes_nothing(tmp_path, op):
    code = (
        "import os\nfrom pathlib import Path\nPath('t').write_text('x')\n"
        "with open('t', 'rb') as f:\n    os.fsync(f.fileno())\n"
        "try:\n    os.replace('t', 'u')\nexcept OSError as e:\n    print(e.errno, e.filename2)\n"
    )
    _, lines = run_injected(tmp_path, code)
    result, _ = run_injected(
        tmp_path,
        code,
        site=only_site(lines, op, {"rename": "u", "fsync": "t"}[op]),
        hit=1,
        kind="EIO",
    )
    root = tmp_path / "root"
    if op == "rename":
        assert result.stdout.strip() == "5 u"
        assert (root / "t").exists() and not (root / "u").exists()
    else:
        assert "OSError: [Errno 5] Input/output error" in result.stderr


def test_site_patterns_generalise_temp_names_numbers_and_digests():
    pattern = injector.site_pattern
    assert pattern("run/.history.json.a1b_c3d4.tmp") == "run/.history.json.*.tmp"
    assert pattern("tb/events.out.tfevents.1796634061.vm.28203") == "tb/events.out.tfevents.N.vm.N"
    assert (
        pattern("d/tfds/b3754de21184a8b4/.flaxmnist-staging-mnist-k2j4l5m6/incomplete.JTUKHA_1.0.0")
        == "d/tfds/H/.flaxmnist-staging-mnist-*/incomplete.*_N.N.N"
    )


def test_the_judge_finds_cut_event_files_and_csv_rows(tmp_path):
    scalar_log.write_event_file(tmp_path, [{"epoch": 1, "train_loss": 0.5}], [], 0)
    whole = (tmp_path / scalar_log.EVENT_FILE).read_bytes()
    assert write_judge.tfrecord_problem(whole) is None
    assert "mid-record" in write_judge.tfrecord_problem(whole[:-1])
    assert "CRC" in write_judge.tfrecord_problem(whole[:-5] + b"X" + whole[-4:])
    assert write_judge.csv_problem(b"a,b\n1,2\n") is None
    assert write_judge.csv_problem(b"") is None
    assert write_judge.csv_problem(b"a,b\n1,") == "ends mid-line"


def test_the_judge_finds_temp_files_and_unknown_hidden_names(tmp_path):
    for name in ("metrics.json", ".lock", ".metrics.json.abcd1234.tmp", ".stray"):
        (tmp_path / name).write_text("")
    (tmp_path / "7.orbax-checkpoint-tmp").mkdir()
    assert write_judge.leftovers(tmp_path, {".lock"}, library=False) == [
        "left .metrics.json.abcd1234.tmp",
        "left .stray",
    ]
    assert "left 7.orbax-checkpoint-tmp" in write_judge.leftovers(tmp_path, set(), library=True)


def test_a_failure_must_be_one_error_line_last_and_exit_2():
    outcome = Outcome
    assert outcome(2, "", "warning: w\nerror: no space left for run\n").problems() == []
    assert outcome(1, "", "Traceback (most recent call last):\nerror: x\n").problems() == [
        "exit 1",
        "traceback on stderr",
    ]
    assert outcome(-9, "", "error: x\nhung").problems()[0] == "hung (killed)"


def test_a_failed_write_keeps_the_event_file_as_last_written(tmp_path, monkeypatch):
    history = [{"epoch": 1, "train_loss": 0.5}]
    scalar_log.write_event_file(tmp_path, history, [], 0)
    written = (tmp_path / scalar_log.EVENT_FILE).read_bytes()

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        scalar_log.write_event_file(tmp_path, [*history, {"epoch": 2, "train_loss": 0.25}], [], 0)
    assert [p.name for p in tmp_path.iterdir()] == [scalar_log.EVENT_FILE]
    assert (tmp_path / scalar_log.EVENT_FILE).read_bytes() == written


def test_a_library_error_naming_a_failing_disk_becomes_oserror(tmp_path):
    with pytest.raises(OSError) as raised, files.disk_errors(tmp_path):
        raise RuntimeError(
            "ResourceExhaustedError: Failed to finalize writing of split: No space left on device"
        )
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(tmp_path))
    with pytest.raises(DataError, match="Input/output error"), files.disk_errors(tmp_path):
        raise DataError("cannot read t10k-images-idx3-ubyte.gz: Input/output error")
    with pytest.raises(ValueError), files.disk_errors(tmp_path):
        raise ValueError("RESOURCE_EXHAUSTED: out of memory")  # memory is not the disk


def test_optunas_traceback_of_a_failed_trial_is_dropped_its_lines_kept():
    from flaxmnist import tuning

    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        failed = logging.LogRecord(
            "optuna", logging.WARNING, "", 0, "Trial 1 failed", (), sys.exc_info()
        )
    value = logging.LogRecord("optuna", logging.WARNING, "", 0, "failed with value None", (), None)
    assert (tuning.without_traceback(failed), tuning.without_traceback(value)) == (False, True)


@pytest.mark.slow
def test_a_training_run_s_write_sites_fail_midway_and_end_in_one_line(tmp_path):
    ws = write_faults.Workspace(tmp_path / "drill")
    try:
        scenario = write_scenarios.Scenario(
            "train",
            write_scenarios.nothing,
            lambda root, shared: write_scenarios.train_argv(root / "run", shared, 1),
        )
        template = write_faults.make_template(ws, scenario)
        sites, reference = write_faults.discover(ws, scenario, template)
        written = {s.key.split()[-1]: s for s in sites if s.key.startswith("write ")}
        assert len(sites) >= 25
        for name in ("config.json", "history.json", "steps.csv", "metrics.json"):
            assert f"run/.{name}.*.tmp" in written
        assert "run/tensorboard/.events.out.tfevents.flaxmnist.*.tmp" in written
        chosen = [
            (written["run/.history.json.*.tmp"], "ENOSPC"),
            (written["run/tensorboard/.events.out.tfevents.flaxmnist.*.tmp"], "EIO"),
            (written["run/.metrics.json.*.tmp"], "EIO"),
            (
                next(s for s in sites if s.key.startswith("rename ") and "steps.csv" in s.key),
                "ENOSPC",
            ),
        ]
        for site, kind in chosen:
            trial = write_faults.Trial(scenario.name, site.key, site.hits, kind)
            write_faults.run_trial(ws, scenario, template, reference, trial)
            assert (trial.result, trial.problems) == ("pass", []), trial
    finally:
        ws.close()


def _report_paths(tmp_path, monkeypatch) -> tuple:
    monkeypatch.setattr(write_faults, "RESULTS_JSON", tmp_path / "write_faults.json")
    monkeypatch.setattr(write_faults, "RESULTS_MD", tmp_path / "write_faults.md")
    return write_faults.RESULTS_JSON, write_faults.RESULTS_MD


def test_the_report_names_the_commands_not_run_yet(tmp_path, monkeypatch):
    results_json, results_md = _report_paths(tmp_path, monkeypatch)
    site = write_faults.Site("write flaxmnist/storage/files.py:1 run/.a.json.*.tmp", 2)
    trial = write_faults.Trial("train", site.key, 2, "ENOSPC", fired=True)
    header = write_faults.run_header("cmd", "abc1234", [trial], ["tune"])
    write_faults.write_report([header], {"train": [site]}, [trial])
    report = json.loads(results_json.read_text())
    assert report["runs"][0]["summary"].endswith("; not run yet: tune")
    assert len(report["trials"]) == 1
    assert "not run yet: tune" in results_md.read_text().splitlines()[2]
    header = write_faults.run_header("cmd", "abc1234", [trial])
    write_faults.write_report([header], {"train": [site]}, [trial])
    assert "not run yet" not in results_md.read_text()


def test_combined_runs_make_one_report_naming_each_run_and_refuse_a_repeated_trial(
    tmp_path, monkeypatch
):
    results_json, results_md = _report_paths(tmp_path, monkeypatch)
    saved = []
    for name, kind, code in (("train", "ENOSPC", 2), ("train", "EIO", 1)):
        site = write_faults.Site(f"write flaxmnist/{name}.py:1 run/{kind}", 1)
        trial = write_faults.Trial(name, site.key, 1, kind, fired=True, code=code)
        trial.problems = [] if code == 2 else ["exit 1"]
        header = write_faults.run_header(f"drill --only={name}", "abc1234", [trial])
        write_faults.write_report([header], {name: [site]}, [trial])
        saved.append(tmp_path / f"{kind}.json")
        results_json.rename(saved[-1])
    write_faults.combine([str(path) for path in saved])
    report = json.loads(results_json.read_text())
    assert [run["command"] for run in report["runs"]] == ["drill --only=train"] * 2
    assert [t["result"] for t in report["trials"]] == ["pass", "FAIL"]
    assert [s["key"] for s in report["sites"]["train"]] == [
        "write flaxmnist/train.py:1 run/ENOSPC",
        "write flaxmnist/train.py:1 run/EIO",
    ]
    text = results_md.read_text()
    assert "All together: 2 trials: 1 passed, 1 failed, 0 not reached." in text
    assert "| ENOSPC | EIO |" in text and "- train, EIO at hit 1" in text
    with pytest.raises(ConfigError, match="repeats a trial: ENOSPC at hit 1 of train's"):
        write_faults.combine([str(saved[0]), str(saved[0])])
    (tmp_path / "other.json").write_text('{"summary": "an older report"}')
    for path, message in ((tmp_path / "other.json", "holds no drill run's results"),
                          (tmp_path / "none.json", "cannot read it")):  # fmt: skip
        with pytest.raises(ConfigError, match=f"--combine: {path}: {message}"):
            write_faults.combine([str(path)])


def test_with_replace_a_later_run_s_commands_replace_the_earlier_trials_of_them(
    tmp_path, monkeypatch
):
    results_json, results_md = _report_paths(tmp_path, monkeypatch)

    def saved_run(path: str, *trials: tuple[str, str, str]) -> str:
        found = [(name, write_faults.Site(f"write flaxmnist/{file} run/x", 1), kind)
                 for name, file, kind in trials]  # fmt: skip
        made = [write_faults.Trial(name, site.key, 1, kind, fired=True, code=2)
                for name, site, kind in found]  # fmt: skip
        sites = {name: [site for n, site, _ in found if n == name] for name, _, _ in found}
        header = write_faults.run_header(f"drill {path}", "abc1234", made)
        write_faults.write_report([header], sites, made)
        return str(results_json.rename(tmp_path / path))

    old = saved_run("old.json", ("train", "a.py:1", "ENOSPC"), ("train", "a.py:1", "EIO"),
                    ("evaluate", "e.py:1", "ENOSPC"))  # fmt: skip
    new = saved_run("new.json", ("train", "a.py:2", "ENOSPC"))
    write_faults.combine([old, new], replace=True)
    report = json.loads(results_json.read_text())
    assert [run["command"] for run in report["runs"]] == ["drill old.json", "drill new.json"]
    assert report["sites"] == {
        "train": [{"key": "write flaxmnist/a.py:2 run/x", "hits": 1}],
        "evaluate": [{"key": "write flaxmnist/e.py:1 run/x", "hits": 1}],
    }
    assert [(t["scenario"], t["kind"]) for t in report["trials"]] == [
        ("evaluate", "ENOSPC"),
        ("train", "ENOSPC"),
    ]
    assert report["replaced"] == ["train"]
    text = results_md.read_text()
    assert "- Trials of train: a later run's, replacing the earlier runs'." in text
    assert "All together: 2 trials: 2 passed, 0 failed, 0 not reached." in text
    combined = str(results_json.rename(tmp_path / "combined.json"))
    write_faults.combine([combined])  # combined again: it still says what was replaced
    assert json.loads(results_json.read_text())["replaced"] == ["train"]
