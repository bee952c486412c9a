"""A lease's release never waits on a write its ssh does not take: ``HostLease.close()``
gives a write under way (the heartbeat's, into an ssh that reads nothing) no longer than
the release itself, then kills the session, which ends that write too."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time

import pytest

from sshcluster.jobs import leases
from sshcluster.jobs.leases import HostLease


def test_close_ends_a_session_whose_write_is_stuck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leases, "RELEASE_TIMEOUT", 1.0)
    lease = object.__new__(HostLease)  # (its session: a process that never reads stdin)
    lease.label = "node1"
    lease.proc = subprocess.Popen(["sleep", "600"], stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True, text=True)
    lease._closed = threading.Event()
    lease._writing = threading.Lock()
    try:
        # more than a pipe holds: the write blocks, holding the lock
        writer = threading.Thread(target=lease._write, args=("\n" * 2**20,), daemon=True)
        writer.start()
        for _ in range(100):
            if lease._writing.locked():
                break
            time.sleep(0.05)
        time.sleep(0.2)
        assert writer.is_alive() and lease._writing.locked()
        closer = threading.Thread(target=lease.close, daemon=True)
        closer.start()
        closer.join(30)  # (a hang guard: the old close() waited for the write for good)
        assert not closer.is_alive(), "close() waited for a write that never ends"
        assert lease.proc.returncode == -signal.SIGKILL
        writer.join(30)
        assert not writer.is_alive()
        assert lease._write("\n") is False  # (closed: no write starts again)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(lease.proc.pid, signal.SIGKILL)
        lease.proc.wait()
