"""Run a notebook's cells headless in a real kernel, in the order given, re-running any
cell named twice -- what a person does with Shift-Enter.

    python -m tests.journeys.run_notebook NOTEBOOK.ipynb '[0, 1, 2, 1, 2]'

Prints ``KERNEL <pid>`` once the kernel runs (so the caller can make sure it ends), then
one line ``CELL <json>`` per execution: ``{"index", "outputs"}``, each output reduced
to ``{"type", "text"}`` (plain text, stream text, or ``ename: evalue`` for an error).
Stops at the first cell that raises.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def _text(output: dict) -> str:
    if output["output_type"] == "stream":
        return output["text"]
    if output["output_type"] == "error":
        return f"{output['ename']}: {output['evalue']}"
    return output.get("data", {}).get("text/plain", "")


def main() -> None:
    path, plan = Path(sys.argv[1]), json.loads(sys.argv[2])
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=30, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    with client.setup_kernel():
        print(f"KERNEL {client.km.provisioner.pid}", flush=True)
        for index in plan:
            cell = notebook.cells[index]
            try:
                client.execute_cell(cell, index)
            finally:
                outputs = [{"type": o["output_type"], "text": _text(o),
                            "html": "text/html" in o.get("data", {})} for o in cell.outputs]
                print("CELL " + json.dumps({"index": index, "outputs": outputs}), flush=True)


if __name__ == "__main__":
    try:
        main()
    except CellExecutionError:
        sys.exit(1)
