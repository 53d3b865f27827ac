"""Every notebook in notebooks/ runs top to bottom in a fresh Jupyter kernel on the CPU default model.

A cell that raises fails the test (the notebooks assert what they show: outputs that match their
regex / schema, cache hits, a clean server exit). Notebooks are committed without outputs.
"""

from __future__ import annotations

import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK_DIR = os.path.join(REPO, "notebooks")
NOTEBOOKS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))
EXPECTED = {"quickstart.ipynb", "structured_output.ipynb", "agents.ipynb", "serving.ipynb", "cache_hit_rate.ipynb"}
CELL_TIMEOUT_S = 180
NOTEBOOK_TIMEOUT_S = 300


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)


def test_the_documented_notebooks_exist():
    assert EXPECTED <= set(NOTEBOOKS), sorted(EXPECTED - set(NOTEBOOKS))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_without_outputs(name):
    nb = _read(name)
    nbformat.validate(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{name} cell {index} has outputs: clear them before committing")


@pytest.mark.timeout(NOTEBOOK_TIMEOUT_S)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, monkeypatch):
    # The kernel (and the server the serving notebook starts) inherit this environment: import the
    # checkout, not whatever else is installed, and draw figures without a display.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    nb = _read(name)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": NOTEBOOK_DIR}})
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells and all(c.execution_count is not None for c in code_cells)
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    if name == "cache_hit_rate.ipynb":
        images = [o for c in code_cells for o in c.outputs if "image/png" in o.get("data", {})]
        assert images, "the cache hit-rate notebook must show its plot"
