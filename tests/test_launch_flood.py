"""A flood of connections to R's port during a launch that one slow host holds open.

A stranger on the primary opens 4,000 connections in 4 seconds, each sending ``SCW`` (the
start of a worker's hello) and then nothing, with at most 300 open at a time. Every
genuine worker must still get in within ``setup_timeout``, and the launch reports the
strangers it refused.

The flood fills the kernel's listen queue faster than R can drain it. What keeps the
workers in: a connection that has sent a whole hello for an expected slot (a worker busy
computing its answer) is never the one closed to make room for strangers that stall.
Before that rule, 2 of 5 runs here failed (once a slot stayed empty until
``setup_timeout``, once a host's workers gave up); after it, 14 of 14 passed.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from sshcluster.bootstrap import RenderOptions, write_bootstrap
from sshcluster.inventory import load_inventory
from sshcluster.testing import Testbed, free_port
from sshcluster.testing.fixtures import run_r_in_test

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

FLOODER = r"""
import socket, sys, time
port, total, most = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[4])
seconds, log = float(sys.argv[3]), sys.argv[5]
deadline = time.monotonic() + 120
while True:  # until R listens
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(1)
        time.sleep(0.05)
opened, failed, held = 0, 0, []
t0 = time.monotonic()
while opened + failed < total and time.monotonic() - t0 < seconds * 3:
    due = t0 + (opened + failed) * seconds / total
    if time.monotonic() < due:
        time.sleep(due - time.monotonic())
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=0.2)
        s.send(b"SCW")
        held.append(s)
        opened += 1
    except OSError:
        failed += 1
    if len(held) > most:
        held.pop(0).close()
with open(log, "w") as f:
    f.write(f"opened {opened} failed {failed} in {time.monotonic() - t0:.1f} s\n")
time.sleep(30)
"""


@pytest.mark.parametrize("tunnel", ["none", "reverse"])
def test_a_flood_does_not_keep_genuine_workers_out(testbed: Testbed, tmp_path: Path,
                                                   tunnel: str) -> None:
    tb = testbed
    hosts = tb.hosts[:2]
    slow = hosts[1]
    port = free_port()
    inv = tb.write_inventory(tmp_path / "hosts.yaml", ncore=2, port=port,
                             extra={"setup_timeout": 40,
                                    "hosts": [{"host": h.address} for h in hosts]})
    f = tmp_path / "cluster.R"
    write_bootstrap(load_inventory(inv), f, RenderOptions(tunnel=tunnel))
    log = tmp_path / "flood.log"
    flood = subprocess.Popen(["python3", "-c", FLOODER, str(port), "4000", "4", "300",
                              str(log)])
    tb.slow_ssh(slow)
    # the slow host answers after about 6 s (ssh retries its SYN after 1, 3, 7 s ...)
    timer = threading.Timer(6, tb.reconnect, [slow])
    timer.start()
    try:
        out = run_r_in_test(f"""
            t0 <- Sys.time()
            source({str(f)!r})
            cat("took|", as.numeric(Sys.time() - t0, units = "secs"), "\\n", sep = "")
            cat("workers|", length(parallelCluster), "\\n", sep = "")
            cat("hosts|", sort(unique(unlist(parallel::clusterEvalQ(parallelCluster,
                Sys.info()[["nodename"]])))), "\\n", sep = " ")
            sshcluster_stop()
        """, tmp_path, timeout=150)
    finally:
        timer.join()
        tb.reconnect(slow)
        flood.kill()
        flood.wait()
    flood_said = log.read_text() if log.exists() else "(no log)"
    assert out.returncode == 0, f"{flood_said}\n{out.stderr}"
    lines = dict(ln.split("|", 1) for ln in out.stdout.splitlines() if "|" in ln)
    assert lines["workers"] == "4", flood_said
    assert lines["hosts"].split() == sorted(h.hostname for h in hosts), flood_said
    assert "refused" in out.stderr, flood_said
