"""The config schema: one declaration per field, read by defaults, validation, resume and docs."""

import json
import re
import subprocess
import sys

import ml_collections
import pytest
from helpers import REPO_ROOT

from flaxmnist import config_schema, losses
from flaxmnist.config_validation import validate_config
from flaxmnist.configs import __main__ as configs_main
from flaxmnist.configs import default
from flaxmnist.errors import ConfigError, FlaxmnistError
from flaxmnist.storage.run_directory import RunDirectory
from flaxmnist.training import early_stopping


@pytest.mark.parametrize("field", config_schema.FIELDS, ids=lambda field: field.name)
def test_every_default_follows_its_own_rule(field):
    field.rule.check(field.name, field.default)


def test_the_default_config_holds_exactly_the_declared_fields():
    assert len(config_schema.FIELDS_BY_NAME) == len(config_schema.FIELDS)  # each declared once
    config = default.get_config()
    assert sorted(config_schema.flatten(config.to_dict())) == sorted(config_schema.FIELDS_BY_NAME)
    validate_config(config)


def test_choices_are_only_for_fixed_vocabularies():
    assert config_schema.choices("dtype") == ("float32", "bfloat16")
    with pytest.raises(TypeError, match="model is not a choice"):
        config_schema.choices("model")


def test_the_field_table_of_the_docs_is_written_from_the_schema():
    doc = configs_main.CONFIGURATION_DOC.read_text()
    begin = f"<!-- fields:begin (written by {configs_main.WRITER}) -->\n"
    table = doc.split(begin, 1)[1].split("\n<!-- fields:end -->", 1)[0]
    assert table == config_schema.markdown_table(), "run: python -m flaxmnist.configs"


def test_the_table_writers_help_exits_0_and_writes_nothing(monkeypatch, tmp_path, capsys):
    doc = tmp_path / "configuration.md"
    monkeypatch.setattr(configs_main, "CONFIGURATION_DOC", doc)
    with pytest.raises(SystemExit) as exit_info:
        configs_main.main(["--help"])
    assert exit_info.value.code == 0 and "field table" in capsys.readouterr().out
    assert not doc.exists()


@pytest.fixture
def recorded_run(tmp_path):
    with RunDirectory(tmp_path / "run") as run:
        run.write_config(default.get_config())
        yield run


@pytest.mark.parametrize("field", sorted(config_schema.RESUMABLE_FIELDS))
def test_a_resume_may_change_each_resumable_field(recorded_run, field):
    config = default.get_config().to_dict()
    *groups, leaf = field.split(".")
    node = config
    for group in groups:
        node = node[group]
    node[leaf] = _another_value(node[leaf])
    recorded_run.check_resumable(ml_collections.ConfigDict(config))


def test_a_resume_names_the_nested_field_that_changed(recorded_run):
    config = default.get_config()
    config.augment.rotation = 10.0
    with pytest.raises(FlaxmnistError, match=r"\(augment\.rotation: 0\.0 -> 10\.0\)"):
        recorded_run.check_resumable(config)


def test_a_field_added_since_the_run_was_recorded_reads_as_its_default(recorded_run):
    path = recorded_run.path / "config.json"
    recorded = json.loads(path.read_text())
    del recorded["augment"]["cutout_prob"], recorded["ema_decay"]
    path.write_text(json.dumps(recorded))
    assert recorded_run.check_resumable(default.get_config())["ema_decay"] == 0.0


@pytest.mark.parametrize(
    ("monitor", "mode"),
    [
        ("val_loss", "min"),
        ("train_loss", "min"),
        ("val_accuracy", "max"),
        ("train_accuracy", "max"),
    ],
)
def test_early_stopping_minimises_losses_and_maximises_accuracies(monitor, mode):
    assert early_stopping.monitor_mode(monitor) == mode


def test_an_unknown_monitor_is_refused_with_the_schemas_message():
    with pytest.raises(ConfigError, match=r"unknown early_stopping\.monitor 'val_f1'; valid: val_"):
        early_stopping.monitor_mode("val_f1")


def test_loss_options_are_read_as_the_schema_checks_them():
    assert losses.parse_options(" gamma=1.5, name=focal,, ") == {"gamma": 1.5, "name": "focal"}
    with pytest.raises(ConfigError, match="loss_options: expected name=value, got '1x=2'"):
        losses.parse_options("gamma=1,1x=2")
    with pytest.raises(ConfigError, match="loss_options: expected name=value, got 'gamma'"):
        config_schema.check("loss_options", "gamma")


@pytest.mark.slow
def test_the_ground_floor_imports_nothing_above_it():
    code = (
        "import sys, flaxmnist.console, flaxmnist.config_validation, flaxmnist.models.layers\n"
        "above = [m for m in sys.modules if m.startswith(('flaxmnist.training', "
        "'flaxmnist.storage', 'flaxmnist.data'))]\n"
        "assert not above, above\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.slow
def test_layers_learn_their_names_from_the_schema_not_the_validation():
    code = (
        "import sys, flaxmnist.models.layers as layers\n"
        "assert 'flaxmnist.config_validation' not in sys.modules\n"
        "assert layers.CONV_IMPLS == ('auto', 'xla', 'im2col')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _another_value(value):
    """A value of the same type that differs from ``value``."""
    if isinstance(value, bool):
        return not value
    return value + "x" if isinstance(value, str) else value + 1


def test_the_resume_table_in_docs_runs_md_names_exactly_the_resumable_fields():
    text = (REPO_ROOT / "docs" / "runs.md").read_text()
    table = text.split("| field | on resume |", 1)[1].split("\n\n", 1)[0]
    named = set()
    for row in table.splitlines()[2:]:
        fields, on_resume = row.strip("|").split("|", 1)
        if not on_resume.strip().startswith("refused"):
            named |= set(re.findall(r"`([a-z_.]+)`", fields))
    groups = {name.split(".")[0] for name in config_schema.RESUMABLE_FIELDS}
    assert named == groups
