"""The example notebook: committed without outputs, and runs top to bottom in a headless kernel."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "01_pgnas_posterior.ipynb"
PROBE = "import sys\nprint('KERNEL_PREFIX=' + sys.prefix)\nprint('KERNEL_EXECUTABLE=' + sys.executable)"


def _text(cell) -> str:
    """Everything a cell printed or displayed as text."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", ""))
    return "".join(parts)


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for i, cell in enumerate(code):
        assert cell.outputs == [], f"code cell {i} has outputs: strip them before committing"
        assert cell.execution_count is None, f"code cell {i} has an execution count: strip outputs"
    assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.slow
def test_notebook_executes(tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    monkeypatch.setenv("BAYESNAS_NOTEBOOK_EPOCHS", "1")
    # ipykernel's own "python3" spec (argv: sys.executable -m ipykernel_launcher): a kernelspec installed in a
    # user or system folder could point at another interpreter, so no folder is searched
    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = NotebookClient(nb, km=km, timeout=300, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors, errors
    text = "\n".join(_text(cell) for cell in nb.cells if cell.cell_type == "code")
    assert f"KERNEL_PREFIX={sys.prefix}\n" in text, "the kernel did not run in this environment"
    assert "test accuracy: " in text
    assert "keep_fraction[" in text  # az.summary rows
    assert "of the super-network's" in text
    images = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if "image/png" in out.get("data", {})]
    assert len(images) >= 3, "the plots were not rendered inline"
