"""Compiled training programs kept on disk, so a warm start skips tracing and lowering.

JAX's persistent compilation cache (``compilation_cache_dir``) skips XLA's compilation on a rerun,
but it is keyed on the lowered program: every run still traces the Python step (Flax modules,
optax, the scan) and lowers it to StableHLO before it can look the program up — about 0.7 s of a
3 s warm start of the ``fast`` preset on 2 CPU cores. This cache is keyed instead on what decides
the program: the package's source, the library versions, the backend and CPU, the resolved config
(its ``seed`` aside: keys are arguments) and the arguments' paths, shapes and dtypes. A hit loads
the serialized executable directly (``jax.experimental.serialize_executable``).

Each file holds a SHA-256 of its payload; a damaged or unloadable file is compiled again and
replaced. Files are written atomically; a full or read-only disk only means no file is kept.
Loading one runs code from it, like JAX's own cache: keep the cache directory private.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
from jax.experimental import serialize_executable

from flaxmnist import files

SUBDIRECTORY = "executables"  # inside the compilation cache directory
DIGEST_BYTES = 32
PACKAGE_DIR = Path(__file__).resolve().parent
LIBRARIES = ("jax", "jaxlib", "flax", "optax")


def source_digest() -> str:
    """SHA-256 over every ``.py`` file of the flaxmnist package (a code change is a new key)."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cpu_flags() -> str:
    """The host CPU's feature flags (XLA:CPU compiles for them), or "" where unknown."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line for line in lines if line.startswith(("flags", "Features"))), "")


def fingerprint(
    config: ml_collections.ConfigDict, device: jax.Device, constants: dict[str, Any]
) -> str:
    """What decides a run's compiled programs besides their arguments, as one digest.

    ``constants`` are values the programs close over that the config does not name (such as
    pixel statistics measured on the data), JSON-serializable.
    """
    settings = json.loads(config.to_json())
    settings.pop("seed")
    parts = {
        "config": settings,
        "constants": constants,
        "source": source_digest(),
        "versions": {name: importlib.metadata.version(name) for name in LIBRARIES},
        "device": [device.platform, device.client.platform_version, device.device_kind],
        "cpu": cpu_flags(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_config": {key: repr(value) for key, value in sorted(jax.config.values.items())},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def signature(args: tuple) -> str:
    """The arguments' tree paths, shapes and dtypes (weak types marked ``~``), as text."""
    leaves = jax.tree_util.tree_flatten_with_path(args)[0]
    return ";".join(f"{jax.tree_util.keystr(path)}:{jax.typeof(leaf)}" for path, leaf in leaves)


class ExecutableCache:
    """Serialized executables of jitted functions, one file per program, in ``directory``."""

    def __init__(self, directory: Path, run_fingerprint: str, device: jax.Device):
        self.directory = directory
        self.run_fingerprint = run_fingerprint
        self.device = device

    def wrap(self, name: str, jitted: Any, output_like: Callable[..., Any]) -> Callable:
        """``jitted``'s stand-in that runs an executable per argument signature, from disk if kept.

        ``output_like(*args)`` returns any pytree shaped like ``jitted(*args)``'s output (a
        loaded executable needs the output's structure without tracing); it is checked against
        the real one whenever a program is compiled.
        """
        programs: dict[Any, jax.stages.Compiled] = {}

        @functools.wraps(jitted)
        def call(*args):
            in_tree = jax.tree_util.tree_structure((args, {}))
            avals = tuple(map(jax.typeof, jax.tree_util.tree_leaves(args)))
            program = programs.get((in_tree, avals))
            if program is None:
                out_tree = jax.tree_util.tree_structure(output_like(*args))
                program = self.load_or_compile(name, jitted, args, in_tree, out_tree)
                programs[(in_tree, avals)] = program
            return program(*args)

        return call

    def path(self, name: str, args: tuple) -> Path:
        """The file of ``name``'s program for ``args``."""
        key = hashlib.sha256(f"{self.run_fingerprint}|{name}|{signature(args)}".encode())
        return self.directory / f"{name}-{key.hexdigest()[:32]}.bin"

    def load_or_compile(self, name, jitted, args, in_tree, out_tree) -> jax.stages.Compiled:
        """The kept program for ``args`` if one loads, else a fresh compilation (then kept)."""
        path = self.path(name, args)
        program = self.load(path, in_tree, out_tree)
        if program is not None:
            return program
        program = compile_fresh(jitted, args)
        if program.out_tree == out_tree:
            self.save(path, serialize_executable.serialize(program)[0])
        return program

    def load(self, path: Path, in_tree, out_tree) -> jax.stages.Compiled | None:
        """The executable in ``path``, or None when it is missing, damaged or does not load."""
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        digest, payload = blob[:DIGEST_BYTES], blob[DIGEST_BYTES:]
        if hashlib.sha256(payload).digest() != digest:
            return None
        try:
            return serialize_executable.deserialize_and_load(
                payload, in_tree, out_tree, execution_devices=[self.device]
            )
        except Exception:  # any file that does not load is only a cache miss
            return None

    def save(self, path: Path, payload: bytes) -> None:
        """Writes ``payload`` with its digest atomically; gives up quietly if the disk refuses."""
        with contextlib.suppress(OSError):
            self.directory.mkdir(parents=True, exist_ok=True)
            files.write_bytes_atomic(path, hashlib.sha256(payload).digest() + payload)


def compile_fresh(jitted: Any, args: tuple) -> jax.stages.Compiled:
    """Compiles ``jitted`` for ``args`` without reading JAX's persistent cache.

    An executable that JAX's cache loaded cannot be serialized again on XLA:CPU (it keeps no
    object code: the reloaded copy fails at run time), so this compilation must be a fresh one.
    """
    lowered = jitted.lower(*args)
    enabled = jax.config.values["jax_enable_compilation_cache"]
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        return lowered.compile()
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)


def for_run(
    config: ml_collections.ConfigDict, devices: list[jax.Device], constants: dict[str, Any]
) -> ExecutableCache | None:
    """The run's executable cache, or None where it does not apply.

    It applies to single-device, single-process runs of the device-resident input pipeline
    with the compilation cache on and ``cache_executables`` set, and no ``import_modules`` (user
    code the key cannot see into).
    ``constants`` are as for :func:`fingerprint`.
    """
    usable = (
        config.cache_executables
        and config.input_pipeline == "device"
        and config.compilation_cache_dir
        and not config.import_modules
        and len(devices) == 1
        and jax.process_count() == 1
    )
    if not usable:
        return None
    directory = Path(os.path.expanduser(config.compilation_cache_dir)) / SUBDIRECTORY
    return ExecutableCache(directory, fingerprint(config, devices[0], constants), devices[0])
