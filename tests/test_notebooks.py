"""The analysis notebooks run on the tiny target and draw their plots; committed, they are bare."""

import os
from pathlib import Path

import nbformat
import pytest

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"
# notebook -> the plots it must draw (display_data or execute_result with image/png)
PLOTS = {"calibration.ipynb": 2, "layer_probing.ipynb": 3, "rmu_effect.ipynb": 5, "steering.ipynb": 1}


def _code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_every_notebook_is_listed():
    assert sorted(path.name for path in ANALYSIS.glob("*.ipynb")) == sorted(PLOTS)


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_committed_notebook_has_no_outputs(name):
    notebook = nbformat.read(ANALYSIS / name, as_version=4)
    nbformat.validate(notebook)
    for cell in _code_cells(notebook):
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: strip outputs before committing"


@pytest.mark.parametrize("name", sorted(PLOTS))
def test_notebook_runs_and_plots(name, tiny_target, synth_dir, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    root = ANALYSIS.parent
    monkeypatch.setenv("REPEDIT_TARGET", str(tiny_target))
    monkeypatch.setenv("REPEDIT_DATA_DIR", str(synth_dir))
    monkeypatch.setenv("REPEDIT_CACHE", str(tmp_path / "cache"))  # nothing may be built outside the test
    # the kernel imports this checkout, whatever is installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(ANALYSIS / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    images = [output for cell in _code_cells(notebook) for output in cell.outputs
              if "image/png" in output.get("data", {})]
    assert len(images) >= PLOTS[name]
    assert not (tmp_path / "cache").exists()
