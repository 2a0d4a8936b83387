"""Config presets: one ``get_config()`` module per preset, selected with ``--config=NAME``."""

from pathlib import Path

PRESET_DIR = Path(__file__).resolve().parent


def preset_names() -> list[str]:
    """The names of the shipped presets (the module names in this package)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.py") if not p.stem.startswith("_"))
