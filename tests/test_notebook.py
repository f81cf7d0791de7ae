"""The quickstart notebook runs top to bottom (on a small slice of Fashion-MNIST)."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_ECQX_QUICKSTART_SMALL", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "LiteRT accuracy on 500 test images" in outputs
    assert (tmp_path / "quickstart_mobile.tflite").exists() and (tmp_path / "quickstart_micro.tflite").exists()
