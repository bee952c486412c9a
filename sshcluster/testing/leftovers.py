"""What a launch left running: one count for every test that starts processes.

After a cluster stops (or fails to start, or its primary dies), nothing it started may
live on. :func:`nothing_left` looks everywhere a launch starts something:

* on every test host: R (workers and their forks), ``sh``, ``bash`` (the host's
  watchdog), ``sleep`` and ``timeout`` (what the host script and the workers run), and
  the ``sshd`` processes that serve a session (``sshd: root@notty``; not the listener);
* on the primary: the ``ssh`` clients to the testbed's hosts, and the supervisor, its
  feeder loops and the per-host scripts of the launch (every process whose command line
  names ``marker``: run R with ``TMPDIR`` set to a directory of the test's, and every
  file of its launch is below it).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sshcluster.testing.netns import pids_in_netns, process_name

if TYPE_CHECKING:
    from sshcluster.testing.testbed import Testbed

__all__ = ["HOST_PROCESSES", "launch_env", "nothing_left"]

#: The process names a launch may leave on a host (``comm``, matched whole).
HOST_PROCESSES = re.compile("R|sh|bash|sleep|timeout")


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _describe(pid: int, name: str) -> str:
    return f"{pid} {name}: {' '.join(_cmdline(pid)).strip()}"


def _on_hosts(tb: Testbed) -> dict[str, list[str]]:
    netns = {h.netns: h.hostname for h in tb.hosts}
    left: dict[str, list[str]] = {}
    for ns, pids in pids_in_netns(netns).items():
        for pid in pids:
            name = process_name(pid)
            if name is None:
                continue
            # (the listener calls itself "sshd: /usr/sbin/sshd ... [listener] ...")
            line = " ".join(_cmdline(pid))
            session = name == "sshd" and line.startswith("sshd: ") and "[listener]" not in line
            if HOST_PROCESSES.fullmatch(name) or session:
                left.setdefault(netns[ns], []).append(_describe(pid, name))
    return left


def _on_primary(tb: Testbed, marker: str | None) -> list[str]:
    addresses = {h.address for h in tb.hosts}
    me = os.getpid()
    left = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        argv = _cmdline(pid)
        name = process_name(pid)
        if name is None or not argv:
            continue
        if (name == "ssh" and addresses & set(argv)) or (
                marker and name != "pytest" and any(marker in a for a in argv)):
            left.append(_describe(pid, name))
    return left


def launch_env(directory: Path) -> dict[str, str]:
    """This process's environment with ``TMPDIR`` in ``directory``: an R started with it
    keeps its launch's files (and so the command lines of what it starts) below it."""
    return {**os.environ, "TMPDIR": str(directory)}


def nothing_left(tb: Testbed, *, marker: str | Path | None = None, wait: float = 10.0
                 ) -> dict[str, list[str]]:
    """What is still running of a launch on ``tb``'s hosts (by hostname) and on the
    primary (``"primary"``), once nothing is or ``wait`` seconds have passed: ``{}``
    means nothing is left. ``marker`` (a path) finds the launch's own processes on the
    primary (see the module's docstring)."""
    deadline = time.monotonic() + wait
    while True:
        left = _on_hosts(tb)
        primary = _on_primary(tb, None if marker is None else str(marker))
        if primary:
            left["primary"] = primary
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)
