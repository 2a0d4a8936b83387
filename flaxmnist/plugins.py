"""User code: modules in ``config.import_modules``, and functions of config and space files.

Importing a plugin module makes its registrations (losses, models, ...) take effect; a config
file provides ``get_config()``, a search-space file ``suggest(trial, config)``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from flaxmnist.errors import ConfigError, one_line


def import_module_or_file(spec: str) -> ModuleType:
    """Imports a dotted module name, or a ``.py`` file by path."""
    if spec.endswith(".py"):
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"import_modules: no such file {spec}")
        # One module per file: two plugins with one file name in two folders do not collide.
        name = f"flaxmnist_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        if name in sys.modules:
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:  # the user's code: a bad module is bad input, and not kept
            del sys.modules[name]
            raise ConfigError(f"import_modules: {spec} failed: {describe(e)}") from None
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as e:
        raise ConfigError(f"import_modules: cannot import {spec!r} ({e})") from None
    except Exception as e:
        raise ConfigError(f"import_modules: {spec} failed: {describe(e)}") from None


def describe(error: Exception) -> str:
    """``SyntaxError at file.py:3: ...``: the error and where in the user's code it was raised."""
    if isinstance(error, SyntaxError):
        where = f"{error.filename}:{error.lineno}"
        return f"SyntaxError at {where}: {error.msg}"
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}{where}: {one_line(error)}"


def import_modules(specs: str) -> list[ModuleType]:
    """Imports each comma-separated entry of ``specs`` (empty entries are ignored)."""
    return [import_module_or_file(s.strip()) for s in specs.split(",") if s.strip()]


def function_from_file(path: str, name: str, label: str, signature: str) -> Callable:
    """The function ``name`` of the Python file at ``path``, whose module is run afresh.

    Args:
      path: the file.
      name: the function it must define (``get_config``, ``suggest``).
      label: what the file is, to start each error message (``config file``, ``--space: file``).
      signature: the function as the error for a file without it names it.

    Raises:
      ConfigError: for a missing file, one that fails to run, or one without the function.
    """
    if not Path(path).is_file():
        raise ConfigError(f"{label} {path} does not exist")
    try:
        module_spec = importlib.util.spec_from_file_location(f"flaxmnist_user_{name}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except Exception as e:  # the user's file: a syntax error or a failing import is bad input
        raise ConfigError(
            f"{label} {path} cannot be loaded ({type(e).__name__}: {one_line(e)})"
        ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigError(f"{label} {path} defines no {signature} function")
    return function
