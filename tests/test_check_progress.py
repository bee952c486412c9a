"""The check's progress on a terminal names the hosts it still waits for."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

from sshcluster.testing import Testbed


def test_the_progress_on_a_terminal_names_the_host_still_pending(
        testbed: Testbed, tmp_path: Path) -> None:
    inv = testbed.write_inventory(tmp_path / "hosts.yaml")
    slow = testbed.hosts[2]
    testbed.slow_ssh(slow)  # its sshd answers only once the SYNs pass again
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sshcluster", "check", str(inv), "--timeout", "30"],
            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
            env={**os.environ, "TERM": "xterm", "COLUMNS": "200"})
        os.close(slave)
        seen = b""
        deadline = time.monotonic() + 60  # a hang guard
        while b"waiting for " + slow.address.encode() not in seen:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            if select.select([master], [], [], 0.5)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        testbed.reconnect(slow)
        proc.wait(timeout=60)
    finally:
        testbed.reconnect(slow)
        os.close(master)
    text = seen.decode(errors="replace")
    assert f"checking hosts; waiting for {slow.address}" in text, text
    # (the other three were done by then: only the slow host is named)
    for other in (h for h in testbed.hosts if h is not slow):
        assert f"waiting for {other.address}" not in text.split(
            f"waiting for {slow.address}")[-1]
