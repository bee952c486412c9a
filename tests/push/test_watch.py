"""A push's hashing on the hosts is watched for progress, not timed (watch.py, remote.sh's
sums), on real SSH test hosts: a host that hashes a lot slowly but steadily is waited
for however long it takes; one whose hashing stops is named and given up once it has
made no progress for the stall limit, and the others go on.

The hosts' ``sha256sum`` here is a stand-in that reads each file at about 5 MB/s (a
slow disk), put first on their PATH by their ~/.bashrc, which their ssh sessions read."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import sshcluster
from sshcluster.inventory import load_inventory
from sshcluster.push.stream import STALL_ENV
from sshcluster.testing import Testbed
from sshcluster.testing.fixtures import MakeTestbed
from sshcluster.testing.hosts import host_dir

from .helpers import DEST, SSHCLUSTER, cli_env, local_state, remote_state, stop_once_running

pytestmark = pytest.mark.slow

#: The stall limit here (the hosts then report every second).
STALL = 4
#: A hang guard: each push here ends well within this.
DEADLINE = 240

_SLOW_SHA256SUM = """#!{python}
import hashlib, os, sys, time
names = [a for a in sys.argv[1:] if a != "--"]
if not names:  # (stdin: the tests' own look at what a host holds)
    os.execv("/usr/bin/sha256sum", sys.argv)
with open({log!r}, "a") as log:
    log.write("ran\\n")
for name in names:
    h = hashlib.sha256()
    with open(name, "rb") as f:
        while chunk := f.read(256 << 10):
            h.update(chunk)
            time.sleep(0.05)
    print(f"{{h.hexdigest()}}  {{name}}", flush=True)
"""


def _data(root: Path) -> Path:
    """``root/data``: a 32 MB file (about 6 s to hash at the stand-in's pace: no line
    from it meanwhile) and a few small ones."""
    data = root / "data"
    data.mkdir(parents=True)
    (data / "big.bin").write_bytes(os.urandom(32 << 20))
    for i in range(4):
        (data / f"f{i}.csv").write_text(f"x\n{i}\n")
    return data


def _slow_hash_on_hosts(tb: Testbed, tmp_path: Path) -> Path:
    """The stand-in first on every host's PATH; the file it notes each run in."""
    bindir, log = tmp_path / "bin", tmp_path / "hashed"
    bindir.mkdir()
    shim = bindir / "sha256sum"
    shim.write_text(_SLOW_SHA256SUM.format(python=sys.executable, log=str(log)))
    shim.chmod(0o755)
    for h in tb.hosts:
        bashrc = host_dir(tb.workdir, h) / "bashrc"
        bashrc.write_text(f"export PATH={bindir}:$PATH\n" + bashrc.read_text())
    return log


def _pushed_then_retimestamped(tb: Testbed, tmp_path: Path) -> tuple[Path, Path]:
    inv = tb.write_inventory(tmp_path / "hosts.yaml", extra={"workdir": DEST})
    data = _data(tmp_path / "src")
    assert sshcluster.push(load_inventory(inv), [data]).ok
    for p in data.iterdir():  # same content, new mtimes: every host must hash it all
        os.utime(p, (1_700_000_000, 1_700_000_000))
    return inv, data


def test_a_host_hashing_slowly_but_steadily_is_waited_for(
    make_testbed: MakeTestbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tb = make_testbed(2, private_dirs={"/srv": "128m"})
    inv, data = _pushed_then_retimestamped(tb, tmp_path)
    log = _slow_hash_on_hosts(tb, tmp_path)
    monkeypatch.setenv(STALL_ENV, str(STALL))
    result = sshcluster.push(load_inventory(inv), [data])
    assert result.ok, result.to_json()
    assert [h.detail for h in result.hosts] == ["unchanged"] * 2
    assert result.bytes_out == 0  # hashed, found the same, not sent
    assert log.read_text().count("ran") >= 2  # (the hosts hashed with the stand-in)
    for h in tb.hosts:
        assert remote_state(tb, h) == local_state(data)


def test_a_host_whose_hashing_stops_is_named_and_the_others_go_on(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    tb = make_testbed(2, private_dirs={"/srv": "128m"})
    inv, data = _pushed_then_retimestamped(tb, tmp_path)
    _slow_hash_on_hosts(tb, tmp_path)
    victim = tb.hosts[1]
    proc = subprocess.Popen([*SSHCLUSTER, "push", "--json", str(inv), str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**cli_env(), STALL_ENV: str(STALL)})
    try:
        stop_once_running(tb, victim, "sha256sum", proc)
        out, err = proc.communicate(timeout=DEADLINE)
        # the host ends the stopped hash once the primary is gone
        assert tb.leftovers("sha256sum", wait=30) == {}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in tb.processes(victim, "sha256sum"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 1, err
    hosts = {h["host"]: h for h in json.loads(out)["hosts"]}
    stuck = hosts[victim.address]
    assert not stuck["ok"], stuck
    assert stuck["detail"] == (
        f"{victim.address} made no progress hashing the files in {DEST} whose "
        f"modification time differs for {STALL} s (a process stopped, or its disk or a "
        "mount there stuck?), so the push gave it up"), stuck
    assert hosts[tb.hosts[0].address] == {**hosts[tb.hosts[0].address], "ok": True,
                                          "detail": "unchanged"}
    assert remote_state(tb, tb.hosts[0]) == local_state(data)
