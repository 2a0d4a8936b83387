"""Atomic writes: whole files or none, with the mode the umask asks for, the umask unchanged."""

import os
import sys
import threading

import pytest

from flaxmnist.storage import files
from flaxmnist.testing import write_between_markers


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_write_has_the_umask_mode_and_leaves_no_temp_file(tmp_path, umask):
    previous = os.umask(umask)
    try:
        files.write_text_atomic(tmp_path / "a.json", "{}\n")
        assert files._current_umask() == umask
    finally:
        os.umask(previous)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


@pytest.mark.slow
def test_reading_the_umask_never_changes_it_under_other_threads(tmp_path):
    # Another thread creating files while writes run must always see the process umask.
    previous = os.umask(0o022)
    seen, stop = set(), threading.Event()

    def create_files():
        i = 0
        while not stop.is_set():
            path = tmp_path / f"other-{i % 4}"
            path.unlink(missing_ok=True)
            path.touch(mode=0o666)
            seen.add(path.stat().st_mode & 0o777)
            i += 1

    thread = threading.Thread(target=create_files)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads between almost any two bytecodes
    thread.start()
    try:
        for i in range(2000):
            files.write_text_atomic(tmp_path / f"w-{i % 4}.txt", "x")
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
        os.umask(previous)
    assert seen == {0o644}


def test_a_generated_table_replaces_only_what_lies_between_its_markers(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\nintro")
    write_between_markers(doc, "table", "| a |\n", writer="gen.py")
    first = doc.read_text()
    assert first == (
        "# Title\nintro\n<!-- table:begin (written by gen.py) -->\n| a |\n<!-- table:end -->\n"
    )
    doc.write_text(first + "after\n")
    write_between_markers(doc, "table", "| b |", writer="gen.py")
    write_between_markers(doc, "other", "x", writer="gen.py")
    text = doc.read_text()
    assert text.startswith("# Title\nintro\n<!-- table:begin (written by gen.py) -->\n| b |\n")
    assert "| a |" not in text and "<!-- table:end -->\nafter\n<!-- other:begin" in text
    assert [p.name for p in tmp_path.iterdir()] == ["doc.md"]  # no temp file left
