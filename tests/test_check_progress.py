"""The check's progress on a terminal names the hosts it still waits for."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from sshcluster.testing import Testbed

#: One whole progress line: the hosts it still waits for, up to the line's end (a
#: carriage return, a new line, or the terminal's control sequence that redraws it).
PROGRESS = re.compile(rb"checking hosts; waiting for ([^\r\n\x1b]*)[\r\n\x1b]")


def _pending(seen: bytes) -> list[str]:
    """What each whole progress line so far says the check waits for."""
    return [m.group(1).decode(errors="replace").strip() for m in PROGRESS.finditer(seen)]


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
            # (colours on: the line's text ends where the bar's colour starts)
            env={**{k: v for k, v in os.environ.items() if k != "NO_COLOR"}, "TERM": "xterm",
                 "COLUMNS": "200"})
        os.close(slave)
        seen = b""
        deadline = time.monotonic() + 60  # a hang guard
        while slow.address not in _pending(seen):
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
    # A line named the slow host alone (the other three were done by then), and the
    # last line drawn before the loop stopped reading is that one.
    lines = _pending(seen)
    assert lines and lines[-1] == slow.address, lines
