"""The signal guard (ec2 up, run, run --ec2) in a real process started as nohup starts
it: SIGHUP ignored stays ignored, so logging out does not stop the work; a signal it
handles still ends it in order."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import os, signal, sys
from sshcluster.ec2.signals import Interrupted, signal_guard
try:
    with signal_guard():
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIG{other})
        print("not interrupted")
except Interrupted as e:
    print("interrupted by", signal.Signals(e.signum).name)
"""


def _nohup(other: str) -> str:
    done = subprocess.run(["nohup", sys.executable, "-c", CHILD.replace("{other}", other)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_sighup_ignored_as_nohup_does_stays_ignored() -> None:
    assert _nohup("TERM") == "interrupted by SIGTERM"
    assert _nohup("URG") == "not interrupted"  # (SIGHUP came first, and did nothing)
