"""``tools/docs_figures.py``: the figures README and docs show, written by one command.

One epoch of each preset on synthetic data stands in for the real runs. Without Chromium the
end-to-end test skips (fails on CI, as the other browser tests do).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import require_browser
from PIL import Image

from flaxmnist.testing import write_idx_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOL = REPO_ROOT / "tools" / "docs_figures.py"
# Every figure the docs show from a run.
DOC_FIGURES = ("predictions", "training_curves", "fashion_mlp_confusion", "serve")


def _tool(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOL), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_it_writes_every_figure_the_docs_show_from_a_run(tmp_path):
    require_browser()
    for name in ("mnist", "fashion_mnist"):
        write_idx_dataset(tmp_path / "data" / name, num_train=256, num_test=64)
    out = tmp_path / "figures"
    result = _tool(
        f"--out={out}",
        f"--workdir={tmp_path / 'runs'}",
        "--num_epochs=1",
        f"--data_dir={tmp_path / 'data'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-4:] == [str(out / f"{name}.png") for name in DOC_FIGURES]
    for name in DOC_FIGURES:
        assert Image.open(out / f"{name}.png").format == "PNG", name
    serve_page = Image.open(REPO_ROOT / "docs" / "figures" / "serve.png")
    assert Image.open(out / "serve.png").size == serve_page.size == (800, 520)
    docs = "".join(p.read_text() for p in [REPO_ROOT / "README.md", *REPO_ROOT.glob("docs/*.md")])
    assert [name for name in DOC_FIGURES if f"figures/{name}.png" not in docs] == []


@pytest.mark.slow
def test_without_chromium_it_stops_in_one_line_before_training(tmp_path):
    bin_dir = tmp_path / "bin"  # only Python on the PATH: no chromium, no chromedriver
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    result = _tool(f"--out={tmp_path / 'figures'}", env={**os.environ, "PATH": str(bin_dir)})
    assert result.returncode == 2
    assert result.stderr == (
        "error: serve.png needs chromium and chromedriver "
        "(apt-get install chromium chromium-driver)\n"
    )
    assert not (tmp_path / "figures").exists()


@pytest.mark.slow
def test_an_out_folder_that_cannot_be_made_is_one_line_before_training(tmp_path):
    require_browser()  # checked first
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "figures"
    result = _tool(f"--out={out}")
    assert result.returncode == 2
    assert result.stderr == f"error: cannot write --out {out}: Not a directory\n"
