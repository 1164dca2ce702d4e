"""Journey: the cookbook's Flask app (recipe 2), as written, under ``flask run --debug``,
answering real HTTP requests on 127.0.0.1 while it talks to a device in another process.

Before the fix the recipe made its node when the module was imported: the reloader's
watcher process imported the app first and held the data dir, and the serving child
answered every request with DataDirLocked (HTTP 500 and a traceback). A bad or unpaired
id in the URL gave a 500 too.
"""

from __future__ import annotations

import http.client
import json
import signal
import time
from pathlib import Path

import pytest

from peernet import PeerId
from peernet.identity import Identity
from tests.docblocks import files_of, section
from tests.journeys.harness import VENV_BIN, free_port, group_alive, parent_pid, peernet_cli, \
    wait_for_port


def _request(port: int, method: str, path: str) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read().decode()
    finally:
        conn.close()
    assert "Traceback" not in body, body
    return response.status, json.loads(body)


def _pid_in_lock(data_dir: Path) -> int | None:
    text = (data_dir / "node.lock").read_text().strip() if (data_dir / "node.lock").exists() else ""
    return int(text) if text.isdigit() else None


@pytest.mark.timeout(60)
def test_the_flask_recipe_serves_under_the_reloader(tmp_path, user_env, processes):
    started = time.monotonic()
    (tmp_path / "app.py").write_text(files_of(section("guides/cookbook.md", 2))["app.py"])

    device = processes.device(tmp_path / "device", cwd=tmp_path, env=user_env)
    app_dir = tmp_path / "app-peernet"
    app_id = peernet_cli("--data-dir", str(app_dir), "id", cwd=tmp_path, env=user_env).split()[0]
    peernet_cli("--data-dir", str(app_dir), "pair", device.id, "--label", "pi",
                cwd=tmp_path, env=user_env)
    device.do("pair", peer=app_id, label="web app")
    # A paired device that is switched off: nothing listens on its port.
    switched_off = str(Identity.generate().peer_id)
    peernet_cli("--data-dir", str(app_dir), "pair", switched_off, "--label", "off",
                cwd=tmp_path, env=user_env)
    stranger = str(Identity.generate().peer_id)

    port = free_port()
    env = {**user_env,
           "FLASK_PEERNET_DATA_DIR": str(app_dir),
           "FLASK_PEERNET_HOST": "127.0.0.1",
           "FLASK_PEERNET_PORT": "0",
           "FLASK_PEERNET_DEVICES": json.dumps({device.id: ["127.0.0.1", device.port],
                                                switched_off: ["127.0.0.1", free_port()]})}
    flask = processes.start([str(VENV_BIN / "flask"), "--app", "app", "run", "--debug",
                             "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path, env=env)
    wait_for_port(port, flask, timeout_s=20)

    assert _request(port, "GET", "/readings") == (200, [])
    status, peers = _request(port, "GET", "/peers")  # the first request that needs the node
    assert status == 200, peers
    assert {p["label"] for p in peers} == {"pi", "off"}

    # The node is in the serving child of the reloader, not in the watcher process.
    holder = _pid_in_lock(app_dir)
    assert holder is not None and holder != flask.pid
    assert parent_pid(holder) == flask.pid

    # The device reaches the app's node over the link the app dialled, and calls it.
    assert device.do("wait", peer=app_id, timeout=10.0) is True
    assert device.do("call", peer=app_id, name="reading", args={"celsius": 19.5}) == 1
    status, readings = _request(port, "GET", "/readings")
    assert (status, readings) == (200, [{"from": PeerId.parse(device.id).short, "celsius": 19.5}])

    assert _request(port, "POST", f"/ping/{device.id}") == (200, "ping")
    status, body = _request(port, "POST", "/ping/pn1notanid")
    assert (status, body["error"]) == (400, "InvalidPeerId"), body
    status, body = _request(port, "POST", f"/ping/{stranger}")
    assert (status, body["error"]) == (404, "NotPaired"), body
    status, body = _request(port, "POST", "/ping/kitchen")  # no paired peer has that label
    assert (status, body["error"]) == (404, "UnknownPeer"), body
    status, body = _request(port, "POST", f"/ping/{switched_off}")
    assert (status, body["error"]) == (502, "PeerUnavailable"), body

    # Ctrl-C in the terminal: SIGINT to the group ends the watcher and the serving child,
    # whose atexit hook closes the node (and so clears its pid from the lock file).
    # (SIGTERM to the group would not be clean: the watcher SIGKILLs its child at once.)
    stopped = time.monotonic()
    flask.stop(signal.SIGINT)
    assert flask.popen.returncode == 0, flask.text()
    assert not group_alive(flask.pid)
    assert time.monotonic() - stopped < 3.0
    assert _pid_in_lock(app_dir) is None, "the serving child died without closing its node"
    print(f"flask journey: {time.monotonic() - started:.1f} s")
