"""Imports user modules named in ``config.import_modules`` so their registrations take effect."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from flaxmnist.errors import ConfigError


def import_module_or_file(spec: str) -> ModuleType:
    """Imports a dotted module name, or a ``.py`` file by path."""
    if spec.endswith(".py"):
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"import_modules: no such file {spec}")
        name = f"flaxmnist_user_{path.stem}"
        if name in sys.modules:
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as e:
        raise ConfigError(f"import_modules: cannot import {spec!r} ({e})") from None


def import_modules(specs: str) -> list[ModuleType]:
    """Imports each comma-separated entry of ``specs`` (empty entries are ignored)."""
    return [import_module_or_file(s.strip()) for s in specs.split(",") if s.strip()]
