"""The persistent compilation cache: checked entries, and a second process loading them.

Training runs in sequence on one cache folder (among them the NaN run, then ``fast`` twice, that
once crashed the second ``fast`` run) are the fault drill's cache trials (``tests/test_faults.py``).
"""

import os
import subprocess
import sys
import textwrap

import pytest

from flaxmnist.storage import compilation_cache
from flaxmnist.storage.compilation_cache import CheckedFileCache


def test_an_entry_reads_back_what_was_put(tmp_path):
    cache = CheckedFileCache(tmp_path / "cache")
    cache.put("key-a", b"program a")
    assert cache.get("key-a") == b"program a"
    assert cache.get("key-b") is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda blob: blob[:-1],  # cut short
        lambda blob: blob[:10],  # cut inside the digest
        lambda blob: b"",  # empty
        lambda blob: blob[:40] + bytes([blob[40] ^ 1]) + blob[41:],  # one bit of the payload
        lambda blob: bytes([blob[0] ^ 1]) + blob[1:],  # one bit of the digest
    ],
    ids=["truncated", "truncated-digest", "empty", "payload-bit", "digest-bit"],
)
def test_a_damaged_entry_is_a_miss_and_a_new_put_replaces_it(tmp_path, damage):
    cache = CheckedFileCache(tmp_path)
    cache.put("key", b"the compiled program, long enough to damage")
    path = cache.file("key")
    path.write_bytes(damage(path.read_bytes()))
    assert cache.get("key") is None
    cache.put("key", b"recompiled")
    assert cache.get("key") == b"recompiled"


def test_another_keys_entry_under_this_name_is_a_miss(tmp_path):
    cache = CheckedFileCache(tmp_path)
    cache.put("key-a", b"program a")
    cache.put("key-b", b"program b")
    cache.file("key-b").replace(cache.file("key-a"))  # a's name, b's program
    assert cache.get("key-a") is None


def test_an_entry_from_another_cpu_is_a_miss(tmp_path, monkeypatch):
    cache = CheckedFileCache(tmp_path)
    cache.put("key", b"program for this cpu")
    monkeypatch.setattr(compilation_cache, "cpu_features", lambda: b"flags: another cpu")
    assert cache.get("key") is None


def test_an_unwritable_folder_only_means_no_entry(tmp_path):
    (tmp_path / "file").write_text("a file where the folder should be")
    cache = CheckedFileCache(tmp_path / "file" / "cache")
    cache.put("key", b"program")  # no exception
    assert cache.get("key") is None


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    cache = CheckedFileCache(tmp_path)

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    cache.put("key", b"program")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


JAX_CHILD = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp
    from flaxmnist.storage import compilation_cache
    assert compilation_cache.enable(sys.argv[1])
    hits = []
    get = compilation_cache.CheckedFileCache.get
    def counted_get(self, key):
        value = get(self, key)
        hits.append(value is not None)
        return value
    compilation_cache.CheckedFileCache.get = counted_get
    print(float(jax.jit(lambda x: jnp.sin(x) * 3)(jnp.float32(2.0))), sum(hits))
    """
)


@pytest.mark.slow
def test_jax_compiles_into_the_checked_store_and_a_second_process_loads_from_it(tmp_path):
    """Fails if a JAX upgrade moves the storage layer that :func:`enable` replaces."""

    def child() -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", JAX_CHILD, str(tmp_path / "cache")],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return out.stdout.split()

    value, hits = child()
    entries = list((tmp_path / "cache").glob("jit_*.checked"))
    assert hits == "0" and entries
    assert child() == [value, str(len(entries))]  # every program loaded, none compiled


@pytest.mark.slow
def test_runs_cache_under_the_home_folder_by_default_and_an_empty_dir_turns_it_off(
    synthetic_data_dir, tmp_path
):
    home = tmp_path / "home"
    home.mkdir()
    args = ["--config=dense", "--config.num_epochs=1", f"--config.data_dir={synthetic_data_dir}"]
    env = {**os.environ, "HOME": str(home)}

    def train(*extra: str) -> None:
        command = [sys.executable, "-m", "flaxmnist.train", *args, *extra]
        workdir = f"--workdir={tmp_path / f'run{len(extra)}'}"
        result = subprocess.run([*command, workdir], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr

    cache = home / ".cache" / "flaxmnist"
    train("--config.compilation_cache_dir=")
    assert not cache.exists()
    train()
    assert any((cache / "jax").glob("*" + compilation_cache.SUFFIX))
