"""JAX's persistent compilation cache, with every entry checked before JAX runs it.

A rerun skips XLA's compilation by loading the program JAX compiled last time
(``jax_compilation_cache_dir``). JAX's own file store trusts its files: a file cut short by a
killed writer, damaged on disk, or holding another key's program is loaded as it is, and the
wrong program either fails at run time or computes something else. flaxmnist keeps JAX's cache
and replaces only its storage (JAX has no public hook for it: this one assignment is the whole
dependency on JAX internals, and without it the cache is simply off). Each file holds
``SHA-256(key + CPU features + payload) + payload`` and is written atomically, so

* a damaged, truncated or misplaced file is a miss: JAX compiles again and the file is replaced;
* the key includes the host CPU's feature flags (XLA:CPU compiles for them), so a cache directory
  shared between machines never hands one CPU another's code;
* a read-only or full disk only means no file is written: the run goes on, uncached.

Loading an entry runs code from it: keep the cache directory private (as JAX says of its own).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from pathlib import Path

import jax

from flaxmnist.storage import files

SUFFIX = ".checked"  # never JAX's own "-cache": the two formats do not mix in one folder
DIGEST_BYTES = 32


@functools.cache
def cpu_features() -> bytes:
    """The host CPU's feature flags from ``/proc/cpuinfo`` ("" where unknown)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.encode()
    return b""


class CheckedFileCache:
    """A folder of cache entries, each bound to its key by a digest (JAX's cache interface)."""

    def __init__(self, path: Path):
        self._path = self.path = path  # JAX reads ``_path`` for its log messages

    def file(self, key: str) -> Path:
        """Where the entry for ``key`` lives."""
        return self.path / f"{key}{SUFFIX}"

    @staticmethod
    def digest(key: str, value: bytes) -> bytes:
        """The tag that binds ``value`` to ``key`` on this CPU."""
        return hashlib.sha256(key.encode() + b"\0" + cpu_features() + b"\0" + value).digest()

    def get(self, key: str) -> bytes | None:
        """The payload kept for ``key``, or None when missing, damaged or another key's."""
        try:
            blob = self.file(key).read_bytes()
        except OSError:
            return None
        tag, value = blob[:DIGEST_BYTES], blob[DIGEST_BYTES:]
        return value if tag == self.digest(key, value) else None

    def put(self, key: str, value: bytes) -> None:
        """Keeps ``value`` for ``key`` (atomically); a disk that refuses only means no file."""
        with contextlib.suppress(OSError):
            self.path.mkdir(parents=True, exist_ok=True)
            files.write_bytes_atomic(self.file(key), self.digest(key, value) + value)

    def clear(self) -> None:
        """Removes every entry."""
        for path in self.path.glob(f"*{SUFFIX}"):
            path.unlink(missing_ok=True)


def enable(cache_dir: str) -> bool:
    """Turns on the persistent compilation cache in ``cache_dir`` ("" leaves it off).

    Call it before the first compilation. Returns whether the cache is on.
    """
    if not cache_dir:
        return False
    try:
        from jax._src import compilation_cache as jax_cache
    except ImportError:
        return False
    if not all(hasattr(jax_cache, name) for name in ("_cache", "_cache_initialized")):
        return False  # a JAX whose storage layer moved: run uncached rather than unchecked
    path = Path(os.path.expanduser(cache_dir))
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Cache every program, even the small ones set-up runs: together they cost seconds.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax_cache.reset_cache()
    jax_cache._cache = CheckedFileCache(path)
    jax_cache._cache_initialized = True
    return True
