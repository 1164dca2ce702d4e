"""Journey: the asyncio facade and the proxy on a Jupyter kernel's own running loop.

Cells use top-level ``await`` (the kernel runs them on its loop, which peernet must
not try to run or block): ``acall``, ``asend``, ``await_peer``, a cancelled ``acall``
that leaves no pending entry, and ``dir()`` of a proxy, as tab completion asks it."""

from __future__ import annotations

import json
import os
import signal
import sys

import nbformat
import pytest

from tests.conftest import wait_until
from tests.journeys.harness import group_alive, with_tests_importable

CELLS = [
    """import asyncio, tempfile, threading, peernet
tmp = tempfile.mkdtemp()
lab = peernet.Node(f"{tmp}/lab", host="127.0.0.1", network_monitor=False)
dev = peernet.Node(f"{tmp}/dev", host="127.0.0.1", network_monitor=False)
release = threading.Event()
dev.expose("temperature", lambda peer, args: 21.5)
dev.expose("slow", lambda peer, args: release.wait(30))
dev.pair(lab.id, label="lab")
lab.pair(dev.id, label="pi")
lab.connect("pi", "127.0.0.1", dev.port)""",
    "await lab.await_peer('pi', timeout=10), await lab.acall('pi', 'temperature'), "
    "await lab.asend('pi', 'temperature')",
    """link = lab._registry.active_link(dev.id)
task = asyncio.ensure_future(lab.acall("pi", "slow", timeout=30))
while link.pending_calls == 0:
    await asyncio.sleep(0.01)
task.cancel()
try:
    await task
except asyncio.CancelledError:
    print("pending after cancel:", link.pending_calls)
release.set()""",
    "[n for n in dir(lab.peer('pi')) if n in ('temperature', 'slow', 'call')]",
    "lab.close(); dev.close()",
]


@pytest.mark.timeout(60)
def test_acall_and_proxies_run_on_the_kernels_loop(tmp_path, user_env, processes):
    path = tmp_path / "async.ipynb"
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(code) for code in CELLS]
    nbformat.write(notebook, path)
    plan = list(range(len(CELLS)))
    runner = processes.start([sys.executable, "-m", "tests.journeys.run_notebook", str(path),
                              json.dumps(plan)], cwd=tmp_path, env=with_tests_importable(user_env))
    kernel = int(runner.expect(r"^KERNEL (\d+)$", timeout_s=30)[1].group(1))
    try:
        code = runner.wait(40)
    finally:
        if group_alive(kernel):
            os.killpg(kernel, signal.SIGKILL)
    executions = [json.loads(line[5:]) for _, line in runner.output if line.startswith("CELL ")]
    assert code == 0, runner.text()
    texts = {e["index"]: " ".join(o["text"] for o in e["outputs"]) for e in executions}
    assert texts[1] == "(True, 21.5, True)"
    assert texts[2].strip() == "pending after cancel: 0"
    assert texts[3] == "['call', 'slow', 'temperature']"
    assert wait_until(lambda: not os.path.exists(f"/proc/{kernel}"), timeout_s=5)
