"""push when things go wrong, on real SSH test hosts: a host cut off mid-push, a host
that stops taking the data (its receiving end stuck), Ctrl-C mid-push, a full disk, a
file that arrives changed. In each, the other hosts finish (or
stop cleanly), the failed host is named, and no host has a half-written file under its
final name."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import sshcluster
from sshcluster.inventory import load_inventory
from sshcluster.push.manifest import local_manifest
from sshcluster.push.stream import STALL_ENV, tar_stream
from sshcluster.push.transfer import Session, chain_words, script, verdicts
from sshcluster.testing import Testbed
from sshcluster.testing.fixtures import MakeTestbed

from .helpers import (
    DEST,
    SSHCLUSTER,
    cli_env,
    local_state,
    make_tree,
    remote_state,
    stop_once_running,
)

pytestmark = pytest.mark.slow

#: A hang guard: every push here ends well within this (keepalive: 15 s, plus copies).
DEADLINE = 240


def _staging(tb: Testbed, host: object, dest: str = DEST) -> str:
    out = subprocess.run(tb.ssh_argv(host, f"ls -A {dest} 2>/dev/null"),  # type: ignore[arg-type]
                         capture_output=True, text=True, timeout=60)
    return " ".join(w for w in out.stdout.split() if w.startswith(".sshcluster-push"))


def _wait_no_staging(tb: Testbed, host: object, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while _staging(tb, host):
        assert time.monotonic() < deadline, f"staging left on {host}"
        time.sleep(0.2)


def _cut_during(tb: Testbed, fanout: str, tmp_path: Path) -> sshcluster.PushResult:
    inv = load_inventory(tb.write_inventory(tmp_path / "hosts.yaml",
                                            extra={"workdir": DEST, "fanout": fanout}))
    data = make_tree(tmp_path / "src", small=20, big=48 << 20)
    victim = tb.hosts[1]
    fired = threading.Event()

    def progress(host: str, sent: int, total: int) -> None:
        # the chain's head is the only host the primary writes to
        if sent > 8 << 20 and not fired.is_set():
            fired.set()
            tb.cut_off(victim)

    try:
        result = sshcluster.push(inv, [data], progress=progress)
    finally:
        tb.reconnect(victim)
    assert fired.is_set()
    return result


@pytest.mark.parametrize("fanout", ["direct", "chain"])
def test_a_host_cut_off_mid_push_is_named_and_the_others_finish(
    make_testbed: MakeTestbed, tmp_path: Path, fanout: str
) -> None:
    tb = make_testbed(3, private_dirs={"/srv": "128m"}, mesh=fanout == "chain")
    t0 = time.monotonic()
    result = _cut_during(tb, fanout, tmp_path)
    assert time.monotonic() - t0 < DEADLINE
    lost = result.hosts[1]
    assert not lost.ok and lost.host == tb.hosts[1].address
    assert tb.hosts[1].address in lost.detail, lost.detail
    data = tmp_path / "src" / "data"
    for i in (0, 2):
        assert result.hosts[i].ok, result.to_json()
        # In a chain, the host after the lost one was receiving from it: its staging
        # goes once that connection ends (the cut host's FIN, resent after reconnect).
        _wait_no_staging(tb, tb.hosts[i])
        assert remote_state(tb, tb.hosts[i]) == local_state(data)
    if fanout == "chain":  # the host after the lost one got a direct copy
        assert result.hosts[2].via == "direct"
    # the lost host: no file under its final name that is not whole, once it has ended
    # (its session ends when the primary's FIN, resent after the reconnect, reaches it;
    # it then removes its staging directory)
    _wait_no_staging(tb, tb.hosts[1])
    state = remote_state(tb, tb.hosts[1])
    assert "data/big.bin" not in state


def test_a_host_that_stops_taking_the_data_is_given_up_and_the_others_finish(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    """A host whose receiving end is stuck (here its tar stopped, as by a hung disk or
    mount: sshd and the connection stay up, so ssh's keepalive never fires) takes no
    more of the archive: once it has taken nothing for the stall limit (3 s here), the
    push ends its ssh and names it, and the other host gets everything."""
    tb = make_testbed(2, private_dirs={"/srv": "256m"})
    inv = tb.write_inventory(tmp_path / "hosts.yaml", extra={"workdir": DEST})
    # (more than the pipes, ssh's windows and the sockets between can hold)
    data = make_tree(tmp_path / "src", small=20, big=96 << 20)
    victim = tb.hosts[1]
    proc = subprocess.Popen([*SSHCLUSTER, "push", "--json", str(inv), str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**cli_env(), STALL_ENV: "3"})
    try:
        stop_once_running(tb, victim, "tar", proc)  # (once its receive has begun)
        # (a hang guard: without the stall limit this push never ended)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in tb.processes(victim, "tar"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 1, err
    hosts = {h["host"]: h for h in json.loads(out)["hosts"]}
    stuck = hosts[victim.address]
    assert not stuck["ok"] and "took no more of the data for 3 s" in stuck["detail"], stuck
    assert hosts[tb.hosts[0].address]["ok"], hosts
    assert remote_state(tb, tb.hosts[0]) == local_state(tmp_path / "src" / "data")


def test_ctrl_c_mid_push_leaves_no_partial_file_under_its_final_name(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    tb = make_testbed(2, private_dirs={"/srv": "256m"})
    inv = tb.write_inventory(tmp_path / "hosts.yaml", extra={"workdir": DEST})
    data = make_tree(tmp_path / "src", small=5, big=64 << 20)
    # A slow link (20 Mbit/s from the primary: 27 s for the data), so that Ctrl-C lands
    # mid-stream also when this machine is slow to show both hosts receiving.
    bridge = f"{tb.name}-br"
    subprocess.run(["tc", "qdisc", "add", "dev", bridge, "root", "tbf", "rate", "20mbit",
                    "burst", "128kb", "latency", "50ms"], check=True)
    # (SIGINT as a terminal's: a suite started in the background has it ignored, and
    # Python then keeps it so)
    proc = subprocess.Popen([sys.executable, "-m", "sshcluster", "push", str(inv), str(data)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not all(_staging(tb, h) for h in tb.hosts):  # both are receiving
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the push never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["tc", "qdisc", "del", "dev", bridge, "root"], check=False)
    assert proc.returncode != 0, err
    for h in tb.hosts:
        _wait_no_staging(tb, h)  # each host removes what it had unpacked
        assert "data/big.bin" not in remote_state(tb, h)  # 27 s of data: far from done
    # a push afterwards completes
    result = sshcluster.push(load_inventory(inv), [data])
    assert result.ok, result.to_json()


@pytest.mark.parametrize("fanout", ["direct", "chain"])
def test_a_full_disk_names_the_host_and_the_path(
    make_testbed: MakeTestbed, tmp_path: Path, fanout: str
) -> None:
    # chain: the full host is the middle one, which must still pass the stream on
    tb = make_testbed(3, private_dirs={"/srv": "8m"}, mesh=fanout == "chain")
    full = tb.hosts[1]
    subprocess.run(tb.ssh_argv(full, "head -c 6000000 /dev/zero > /srv/filler"),
                   check=True, timeout=60)
    inv = load_inventory(tb.write_inventory(tmp_path / "hosts.yaml",
                                            extra={"workdir": DEST, "fanout": fanout}))
    data = make_tree(tmp_path / "src", small=3, big=3 << 20)
    result = sshcluster.push(inv, [data])
    bad = result.hosts[1]
    assert not bad.ok
    assert bad.detail == (f"no space left on device on {full.address} writing "
                          f"{DEST}/data/big.bin"), bad.detail
    assert bad.path == f"{DEST}/data/big.bin"
    for i in (0, 2):
        assert result.hosts[i].ok
        assert result.hosts[i].via == fanout  # (not a direct copy afterwards)
        assert remote_state(tb, tb.hosts[i]) == local_state(data)
    assert remote_state(tb, full) == {}  # nothing renamed, staging removed
    assert os.path.exists(tmp_path / "src" / "data" / "big.bin")


@pytest.mark.parametrize("fanout", ["direct", "chain"])
def test_a_file_that_arrives_changed_fails_its_hash_and_is_not_renamed(
    make_testbed: MakeTestbed, tmp_path: Path, fanout: str
) -> None:
    # An archive whose content no longer matches its sums (one byte of big.bin flipped
    # on the way), fed to remote.sh's receive as the primary would; in a chain the
    # second host gets the same bytes from the first.
    tb = make_testbed(2, private_dirs={"/srv": "16m"}, mesh=fanout == "chain")
    inv = load_inventory(tb.write_inventory(tmp_path / "hosts.yaml",
                                            extra={"workdir": DEST}))
    data = make_tree(tmp_path / "src", small=3, big=1 << 20)
    manifest = local_manifest([data])
    archive = io.BytesIO()
    tar_stream(manifest.files, [e for e in manifest.entries if e.kind == "d"], archive)
    raw = bytearray(archive.getvalue())
    at = raw.find((data / "big.bin").read_bytes()[:4096]) + 1000
    raw[at] ^= 0xFF
    head, rest = inv.hosts[0], inv.hosts[1:] if fanout == "chain" else []
    proc = Session(inv, head).popen(["receive", DEST, head.label, *chain_words(rest)])
    out, _ = proc.communicate(script() + bytes(raw), timeout=DEADLINE)
    found = verdicts(out)
    assert sorted(found) == sorted(h.label for h in [head, *rest])
    for ok, why in found.values():
        assert not ok and why.startswith("verification failed: ./data/big.bin: FAILED"), why
    for h in tb.hosts[:len(found)]:
        assert remote_state(tb, h) == {}  # nothing renamed, staging removed
