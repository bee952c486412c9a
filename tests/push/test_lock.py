"""Two pushes into the same DEST on one host at once, on a real SSH test host: the
host's receive takes a lock in DEST (remote.sh), so the second waits for the first and
then runs, or, once it has waited its limit, fails naming DEST; the files are one
push's or the other's, never a mix.

The first push is held mid-receive by stopping its tar on the host (as a slow disk
would hold it), so that the second surely comes while the first holds DEST."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sshcluster.push.stream import STALL_ENV
from sshcluster.testing import Testbed
from sshcluster.testing.fixtures import MakeTestbed
from sshcluster.testing.hosts import TestHost, host_dir

from .helpers import (
    DEST,
    SSHCLUSTER,
    cli_env,
    local_state,
    path_without,
    remote_state,
    stop_once_running,
)

pytestmark = pytest.mark.slow

#: A hang guard: each push here ends well within this.
DEADLINE = 240


def _version(root: Path, tag: str) -> Path:
    """``root/data``: the same names in every version, the content tagged."""
    data = root / "data"
    for i in range(30):
        d = data / f"d{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.csv").write_text(f"{tag},{i}\n" * (i + 1))
    (data / "big.bin").write_bytes(tag.encode() * (24 << 20))
    # (other mtimes too: the same sizes and mtimes would be taken for the same files)
    stamp = 1_600_000_000 + ord(tag) * 1000
    for p in data.rglob("*"):
        if p.is_file():
            os.utime(p, (stamp, stamp))
    return data


def _push(inv: Path, data: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([*SSHCLUSTER, "push", "--json", str(inv), str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**cli_env(), **(env or {})})


@contextlib.contextmanager
def _held(tb: Testbed, host: TestHost, push: subprocess.Popen[str]) -> Iterator[None]:
    """``push``'s receive on ``host`` stopped (its tar), until the block ends. A slow
    link meanwhile, so that the receive surely is under way when it is stopped."""
    bridge = f"{tb.name}-br"
    subprocess.run(["tc", "qdisc", "add", "dev", bridge, "root", "tbf", "rate", "20mbit",
                    "burst", "128kb", "latency", "50ms"], check=True)
    stopped: list[int] = []
    try:
        stopped += stop_once_running(tb, host, "tar", push)
        subprocess.run(["tc", "qdisc", "del", "dev", bridge, "root"], check=True)
        yield
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", bridge, "root"], check=False,
                       capture_output=True)
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _verdict(push: subprocess.Popen[str]) -> dict[str, object]:
    try:
        out, err = push.communicate(timeout=DEADLINE)
    finally:
        if push.poll() is None:
            push.kill()
            push.wait()
    hosts = json.loads(out)["hosts"] if out else [{"ok": False, "detail": err}]
    assert len(hosts) == 1, hosts
    return dict(hosts[0])


def test_a_second_push_waits_for_the_first_then_runs(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    tb = make_testbed(1, private_dirs={"/srv": "128m"})
    host = tb.hosts[0]
    inv = tb.write_inventory(tmp_path / "hosts.yaml", extra={"workdir": DEST})
    first, second = _version(tmp_path / "a", "A"), _version(tmp_path / "b", "B")
    a = _push(inv, first)
    try:
        with _held(tb, host, a):
            b = _push(inv, second)
            # the second's receive waits (for the lock: a second apart) while the first
            # is held; without a lock it would have gone ahead and ended
            deadline = time.monotonic() + 60
            while not tb.processes(host, "sleep"):
                assert time.monotonic() < deadline and b.poll() is None, (
                    "the second push did not wait: " + (b.communicate()[0] if
                                                        b.poll() is not None else ""))
                time.sleep(0.05)
    finally:
        first_verdict = _verdict(a)
    assert first_verdict["ok"], first_verdict
    second_verdict = _verdict(b)
    assert second_verdict["ok"], second_verdict
    # one after the other: the second's files, every one of them
    assert remote_state(tb, host) == local_state(second)
    assert not any(".sshcluster-push" in p for p in remote_state(tb, host, DEST))


@pytest.mark.parametrize("hidden", [(), ("flock",)], ids=["flock", "mkdir"])
def test_a_second_push_that_waited_its_limit_fails_naming_dest(
    make_testbed: MakeTestbed, tmp_path: Path, hidden: tuple[str, ...]
) -> None:
    tb = make_testbed(1, private_dirs={"/srv": "128m"})
    host = tb.hosts[0]
    if hidden:  # a host without flock(1): the lock is a directory made by mkdir
        bashrc = host_dir(tb.workdir, host) / "bashrc"
        path = path_without(tmp_path / "bin", hidden)
        bashrc.write_text(f"export PATH={path}\n" + bashrc.read_text())
    inv = tb.write_inventory(tmp_path / "hosts.yaml", extra={"workdir": DEST})
    first, second = _version(tmp_path / "a", "A"), _version(tmp_path / "b", "B")
    a = _push(inv, first)
    try:
        with _held(tb, host, a):
            # (a stall limit of 6 s: the host waits 3 s for DEST)
            second_verdict = _verdict(_push(inv, second, {STALL_ENV: "6"}))
    finally:
        first_verdict = _verdict(a)
    assert second_verdict == {**second_verdict, "ok": False, "detail": (
        f"another push to {DEST} is running on {host.address} (waited 3 s for it): try "
        "again once it has ended")}, second_verdict
    assert first_verdict["ok"], first_verdict
    assert remote_state(tb, host) == local_state(first)  # the first's, whole
    # and the lock is not left behind: a push afterwards goes ahead
    assert _verdict(_push(inv, second, {STALL_ENV: "6"}))["ok"]
    assert remote_state(tb, host) == local_state(second)
