"""A storage URL's password never appears in a message of ``python -m flaxmnist.tune``."""

import optuna
import pytest

from flaxmnist import tuning
from flaxmnist.errors import ConfigError


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://user:s3cret@127.0.0.1:1/db", "postgresql://user:***@127.0.0.1:1/db"),
        ("postgresql://user:s3%40cret@host/db", "postgresql://user:***@host/db"),
        ("postgresql://user:s3@cret@host/db", "postgresql://user:***@host/db"),
        ("mysql://user:s3cret@host/db?password=s3cret", "mysql://user:***@host/db?password=***"),
        ("not a url://user:s3cret@host/db", "not a url://user:***@host/db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
        ("sqlite:////abs/study.db", "sqlite:////abs/study.db"),
        ("nope://x", "nope://x"),
    ],
)
def test_a_shown_storage_url_hides_its_password(url, shown):
    assert tuning.shown_url(url) == shown


def test_a_short_password_is_hidden_where_it_stands_alone_not_inside_words():
    text = "password p refused for postgresql://user:p@host/db"
    url = "postgresql://user:p@host/db"
    assert (
        tuning.hide_passwords(text, url) == "password *** refused for postgresql://user:***@host/db"
    )


def test_a_storage_that_cannot_be_opened_is_named_without_its_password(tmp_path):
    url = "postgresql://user:s3cret@127.0.0.1:1/db"
    with pytest.raises(ConfigError) as error:
        tuning.open_study(tuning.StudySpec(config="fast", workdir=tmp_path, storage=url))
    assert str(error.value).startswith("--storage: cannot open postgresql://user:***@127.0.0.1:1/")
    assert "s3cret" not in str(error.value)


def test_the_drivers_message_is_shown_without_the_password(tmp_path, monkeypatch):
    url = "postgresql://user:s3%2Fcret@db.example:5432/study"

    def refuse(*args, **kwargs):
        raise RuntimeError(f"cannot connect to {url}: password 's3/cret' was refused")

    monkeypatch.setattr(optuna.storages, "RDBStorage", refuse)
    with pytest.raises(ConfigError) as error:
        tuning.open_study(tuning.StudySpec(config="fast", workdir=tmp_path, storage=url))
    assert "s3" not in str(error.value).replace("postgresql://user:***@", "")
    assert "password '***' was refused" in str(error.value)


class _StudyOfAnotherConfig:
    def __init__(self):
        self.user_attrs = {"config": "mlp", "space": ""}

    def set_user_attr(self, key, value):
        raise AssertionError("a recorded study is never changed")


def test_a_study_of_another_config_names_its_storage_without_the_password(tmp_path, monkeypatch):
    url = "postgresql://user:s3cret@db.example/study"
    monkeypatch.setattr(optuna.storages, "RDBStorage", lambda *args, **kwargs: None)
    monkeypatch.setattr(optuna, "create_study", lambda **kwargs: _StudyOfAnotherConfig())
    with pytest.raises(ConfigError, match="was started with --config=mlp, not fast") as error:
        tuning.open_study(tuning.StudySpec(config="fast", workdir=tmp_path, storage=url))
    assert "in postgresql://user:***@db.example/study was started" in str(error.value)
    assert "s3cret" not in str(error.value)
