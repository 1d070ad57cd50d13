"""examples/quickstart.ipynb runs from top to bottom, offline, as a user would run it: the split, the
fine-tune on cached features (its last cell asserts the demo's accuracy floor), the curves, the confusion
matrix and the labelled photos inline, and the export."""

from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_the_quickstart_notebook_runs_and_shows_its_pictures():
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(EXAMPLES)}}).execute()  # raises on any cell's error
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    pictures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(pictures) == 3  # curves, confusion matrix, labelled photos
    printed = "".join(output.get("text", "") for output in outputs)
    assert "validation accuracy 0." in printed and "model.onnx True" in printed
