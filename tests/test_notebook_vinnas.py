"""The VINNAS notebook: committed without outputs, and runs top to bottom in a headless kernel (tiny budget)."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest

from tests.test_notebook import PROBE, _text

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02_vinnas_ard.ipynb"


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for i, cell in enumerate(code):
        assert cell.outputs == [] and cell.execution_count is None, f"code cell {i} has outputs: strip them"
    assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.slow
def test_notebook_executes(tmp_path, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    monkeypatch.setenv("BAYESNAS_NOTEBOOK_EPOCHS", "2")
    monkeypatch.setenv("BAYESNAS_NOTEBOOK_RETRAIN_EPOCHS", "1")
    # one intra-op thread in the kernel: on a small shared machine, torch's default of one thread per core makes
    # these tiny convolutions many times slower whenever another process competes for a core
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    client = NotebookClient(nb, km=km, timeout=300, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors, errors
    text = "\n".join(_text(cell) for cell in nb.cells if cell.cell_type == "code")
    assert f"KERNEL_PREFIX={sys.prefix}\n" in text, "the kernel did not run in this environment"
    assert "test accuracy: " in text and "left after pruning" in text
    assert "op_weight[" in text  # az.summary rows
    assert "normal cell:" in text and "fraction of each operation's weights pruned" in text
    assert "sep_conv_3x3" in text
    images = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if "image/png" in out.get("data", {})]
    assert len(images) >= 3, "the plots were not rendered inline"
