"""Journey: the cookbook's Jupyter recipe (recipe 4), cell by cell as written, executed
headless in a real IPython kernel: it makes a node, calls a device in another process,
re-runs the cell that makes the node (which must not raise DataDirLocked) and calls
again. Before the fix the recipe's device lived in the notebook's own process and its
cells were one block, so re-running the node cell in a kernel was never tried. The
device is recipe 3's ``device.py`` as written, paired with `peernet pair` while it
runs, as the recipe says (before, no recipe showed a device that serves what recipes 3
and 4 call)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import nbformat
import pytest

from tests.conftest import wait_until
from tests.docblocks import files_of, python_blocks, section
from tests.journeys.harness import group_alive, peernet_cli, with_tests_importable

# Notebook cells: the recipe's, plus the journey's own settings and a check of its own.
SETTINGS, OVERRIDE, MAKE_NODE, CALL, CLOSE, SECOND_NODE = range(6)


class DocDevice:
    """Recipe 3's device.py, as written, in a process of its own."""

    def __init__(self, tmp_path, processes, user_env) -> None:
        script = tmp_path / "device.py"
        script.write_text(files_of(section("guides/cookbook.md", 3))["device.py"])
        self.data_dir = tmp_path / "device"
        self.proc = processes.start([sys.executable, str(script), "0"], cwd=tmp_path,
                                    env={**user_env, "PEERNET_DATA_DIR": str(self.data_dir)})
        line = self.proc.expect(r"^(pn1\S+) serves temperature on port (\d+)$", timeout_s=20)[1]
        self.id, self.port = line.group(1), int(line.group(2))

    def stop(self) -> None:
        """Ctrl-C, as the recipe says: the node closes, and the script exits 0."""
        self.proc.popen.send_signal(signal.SIGINT)
        assert self.proc.wait(10) == 0, self.proc.text()
        assert "Traceback" not in self.proc.text()


def _notebook(data_dir, device) -> nbformat.NotebookNode:
    cells = python_blocks(section("guides/cookbook.md", 4))
    assert len(cells) == 4, "recipe 4: settings, make the node, call, close"
    settings, make_node, call, close = cells
    assert "DataDirLocked" not in make_node
    override = (f"DATA_DIR = {str(data_dir)!r}\n"
                f"DEVICE = {device.id!r}\n"
                f"DEVICE_ADDRESS = ('127.0.0.1', {device.port})\n")
    # What the try/except in the node cell avoids: a second node on the same data dir.
    second_node = ("try:\n"
                   "    peernet.Node(DATA_DIR, host='127.0.0.1')\n"
                   "except peernet.DataDirLocked as exc:\n"
                   "    print(exc)\n")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(code) for code in
                      [settings, override, make_node, call, close, second_node]]
    return notebook


def _texts(executions, index):
    return [" ".join(o["text"] for o in e["outputs"]) for e in executions if e["index"] == index]


@pytest.mark.timeout(60)
def test_the_notebook_recipe_runs_in_a_kernel_and_survives_a_rerun(tmp_path, user_env,
                                                                    processes):
    started = time.monotonic()
    device = DocDevice(tmp_path, processes, user_env)
    data_dir = tmp_path / "lab"
    notebook_id = peernet_cli("--data-dir", str(data_dir), "id",
                              cwd=tmp_path, env=user_env).split()[0]
    # "Pair this node's id (node.id) on the device once, with `peernet pair`": the
    # device's node runs, so the command goes through its control socket.
    peernet_cli("--data-dir", str(device.data_dir), "pair", notebook_id, "--label",
                "notebook", cwd=tmp_path, env=user_env)
    path = tmp_path / "lab.ipynb"
    nbformat.write(_notebook(data_dir, device), path)

    plan = [SETTINGS, OVERRIDE, MAKE_NODE, CALL, MAKE_NODE, CALL, SECOND_NODE, CLOSE]
    runner = processes.start([sys.executable, "-m", "tests.journeys.run_notebook", str(path),
                              json.dumps(plan)], cwd=tmp_path, env=with_tests_importable(user_env))
    kernel = int(runner.expect(r"^KERNEL (\d+)$", timeout_s=30)[1].group(1))
    try:
        code = runner.wait(40)
    finally:
        if group_alive(kernel):  # nbclient shuts its kernel down; make sure of it
            os.killpg(kernel, signal.SIGKILL)
    executions = [json.loads(line[5:]) for _, line in runner.output if line.startswith("CELL ")]
    assert code == 0, runner.text()
    assert [e["index"] for e in executions] == plan

    made = [e for e in executions if e["index"] == MAKE_NODE]
    assert len(made) == 2 and all(o["html"] for e in made for o in e["outputs"])  # a table
    assert _texts(executions, CALL) == ["{'celsius': 21.5}"] * 2
    [refusal] = _texts(executions, SECOND_NODE)
    assert "in this process" in refusal and "node.close()" in refusal
    assert wait_until(lambda: not os.path.exists(f"/proc/{kernel}"), timeout_s=5)
    assert (data_dir / "node.lock").read_text().strip() == ""  # the last cell closed the node
    device.stop()
    print(f"jupyter journey: {time.monotonic() - started:.1f} s")
