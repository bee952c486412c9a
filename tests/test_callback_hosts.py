"""A user of a worker host holds connections open on the check's forwarded port.

With the reverse tunnel, the check asks each host's sshd to listen on the host's
127.0.0.1:PORT, and everything that arrives there counts as that host's. An unprivileged
user of the host (``nobody``) keeps 40 connections to that port open, saying nothing,
and opens a new one as soon as one is closed: the host's genuine callback must still pass.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from sshcluster.check.preflight import check
from sshcluster.inventory import load_inventory
from sshcluster.testing import Testbed, free_port

pytestmark = pytest.mark.testbed

HOLDER = r"""
import os, socket, sys, time
port, most, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
held, opened, end = [], 0, time.monotonic() + 90
while time.monotonic() < end:
    for s in list(held):  # forget the ones the primary closed
        s.setblocking(False)
        try:
            if s.recv(16) == b"":
                held.remove(s)
                s.close()
        except BlockingIOError:
            pass
        except OSError:
            held.remove(s)
            s.close()
    while len(held) < most:
        try:
            held.append(socket.create_connection(("127.0.0.1", port), timeout=0.5))
            opened += 1
        except OSError:
            break
    with open(log + ".new", "w") as f:  # (whole or not at all: the test may read it any time)
        f.write(f"opened {opened}\n")
    os.replace(log + ".new", log)
    time.sleep(0.01)
"""


def test_idle_connections_on_the_forward_do_not_fail_the_check(testbed: Testbed,
                                                               tmp_path: Path) -> None:
    tb = testbed
    host = tb.hosts[0]
    port = free_port()
    inv = load_inventory(tb.write_inventory(
        tmp_path / "hosts.yaml", ncore=1, port=port,
        extra={"tunnel": "reverse", "hosts": [{"host": host.address}]}))
    shared = Path("/tmp") / f"sshcluster-holder-{port}.log"
    holder = subprocess.Popen(["ip", "netns", "exec", host.netns, "setpriv",
                               "--reuid=65534", "--regid=65534", "--clear-groups",
                               "/usr/bin/python3", "-c", HOLDER, str(port), "40",
                               str(shared)])
    try:
        # (the holder is up, trying the port, before the check opens the forward: on a
        # busy machine its start-up alone could outlast the whole check)
        deadline = time.monotonic() + 30
        while not shared.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "no holder"
            time.sleep(0.05)
        report = check(inv, timeout=30)
    finally:
        holder.kill()
        holder.wait()
    said = shared.read_text() if shared.exists() else "(nothing)"
    shared.unlink(missing_ok=True)
    Path(f"{shared}.new").unlink(missing_ok=True)
    step = report.hosts[0].checks["callback"]
    assert step.status == "ok", f"{step.detail} / holder: {said} / {report.notes}"
    # the holder really held its 40 connections on the port while the check ran (how many
    # more it opened depends on whether the check outlasted their idle deadline)
    assert int(said.split()[1]) >= 40, said
