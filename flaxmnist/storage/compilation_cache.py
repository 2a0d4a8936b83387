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
* a read-only or full disk only means no file is written: the run goes on, uncached;
* the folder holds at most :func:`size_bound` bytes: a write past it removes the least recently
  used entries, and setting the cache up removes the temp files of writers killed mid-write.

Loading an entry runs code from it: keep the cache directory private (as JAX says of its own).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import time
from pathlib import Path

import jax

from flaxmnist.storage import files

SUFFIX = ".checked"  # never JAX's own "-cache": the two formats do not mix in one folder
DIGEST_BYTES = 32
MAX_BYTES = 2 * 1024**3  # the folder's size bound where JAX's option sets none
# The temp file files.write_bytes_atomic writes an entry to: ".KEY.checked.XXXXXXXX.tmp", eight
# characters of tempfile's alphabet in the middle; an entry (KEY.checked) never matches.
TEMP_NAME = re.compile(rf"\..+{re.escape(SUFFIX)}\.[a-z0-9_]{{8}}\.tmp")
STALE_TEMP_S = 3600  # a writer takes seconds; a temp file this old is a killed writer's


@functools.cache
def cpu_features() -> bytes:
    """The host CPU's feature flags from ``/proc/cpuinfo`` ("" where unknown)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.encode()
    return b""


def size_bound() -> int:
    """The bytes the cache folder may hold: JAX's ``jax_compilation_cache_max_size`` when set.

    JAX applies that option only in its own file store, which :func:`enable` replaces, so this
    store applies it instead; JAX's default, -1 (no bound), becomes :data:`MAX_BYTES` here.
    """
    limit = jax.config.jax_compilation_cache_max_size
    return MAX_BYTES if limit < 0 else limit


class CheckedFileCache:
    """A folder of cache entries, each bound to its key by a digest (JAX's cache interface).

    Args:
      path: the folder.
      max_bytes: the most bytes its entries may hold together (least recently used go first).
    """

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES):
        self._path = self.path = path  # JAX reads ``_path`` for its log messages
        self.max_bytes = max_bytes

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
        if tag != self.digest(key, value):
            return None
        with contextlib.suppress(OSError):  # its time of use, for the least-recently-used order
            os.utime(self.file(key))
        return value

    def put(self, key: str, value: bytes) -> None:
        """Keeps ``value`` for ``key`` (atomically); a disk that refuses only means no file.

        Then removes the least recently used entries while the folder holds too many bytes.
        """
        with contextlib.suppress(OSError):
            self.path.mkdir(parents=True, exist_ok=True)
            files.write_bytes_atomic(self.file(key), self.digest(key, value) + value)
        self.evict()

    def evict(self) -> None:
        """Removes entries, least recently used first, until they hold at most ``max_bytes``."""
        entries = []
        for path in self.path.glob(f"*{SUFFIX}"):
            with contextlib.suppress(OSError):  # another process may remove it meanwhile
                entries.append((path.stat(), path))
        total = sum(stat.st_size for stat, _ in entries)
        for stat, path in sorted(entries, key=lambda entry: entry[0].st_mtime):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= stat.st_size

    def tidy(self) -> None:
        """Removes the temp files of writers killed mid-write, then applies the size bound."""
        cutoff = time.time() - STALE_TEMP_S
        for path in self.path.glob(f".*{SUFFIX}.*.tmp"):
            with contextlib.suppress(OSError):
                if TEMP_NAME.fullmatch(path.name) and path.stat().st_mtime < cutoff:
                    path.unlink()
        self.evict()

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
    cache = CheckedFileCache(path, size_bound())
    cache.tidy()
    jax_cache.reset_cache()
    jax_cache._cache = cache
    jax_cache._cache_initialized = True
    return True
