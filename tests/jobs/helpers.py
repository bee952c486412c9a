"""What the job tests share: an inventory for some of the testbed's hosts, and the
``sshcluster`` command run in a subprocess (its own process group, as a terminal's job)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from sshcluster.testing import Testbed

#: What a job may leave on a host: R (workers), sh (the launch's and the lease's
#: scripts), sleep, bash.
LEFTOVER = "R|sh|sleep|bash"
#: What a detached job may leave on a host: besides the launch's, the supervisor's
#: sh, its lease sessions' ssh and cat, logs' tail.
DETACHED_LEFTOVER = "R|sh|sleep|bash|timeout|ssh|cat|tail|stdbuf"
#: Seconds a job on the test hosts takes at most (a hang guard, well above what it takes).
JOB_TIMEOUT = 180.0


def inventory(tb: Testbed, path: Path, hosts: Sequence[int] | None = None) -> Path:
    """An inventory for the testbed's hosts numbered ``hosts`` (0-based; all by default),
    2 workers each."""
    tb.write_inventory(path, ncore=2)
    if hosts is not None:
        data = yaml.safe_load(path.read_text())
        data["hosts"] = [data["hosts"][i] for i in hosts]
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def env(state: Path) -> dict[str, str]:
    """The environment for a job whose records go under ``state``."""
    return dict(os.environ, SSHCLUSTER_STATE_DIR=str(state), NO_COLOR="1")


def signals_as_in_a_terminal() -> None:
    """(a child's preexec_fn) SIGHUP and SIGINT at their defaults, as a command typed in a
    terminal gets them: a test run under nohup, or in the background of a script, would
    else hand its children SIGHUP or SIGINT ignored, which sshcluster leaves ignored."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: Sequence[str], state: Path) -> subprocess.Popen[str]:
    """``sshcluster ARGS`` in its own process group, stdout and stderr piped."""
    return subprocess.Popen([sys.executable, "-m", "sshcluster", *args], env=env(state),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=signals_as_in_a_terminal)


def sshcluster(args: Sequence[str], state: Path,
               timeout: float = JOB_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``sshcluster ARGS``, to its end (killed and failed after ``timeout``)."""
    return subprocess.run([sys.executable, "-m", "sshcluster", *args], env=env(state),
                          capture_output=True, text=True, timeout=timeout)


def until_state(job: str, state: Path, wanted: set[str], timeout: float = JOB_TIMEOUT
                ) -> dict[str, object]:
    """Detached job ``job``'s entry in ``jobs --json`` once its state is one of
    ``wanted`` (polled; the test fails after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        listed = sshcluster(["jobs", "--json"], state)
        assert listed.returncode in (0, 1), listed.stderr
        mine = next(j for j in json.loads(listed.stdout) if j["job"] == job)
        if mine["state"] in wanted:
            return mine
        assert time.monotonic() < deadline, f"job {job} still {mine}"
        time.sleep(0.5)
