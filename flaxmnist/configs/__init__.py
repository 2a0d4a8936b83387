"""Config presets: one ``get_config()`` module per preset, selected with ``--config=NAME``."""

from pathlib import Path

import ml_collections

from flaxmnist import plugins
from flaxmnist.errors import ConfigError, one_line

PRESET_DIR = Path(__file__).resolve().parent


def preset_names() -> list[str]:
    """The names of the shipped presets (the module names in this package)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.py") if not p.stem.startswith("_"))


def load(value: str) -> ml_collections.ConfigDict:
    """The config ``--config=VALUE`` names: a preset (``"fast"``) or a file (``"my.py[:ARG]"``).

    Raises:
      ConfigError: for an unknown name, a missing file, or a file whose ``get_config()`` fails.
    """
    return load_file(resolve(value))


def resolve(value: str) -> str:
    """Maps a preset name to its file; leaves paths alone; rejects names that are neither."""
    path_part, sep, arg = value.partition(":")
    if path_part in preset_names():
        return str(PRESET_DIR / f"{path_part}.py") + sep + arg
    if path_part.endswith(".py") and Path(path_part).is_file():
        return value
    raise ConfigError(
        f"unknown config {value!r}: not a file and not a preset ({', '.join(preset_names())})"
    )


def load_file(spec: str) -> ml_collections.ConfigDict:
    """Runs ``get_config()`` of config file ``spec`` (``PATH[:ARG]``); failures are ConfigErrors."""
    path, sep, arg = spec.partition(":")
    get_config = plugins.function_from_file(path, "get_config", "config file", "get_config()")
    try:
        config = get_config(arg) if sep else get_config()
    except Exception as e:
        call = f"get_config({arg!r})" if sep else "get_config()"
        raise ConfigError(
            f"config file {path}: {call} failed ({type(e).__name__}: {one_line(e)})"
        ) from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"config file {path}: get_config() returned {type(config).__name__}, not a ConfigDict"
        )
    return config
