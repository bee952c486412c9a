"""The real ``sshcluster ec2 up`` as its own process against moto over HTTP, signalled at
several moments: SIGTERM (a closed laptop lid's shutdown, ``kill``, a CI timeout), SIGHUP
(a dropped ssh session to the machine running it), a quick double Ctrl-C, and SIGKILL
(then ``ec2 gc``). Afterwards no instance, key pair or security group may be left, the
exit status is the conventional one, and no traceback is shown.

The process runs ``cli_with_seams.py``: the real command, with only the instances'
addresses sent to 127.0.0.1 (a port nothing listens on, or the local test SSH servers).
The fault proxy slows chosen AWS calls down, to signal the process in the middle of them.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.jobs.helpers import signals_as_in_a_terminal

from .faults import FaultProxy
from .helpers import SshHosts, live, nothing_left, run, spec_text, state_files

pytestmark = pytest.mark.slow  # signals and killed processes

CLI = Path(__file__).with_name("cli_with_seams.py")


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (SSH never answers there)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Up:
    """A running ``sshcluster ec2 up`` and the lines of its stderr."""

    proc: subprocess.Popen[str]
    lines: queue.Queue[str]
    seen: list[str]

    def wait_for(self, prefix: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(line.startswith(prefix) for line in self.seen):
            try:
                self.seen.append(self.lines.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"no line {prefix!r} within {timeout} s: {self.seen}")

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        status = self.proc.wait(timeout)
        while True:
            try:
                self.seen.append(self.lines.get(timeout=5))
            except queue.Empty:
                break
            if self.seen[-1] == "\0":
                self.seen.pop()
                break
        return status, "".join(self.seen)


def start_up(tmp_path: Path, ami: str, endpoint: str, ports: list[int]) -> Up:
    (tmp_path / "ec2.yaml").write_text(spec_text(ami, count=3))
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "PYTHONUNBUFFERED": "1",
           "SSHCLUSTER_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen(
        [sys.executable, str(CLI), ",".join(map(str, ports)), "ec2", "up", "ec2.yaml",
         "--timeout", "120"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, preexec_fn=signals_as_in_a_terminal)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put("\0")

    threading.Thread(target=read, daemon=True).start()
    return Up(proc, lines, [])


def assert_nothing_left(client: Any, tmp_path: Path) -> None:
    assert nothing_left(client) == {}
    assert client.describe_key_pairs()["KeyPairs"] == []
    assert [g["GroupName"] for g in client.describe_security_groups()["SecurityGroups"]] \
        == ["default"]
    state = tmp_path / "state"
    assert state_files(state) == []
    assert not (tmp_path / "rwork.pem").exists()


SIGNALS = {"SIGTERM": (signal.SIGTERM, 143), "SIGHUP": (signal.SIGHUP, 129),
           "SIGINT": (signal.SIGINT, 130)}


@pytest.mark.parametrize(("name", "moment"), [
    ("SIGTERM", "ssh"),             # waiting for SSH
    ("SIGHUP", "ssh"),
    ("SIGINT", "ssh"),
    ("SIGTERM", "hostkeys"),        # SSH answers; waiting for the host keys
    ("SIGTERM", "RunInstances"),    # while AWS is starting the instances
    ("SIGHUP", "CreateSecurityGroup"),  # before any instance exists
])
def test_a_signal_during_up_cleans_up_like_ctrl_c(
        client: Any, proxy: FaultProxy, ami: str, hosts: SshHosts, tmp_path: Path,
        name: str, moment: str) -> None:
    signum, status = SIGNALS[name]
    slow = proxy.add(moment, delay_answer=1.0) if moment[0].isupper() else None
    ports = hosts.ports[:3] if moment == "hostkeys" else [closed_port()]
    up = start_up(tmp_path, ami, proxy.url, ports)
    if slow is not None:
        assert slow.seen.wait(60), up.seen
    else:
        up.wait_for(f"{moment}: 0/3")
    up.proc.send_signal(signum)
    code, err = up.finish()
    assert code == status, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: up rwork interrupted by {name}; cleaned up: "), err
    if moment != "CreateSecurityGroup":
        assert "terminated: i-" in last
    assert_nothing_left(client, tmp_path)


@pytest.mark.parametrize(("first", "second"), [("SIGINT", "SIGINT"), ("SIGHUP", "SIGTERM")])
def test_a_second_signal_during_the_cleanup_does_not_cut_it_short(
        client: Any, proxy: FaultProxy, ami: str, tmp_path: Path, first: str,
        second: str) -> None:
    terminating = proxy.add("TerminateInstances", delay_answer=1.0)
    up = start_up(tmp_path, ami, proxy.url, [closed_port()])
    up.wait_for("ssh: 0/3")
    up.proc.send_signal(SIGNALS[first][0])
    assert terminating.seen.wait(60), up.seen
    up.proc.send_signal(SIGNALS[second][0])  # a quick second Ctrl-C, a TERM after a HUP
    code, err = up.finish()
    assert code == SIGNALS[first][1], err
    assert "Traceback" not in err
    assert f"{second} received: finishing the cleanup first" in err
    assert f"error: up rwork interrupted by {first}; cleaned up: terminated: i-" in err
    assert_nothing_left(client, tmp_path)


@pytest.mark.parametrize("moment", ["ssh", "RunInstances", "AuthorizeSecurityGroupIngress"])
def test_a_killed_up_is_collected_by_gc_at_once(
        client: Any, proxy: FaultProxy, ami: str, tmp_path: Path, moment: str) -> None:
    # SIGKILL cannot be handled: the record (still 'starting') and the tags are all that
    # is left, and gc must not wait for the cluster's expiry. At RunInstances the process
    # dies after AWS started the instances and before it saw their ids.
    slow = proxy.add(moment, delay_answer=30.0) if moment[0].isupper() else None
    up = start_up(tmp_path, ami, proxy.url, [closed_port()])
    if slow is not None:
        assert slow.done.wait(60), up.seen
    else:
        up.wait_for("ssh: 0/3")
    up.proc.kill()
    assert up.proc.wait(30) == -signal.SIGKILL
    if moment != "AuthorizeSecurityGroupIngress":
        assert len(live(client)) == 3

    listed = run("ec2", "ls")
    assert "rwork (orphaned)" in listed.output, listed.output
    assert "end it with: sshcluster ec2 gc" in listed.output
    result = run("ec2", "gc", "--yes")
    assert result.exit_code == 0, result.output
    assert "rwork (us-east-1): the 'sshcluster ec2 up' that started it is gone" in result.output
    assert "Traceback" not in result.output
    assert_nothing_left(client, tmp_path)


def test_an_interrupt_turned_into_another_error_is_still_the_interrupt() -> None:
    """A signal's exception lands wherever the program was; code it cuts short (here a
    lock's wait, as in concurrent.futures) may raise an error of its own instead. The guard
    knows which signal it raised, so `up` still ends as that signal asks (exit 143)."""
    from sshcluster.ec2.signals import Interrupted, exit_status, signal_guard

    caught: BaseException | None = None
    with signal_guard() as guard:
        try:
            cond = threading.Condition()
            with cond:
                threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
                cond.wait(5)
        except BaseException as exc:  # whatever the interrupted code made of it
            caught = guard.as_interrupt(exc)
        assert guard.as_interrupt(RuntimeError("release unlocked lock")).__class__ is \
            Interrupted
    assert isinstance(caught, Interrupted) and exit_status(caught) == 143
