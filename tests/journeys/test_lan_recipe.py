"""Journey: the cookbook's LAN discovery recipe (recipe 9), as written, on a LAN the test
builds: two network namespaces joined by a bridge (tests/netns_lab.py), each host with
its own eth0, so the recipe's broadcasts and mDNS stay inside the lab. The only edit is
the one the recipe asks for: the bench pi's real id in place of "pn1...".

Needs root and iproute2, like every netns test; skipped with that reason elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.docblocks import python_blocks, section
from tests.helpers import prepaired
from tests.netns_lab import Lab, require_netns

pytestmark = pytest.mark.netns


@pytest.mark.timeout(60)
def test_the_lan_recipe_finds_and_pairs_a_bench_pi(tmp_path):
    require_netns()
    started = time.monotonic()
    [recipe] = python_blocks(section("guides/cookbook.md", 9))
    assert recipe.count('"pn1..."') == 2
    # The bench pi trusts the node; the node trusts nobody until the recipe pairs the pi.
    ids = prepaired(tmp_path, ["bench", "node"], pairs=[("bench", "node")])
    code = recipe.replace('"pn1..."', json.dumps(str(ids["bench"])))
    with Lab(2) as lab:
        bench = lab.agent(1, tmp_path / "bench", "--discovery", "udp", "mdns",
                          "--interval", "0.5")
        assert bench.id == str(ids["bench"])
        # `python -` runs the block from stdin, as a file pasted into a terminal would.
        proc = subprocess.run(["ip", "netns", "exec", lab.hosts[0], sys.executable, "-"],
                              input=code, capture_output=True, text=True, timeout=40,
                              cwd=tmp_path, env={**os.environ, "TMPDIR": str(tmp_path),
                                                 "PEERNET_DATA_DIR": str(tmp_path / "node")})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    out = proc.stdout
    lines = out.splitlines()
    nearby = [line for line in lines if line.startswith(str(ids["bench"]))]
    assert {line.split()[-1] for line in nearby} >= {"udp", "mdns"}, out
    assert f"('{lab.address(1)}', {bench.port})" in nearby[0], out
    assert lines[-1] == "True", out  # paired, dialled at once, link up
    print(f"LAN journey: {time.monotonic() - started:.1f} s")
