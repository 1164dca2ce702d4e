"""The data-dir lock says who holds it (issue 15 item 6): a node of this process (close
it), or another process, named by pid and command line, which this process cannot
close. Before, both said "close it first (node.close() ...)", which is wrong advice when
a Flask reloader's parent process or a second terminal holds the lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

import peernet

# Extra arguments go before the data dir, so they show early in a cut command line.
HOLD = ("import sys, peernet\n"
        "node = peernet.Node(sys.argv[-1], host='127.0.0.1', network_monitor=False)\n"
        "print('ready', flush=True)\n"
        "sys.stdin.read()\n"
        "node.close()\n")


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start a process that holds a node on a data dir until its stdin closes."""
    procs: list[subprocess.Popen] = []

    script = tmp_path / "holder.py"
    script.write_text(HOLD)

    def start(data_dir: Path, *extra_args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, str(script), *extra_args, str(data_dir)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    yield start
    for proc in procs:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _refusal(data_dir: Path) -> str:
    with pytest.raises(peernet.DataDirLocked) as info:
        peernet.Node(data_dir, host="127.0.0.1", network_monitor=False)
    return str(info.value)


def test_a_node_of_this_process_is_named_as_such_with_the_advice_to_close_it(tmp_path):
    with peernet.Node(tmp_path / "n", host="127.0.0.1", network_monitor=False):
        text = _refusal(tmp_path / "n")
    assert "in this process" in text
    assert "node.close()" in text
    assert "another process" not in text


def test_another_process_is_named_by_pid_and_command_line(tmp_path, holder):
    proc = holder(tmp_path / "n", "--marker-for-the-test")
    text = _refusal(tmp_path / "n")
    assert "another process" in text
    assert f"pid {proc.pid}" in text
    assert "--marker-for-the-test" in text and sys.executable in text
    assert "node.close()" not in text  # this process cannot close another's node
    assert str(tmp_path / "n") in text


def test_the_holder_writes_its_pid_and_clears_it_when_it_lets_go(tmp_path):
    lock_file = tmp_path / "n" / "node.lock"
    with peernet.Node(tmp_path / "n", host="127.0.0.1", network_monitor=False):
        assert lock_file.read_text().strip() == str(os.getpid())
    assert lock_file.read_text().strip() == ""  # blanked in place, not truncated


def test_the_lock_is_free_again_once_the_other_process_has_gone(tmp_path, holder):
    proc = holder(tmp_path / "n")
    _refusal(tmp_path / "n")
    proc.stdin.close()
    assert proc.wait(timeout=10) == 0
    with peernet.Node(tmp_path / "n", host="127.0.0.1", network_monitor=False) as node:
        assert not node.closed


def test_a_hostile_command_line_is_escaped_and_cut_short(tmp_path, holder):
    """The command line is another user's text: escape codes, newlines and bidi marks
    must not reach a terminal or a log raw, and a long one must not flood it."""
    holder(tmp_path / "n", "\x1b]0;pwned\x07", "line\nbreak", "\u202egnp.exe", "x" * 5000)
    text = _refusal(tmp_path / "n")
    assert "\x1b" not in text and "\x07" not in text and "\n" not in text
    assert "\u202e" not in text
    assert "\\x1b]0;pwned\\x07" in text and "line\\nbreak" in text
    assert len(text) < 600


def test_a_child_is_told_that_its_parent_holds_the_lock(tmp_path):
    """The Flask reloader's case: the parent process imported the app and made the node,
    so the serving child cannot. The child's error says it is the parent's, and what to
    do instead."""
    data_dir = tmp_path / "n"
    with peernet.Node(data_dir, host="127.0.0.1", network_monitor=False):
        child = subprocess.run(
            [sys.executable, "-c",
             "import sys, peernet\n"
             "try:\n"
             "    peernet.Node(sys.argv[1], host='127.0.0.1', network_monitor=False)\n"
             "except peernet.DataDirLocked as exc:\n"
             "    print(exc)\n", str(data_dir)],
            capture_output=True, text=True, timeout=30)
    assert child.returncode == 0, child.stderr
    assert f"pid {os.getpid()}, the parent of this one" in child.stdout
    assert "create the node in the process that serves" in child.stdout


def test_the_pid_in_the_file_is_not_trusted_blindly(tmp_path, holder):
    """The lock file is ours, but a reader must survive junk in it: a holder that has not
    written yet, or a file someone edited."""
    holder(tmp_path / "n")
    (tmp_path / "n" / "node.lock").write_text("not a pid\x1b[2J")
    text = _refusal(tmp_path / "n")
    assert "another process" in text and "\x1b" not in text
