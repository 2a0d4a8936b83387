"""The Colab notebook runs top to bottom (on CPU, with its small settings)."""

import nbformat
import pytest
from helpers import REPO_ROOT
from nbclient import NotebookClient

NOTEBOOK = REPO_ROOT / "experiments" / "colab_tpu.ipynb"
CPU_PARAMETERS = (
    "INSTALL = False\nSMALL = True\nEXPECT_TPU = False\nWORKDIR = 'runs'\nREPO_URL = ''\n"
)


@pytest.mark.slow
@pytest.mark.real_data
def test_colab_notebook_runs_on_cpu(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    parameters = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1
    parameters[0].source = CPU_PARAMETERS
    NotebookClient(
        notebook,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    outputs = "".join(
        o.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
    )
    assert "Fashion-MNIST test accuracy: 0.8" in outputs  # one epoch of the dense model
    images = sum(
        "image/png" in o.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
    )
    assert images == 2  # training curves and confusion matrix, inline
    assert (tmp_path / "flaxmnist_runs.zip").stat().st_size > 0
    assert (tmp_path / "runs" / "fashion" / "eval" / "report.html").exists()
