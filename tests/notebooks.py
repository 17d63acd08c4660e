"""Shared checks of the example notebooks: committed without outputs, and executed in a headless kernel."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PROBE = "import sys\nprint('KERNEL_PREFIX=' + sys.prefix)\nprint('KERNEL_EXECUTABLE=' + sys.executable)"


def cell_text(cell) -> str:
    """Everything a cell printed or displayed as text."""
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", ""))
    return "".join(parts)


def assert_stripped(name: str) -> None:
    """The committed notebook is valid, has code and no outputs, and names the python3 kernel."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for i, cell in enumerate(code):
        assert cell.outputs == [] and cell.execution_count is None, f"code cell {i} has outputs: strip them"
    assert nb.metadata.kernelspec.name == "python3"


def execute(name: str, workdir: Path, env: dict[str, str]) -> tuple[str, int]:
    """Run the notebook top to bottom in this environment's kernel; returns (all text output, inline images).

    The kernel is ipykernel's own "python3" spec (``sys.executable -m ipykernel_launcher``; a kernelspec in a user
    or system folder could point at another interpreter, so none is searched), with one intra-op torch thread:
    on a small shared machine torch's default of one thread per core makes tiny convolutions many times slower
    whenever another process competes for a core.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    saved = {key: os.environ.get(key) for key in [*env, "OMP_NUM_THREADS"]}
    os.environ.update({"OMP_NUM_THREADS": "1", **env})
    try:
        km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
        try:
            NotebookClient(nb, km=km, timeout=300, resources={"metadata": {"path": str(workdir)}}).execute()
        finally:  # nbclient leaves a kernel it did not start running (about 1 GB each, until the worker exits)
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors, errors
    text = "\n".join(cell_text(cell) for cell in code)
    assert f"KERNEL_PREFIX={sys.prefix}\n" in text, "the kernel did not run in this environment"
    images = sum("image/png" in out.get("data", {}) for cell in code for out in cell.outputs)
    return text, images
