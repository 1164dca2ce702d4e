"""Journey: the cookbook's Django commands (recipes 3 and 14), as written, in a project
made by ``django-admin startproject``: ``readtemp`` calls a device in another process,
stores the answer with the ORM and exits promptly; ``peernode`` serves a device's calls
into the ORM until SIGTERM; ``adddevice`` pairs a new device with the running
``peernode``, which lets it in at once. Before the fix the recipe had no command that
calls a device, and its model was not shown."""

from __future__ import annotations

import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

import peernet

from tests.docblocks import files_of, section
from tests.journeys.harness import VENV_BIN, peernet_cli, run

EXIT_AFTER_WORK_S = 2.0  # a one-shot command exits this soon after its last line


def _build_project(tmp_path: Path, env: dict[str, str]) -> Path:
    """startproject + startapp, then the recipe's files, exactly as the recipe shows."""
    site = tmp_path / "site"
    site.mkdir()
    run([str(VENV_BIN / "django-admin"), "startproject", "mysite", str(site)],
        cwd=tmp_path, env=env)
    run([sys.executable, "manage.py", "startapp", "myapp"], cwd=site, env=env)
    for path in ["myapp/management/__init__.py", "myapp/management/commands/__init__.py"]:
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).touch()  # "an empty __init__.py in management/ and in commands/"
    files = files_of(section("guides/cookbook.md", 3))
    assert set(files) == {"device.py", "mysite/settings.py", "myapp/models.py",
                          "myapp/management/commands/readtemp.py",
                          "myapp/management/commands/peernode.py"}, sorted(files)
    del files["device.py"]  # it runs on the device (the Jupyter journey runs it)
    added = files_of(section("guides/cookbook.md", 14))
    assert set(added) == {"myapp/management/commands/adddevice.py"}, sorted(added)
    files.update(added)
    settings = site / "mysite/settings.py"
    settings.write_text(settings.read_text() + "\n" + files.pop("mysite/settings.py")
                        + '\nPEERNET_HOST = "127.0.0.1"  # the journey stays on loopback\n')
    for path, code in files.items():
        (site / path).write_text(code)
    run([sys.executable, "manage.py", "makemigrations", "myapp"], cwd=site, env=env)
    run([sys.executable, "manage.py", "migrate"], cwd=site, env=env)
    return site


@pytest.mark.timeout(60)
def test_the_django_commands_call_a_device_and_exit_promptly(tmp_path, user_env, processes):
    started = time.monotonic()
    site = _build_project(tmp_path, user_env)
    built = time.monotonic()
    device = processes.device(tmp_path / "device", cwd=tmp_path, env=user_env)
    site_id = peernet_cli("--data-dir", str(site / "peernet-data"), "id",
                          cwd=site, env=user_env).split()[0]
    peernet_cli("--data-dir", str(site / "peernet-data"), "pair", device.id, "--label", "pi",
                cwd=site, env=user_env)
    device.do("pair", peer=site_id, label="site")

    # The one-shot command: its work, then exit within EXIT_AFTER_WORK_S.
    readtemp = processes.start([sys.executable, "manage.py", "readtemp", device.id,
                                "127.0.0.1", str(device.port)], cwd=site, env=user_env)
    said_at, _ = readtemp.expect(r"^stored reading 1: 21\.5 °C$", timeout_s=20)
    assert readtemp.wait(10) == 0, readtemp.text()
    exit_after_s = time.monotonic() - said_at
    assert exit_after_s < EXIT_AFTER_WORK_S, f"exited {exit_after_s:.2f} s after its work"

    # A failure is one line on stderr and exit status 1, not a traceback.
    bad = processes.start([sys.executable, "manage.py", "readtemp", "pn1notanid",
                           "127.0.0.1", str(device.port)], cwd=site, env=user_env)
    assert bad.wait(20) == 1
    bad.expect(r"^CommandError: pn1notanid: invalid peer id", timeout_s=5)
    assert "Traceback" not in bad.text()

    # Recipe 14 with no node running: one line saying so, not a traceback.
    kitchen = processes.device(tmp_path / "kitchen", cwd=tmp_path, env=user_env)
    kitchen.do("pair", peer=site_id, label="site")
    early = processes.start([sys.executable, "manage.py", "adddevice", kitchen.id],
                            cwd=site, env=user_env)
    assert early.wait(20) == 1
    early.expect(r"^CommandError: no peernet node is running on .*manage.py peernode",
                 timeout_s=5)

    # The long-running command serves the device's calls into the ORM.
    peernode = processes.start([sys.executable, "manage.py", "peernode", "--port", "0"],
                               cwd=site, env=user_env)
    port = int(peernode.expect(rf"^{site_id} listening on port (\d+);", timeout_s=20)[1].group(1))
    device.do("connect", peer=site_id, host="127.0.0.1", port=port)
    assert device.do("call", peer=site_id, name="reading", args={"celsius": 18.0}) == "stored"

    # Recipe 14: a device added while it runs is let in at once, no restart.
    add = processes.start([sys.executable, "manage.py", "adddevice", kitchen.id, "--label",
                           "kitchen-pi", "--address", f"127.0.0.1:{kitchen.port}"],
                          cwd=site, env=user_env)
    short = peernet.PeerId.parse(kitchen.id).short
    add.expect(rf"^{short} \(kitchen-pi\): online$", timeout_s=20)
    assert add.wait(10) == 0, add.text()
    assert kitchen.do("call", peer=site_id, name="reading", args={"celsius": 19.0},
                      timeout=1.0) == "stored"

    # While it runs, the site's identity is taken, and the error says by whom.
    locked = processes.start([sys.executable, "manage.py", "readtemp", device.id,
                              "127.0.0.1", str(device.port)], cwd=site, env=user_env)
    assert locked.wait(20) == 1
    text = locked.text()
    assert "another process" in text and f"pid {peernode.pid}" in text, text
    assert "manage.py peernode" in text and "Traceback" not in text

    stopped = time.monotonic()
    peernode.popen.send_signal(signal.SIGTERM)  # what systemd sends
    peernode.expect(r"^stopping$", timeout_s=5)
    assert peernode.wait(10) == 0, peernode.text()
    stop_s = time.monotonic() - stopped
    assert stop_s < EXIT_AFTER_WORK_S, f"peernode took {stop_s:.2f} s to stop"

    with sqlite3.connect(site / "db.sqlite3") as db:
        rows = db.execute("SELECT peer, celsius FROM myapp_reading ORDER BY id").fetchall()
    db.close()
    assert rows == [(device.id, 21.5), (device.id, 18.0), (kitchen.id, 19.0)]
    print(f"django journey: {time.monotonic() - started:.1f} s (project built in "
          f"{built - started:.1f} s); readtemp exited {exit_after_s:.2f} s after its work, "
          f"peernode {stop_s:.2f} s after SIGTERM")
