"""Config checks that run before JAX is imported: the schema's rules, and what they cannot see.

:func:`validate_config` rejects any value no run can use with a one-line :class:`ConfigError`
naming the field. ``python -m flaxmnist.train`` calls it right after flag parsing (a bad flag
fails in a fraction of a second, before the heavy imports and before the run directory exists);
:func:`flaxmnist.training.experiment.build_experiment` calls it again for library users.

Each field's rule is declared in :mod:`flaxmnist.config_schema`; this module applies them, then
checks what a single value cannot show: how fields relate, and that ``init_from`` names a run
directory. It imports nothing heavy so that it can run first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flaxmnist import config_schema
from flaxmnist.errors import ConfigError, FlaxmnistError


def validate_config(config: Any) -> None:
    """Rejects values no run can use, with a one-line ConfigError naming the field.

    Args:
      config: an ``ml_collections.ConfigDict`` with every field of the schema.

    Raises:
      ConfigError: for a missing field, a value its rule refuses (a wrong type, a number out of
        range or not finite, an empty name, a name outside a fixed vocabulary, malformed
        ``loss_options``), ``restore_best`` without checkpoints, or an ``init_from`` that is not
        a run directory.
    """
    for field in config_schema.FIELDS:
        field.rule.check(field.name, field_value(config, field.name))
    if config.early_stopping.restore_best and config.checkpoint_every_epochs == 0:
        raise ConfigError(
            "early_stopping.restore_best needs checkpoints (checkpoint_every_epochs > 0)"
        )
    if config.init_from:
        check_run_directory("init_from", Path(config.init_from).expanduser())


def field_value(config: Any, field: str) -> Any:
    """The value of dotted ``field`` in ``config``; a missing field raises ConfigError."""
    node = config
    for part in field.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError, TypeError):
            raise ConfigError(f"config has no field {field}") from None
    return node


def check_run_directory(field: str, path: Path) -> None:
    """``path`` must be a run directory: a folder with a ``config.json`` and ``checkpoints/``."""
    if not _exists(path, field):
        raise ConfigError(f"{field} {path}: no such directory")
    if not path.is_dir():
        raise ConfigError(f"{field} {path}: not a directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{field} {path}: not a run directory (no config.json)")
    try:
        recorded = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{field} {path}: cannot read {config_file.name} ({e})") from None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("model"), str):
        raise ConfigError(f"{field} {path}: {config_file.name} is not a run's config")
    if not (path / "checkpoints").is_dir():
        raise ConfigError(f"{field} {path}: the run has no checkpoints/ folder")


def validate_workdir(path: Path) -> None:
    """Refuses a ``--workdir`` that cannot become a run directory, before anything is written.

    Raises:
      FlaxmnistError: when ``path`` is an existing non-directory, lies below one, or its nearest
        existing ancestor is not writable.
    """
    if _exists(path, "workdir") and not path.is_dir():
        raise FlaxmnistError(f"cannot write to workdir {path}: it exists and is not a directory")
    existing = path
    while not _exists(existing, "workdir") and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise FlaxmnistError(f"cannot write to workdir {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FlaxmnistError(f"cannot write to workdir {path}: {existing} is not writable")


def _exists(path: Path, field: str) -> bool:
    """``path.exists()``, with an unusable path (e.g. a name too long) as a ConfigError."""
    try:
        return path.exists()
    except (OSError, ValueError) as e:
        raise ConfigError(f"{field} {path}: unusable path ({e})") from None
