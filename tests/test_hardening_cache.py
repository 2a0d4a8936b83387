"""The compilation cache folder: a killed writer's temp files go, and its size stays bounded."""

import os
import time

import jax
import pytest

from flaxmnist.storage import compilation_cache, files
from flaxmnist.storage.compilation_cache import CheckedFileCache

HOUR = 3600


def _age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _killed_writers_temp(cache: CheckedFileCache, key: str, age_s: float):
    """A temp file as :func:`files.write_bytes_atomic` names it, left behind ``age_s`` ago."""
    path = cache.path / f".{cache.file(key).name}.abc_12xy.tmp"
    path.write_bytes(b"half a program")
    _age(path, age_s)
    return path


def test_set_up_removes_only_stale_temp_files_of_the_writer(tmp_path):
    cache = CheckedFileCache(tmp_path, max_bytes=10**6)
    cache.put("old-entry", b"program")
    _age(cache.file("old-entry"), 5 * HOUR)
    stale = _killed_writers_temp(cache, "jit_f-1", 2 * HOUR)
    fresh = _killed_writers_temp(cache, "jit_f-2", 60)
    others = [tmp_path / ".x.tmp", tmp_path / ".jit_f.checked.abc.tmp", tmp_path / "notes.tmp"]
    for path in others:
        path.write_text("not the writer's")
        _age(path, 5 * HOUR)
    cache.tidy()
    assert not stale.exists()
    assert fresh.exists() and all(path.exists() for path in others)
    assert cache.get("old-entry") == b"program"


def test_the_writers_temp_names_are_the_ones_tidy_removes(tmp_path, monkeypatch):
    cache = CheckedFileCache(tmp_path, max_bytes=10**6)
    left = []

    def killed(src, dst):
        left.append(src)
        raise RuntimeError("killed between the write and the rename")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(RuntimeError, match="killed"):
        files.write_bytes_atomic(cache.file("jit_g-3"), b"program")
    monkeypatch.undo()
    assert compilation_cache.TEMP_NAME.fullmatch(os.path.basename(left[0]))


def test_a_put_past_the_bound_removes_the_least_recently_used_entries(tmp_path):
    entry_bytes = compilation_cache.DIGEST_BYTES + 100
    cache = CheckedFileCache(tmp_path, max_bytes=3 * entry_bytes)
    for age, key in enumerate(["a", "b", "c"]):
        cache.put(key, bytes(100))
        _age(cache.file(key), (10 - age) * HOUR)  # a oldest, c newest
    assert cache.get("a") == bytes(100)  # a read makes "a" the most recently used
    cache.put("d", bytes(100))
    assert [cache.get(key) is not None for key in "abcd"] == [True, False, True, True]


def test_tidy_applies_the_bound_to_a_folder_filled_before(tmp_path):
    big = CheckedFileCache(tmp_path, max_bytes=10**6)
    for age, key in enumerate(["a", "b", "c"]):
        big.put(key, bytes(100))
        _age(big.file(key), (10 - age) * HOUR)
    small = CheckedFileCache(tmp_path, max_bytes=compilation_cache.DIGEST_BYTES + 100)
    small.tidy()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["c.checked"]


def test_the_bound_is_jaxs_option_when_set_and_two_gib_by_default():
    assert jax.config.jax_compilation_cache_max_size == -1  # JAX's default: no limit of its own
    assert compilation_cache.size_bound() == compilation_cache.MAX_BYTES == 2 * 1024**3
    try:
        jax.config.update("jax_compilation_cache_max_size", 12345)
        assert compilation_cache.size_bound() == 12345
    finally:
        jax.config.update("jax_compilation_cache_max_size", -1)


def test_enable_tidies_the_folder(tmp_path, monkeypatch):
    from jax._src import compilation_cache as jax_cache

    for name in ("_cache", "_cache_initialized", "_cache_checked", "_cache_used"):
        monkeypatch.setattr(jax_cache, name, getattr(jax_cache, name))  # restored afterwards
    options = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    before = {name: getattr(jax.config, name) for name in options}
    cache = CheckedFileCache(tmp_path, max_bytes=10**6)
    stale = _killed_writers_temp(cache, "jit_f-1", 2 * HOUR)
    try:
        assert compilation_cache.enable(str(tmp_path))
        assert not stale.exists()
        assert jax_cache._cache.max_bytes == compilation_cache.MAX_BYTES
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
