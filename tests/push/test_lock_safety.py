"""The lock a host's receive takes in DEST (remote.sh), against what others may do there,
on real SSH test hosts: a symbolic link planted where the lock goes is refused, naming
it, and never written through (the file it leads to is left as it is, a missing one is
not made), while the other hosts go on; another user's lock is waited for, never
opened; a receive of the same push for the same host, stuck in its tar, is ended and its
lock taken; and the hashing (sums) ended by a signal leaves no pid file and no reporter
behind."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import sshcluster
from sshcluster.inventory import load_inventory
from sshcluster.push.manifest import local_manifest
from sshcluster.push.stream import STALL_ENV, tar_stream
from sshcluster.push.transfer import Session, remote_command, script, verdicts
from sshcluster.testing import Testbed
from sshcluster.testing.fixtures import MakeTestbed
from sshcluster.testing.hosts import TestHost, host_dir

from .helpers import DEST, local_state, make_tree, path_without, remote_state

pytestmark = pytest.mark.slow

LOCK = f"{DEST}/.sshcluster-push.lock"
LOCKDIR = f"{DEST}/.sshcluster-push.lockdir"
REFUSED = ": refused, a push takes its lock in DEST only with a file or directory it made " \
          "itself; remove it and push again"


def _on_host(tb: Testbed, host: TestHost, command: str) -> str:
    return subprocess.run(tb.ssh_argv(host, command), capture_output=True, text=True,
                          timeout=60, check=True).stdout


def _without_flock(tb: Testbed, host: TestHost, tmp_path: Path) -> None:
    """``host`` as one without flock(1): its lock is a directory made by mkdir."""
    bashrc = host_dir(tb.workdir, host) / "bashrc"
    path = path_without(tmp_path / "bin", ("flock",))
    bashrc.write_text(f"export PATH={path}\n" + bashrc.read_text())


def _until(what: Callable[[], bool], seconds: float = 60) -> bool:
    """Whether ``what`` came true within ``seconds`` (a hang guard, not a timing)."""
    deadline = time.monotonic() + seconds
    while not what():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0  # (gone meanwhile)


@pytest.mark.parametrize("kind", ["file", "dangling", "lockdir"])
def test_a_link_planted_for_the_lock_is_refused_and_not_followed(
    make_testbed: MakeTestbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    tb = make_testbed(2, private_dirs={"/srv": "16m"})
    first, second = tb.hosts
    inv = load_inventory(tb.write_inventory(tmp_path / "hosts.yaml", extra={"workdir": DEST}))
    data = make_tree(tmp_path / "src", small=5, big=4096)
    # What the link leads to, outside DEST (the hosts see this machine's files but /srv):
    # a file of someone's (.bashrc, /etc/nologin), one that is not there, a directory.
    victim = tmp_path / "victim"
    if kind == "file":
        victim.write_text("precious\n")
    elif kind == "lockdir":
        victim.mkdir()
        _without_flock(tb, first, tmp_path)
    before = victim.read_text() if kind == "file" else None
    link = LOCKDIR if kind == "lockdir" else LOCK
    _on_host(tb, first, f"mkdir -p {DEST} && ln -s {victim} {link}")
    # (were the link taken for another push's lock: seconds of waiting, not minutes)
    monkeypatch.setenv(STALL_ENV, "6")
    result = sshcluster.push(inv, [data])
    by_host = {h.host: h for h in result.hosts}
    assert not by_host[first.address].ok
    assert by_host[first.address].detail == (
        f"{link} is a symbolic link (to {victim}){REFUSED}"), result.to_json()
    assert by_host[second.address].ok, result.to_json()  # the other host goes on
    assert remote_state(tb, second) == local_state(data)
    if kind == "file":
        assert victim.read_text() == before
    elif kind == "dangling":
        assert not victim.exists() and not victim.is_symlink()
    else:
        assert list(victim.iterdir()) == []
    # the link is left as it was, and no staging directory either
    assert _on_host(tb, first, f"ls -A {DEST}").split() == [os.path.basename(link)]


@pytest.mark.parametrize("hidden", [False, True], ids=["flock", "mkdir"])
def test_another_users_lock_is_waited_for_not_taken(
    make_testbed: MakeTestbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    hidden: bool
) -> None:
    """A lock of another user's in DEST (nobody's here): the push, root's, neither opens
    nor takes it; it waits, then fails naming it."""
    tb = make_testbed(1, private_dirs={"/srv": "16m"})
    host = tb.hosts[0]
    inv = load_inventory(tb.write_inventory(tmp_path / "hosts.yaml", extra={"workdir": DEST}))
    if hidden:
        _without_flock(tb, host, tmp_path)
        lock, make = LOCKDIR, f"mkdir {LOCKDIR} && echo theirs 1 1 x > {LOCKDIR}/owner"
    else:
        lock, make = LOCK, f"echo theirs > {LOCK} && chmod 644 {LOCK}"
    _on_host(tb, host, f"mkdir -p {DEST} && {make} && chown -R nobody {lock}")
    data = make_tree(tmp_path / "src", small=5, big=4096)
    monkeypatch.setenv(STALL_ENV, "4")  # (the host waits 2 s for DEST)
    result = sshcluster.push(inv, [data])
    assert [(h.ok, h.detail) for h in result.hosts] == [(False, (
        f"another push to {DEST} is running on {host.address} (waited 2 s for it; its "
        f"lock, {lock}, is another user's): try again once it has ended"))], result.to_json()
    theirs = f"{LOCKDIR}/owner" if hidden else LOCK
    assert _on_host(tb, host, f"cat {theirs}").startswith("theirs")


def _archive(data: Path) -> bytes:
    manifest = local_manifest([data])
    out = io.BytesIO()
    tar_stream(manifest.files, [e for e in manifest.entries if e.kind == "d"], out)
    return out.getvalue()


def test_a_stuck_receive_of_the_same_push_for_the_host_is_ended_and_its_lock_taken(
    make_testbed: MakeTestbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chain's receive left behind (the host before it lost), its tar stopped as a
    hung disk would hold it: the direct copy of the same push to that host ends it
    (its tar too, stopped as it is), takes the lock and places the files."""
    tb = make_testbed(1, private_dirs={"/srv": "128m"})
    host = tb.hosts[0]
    inv = load_inventory(tb.write_inventory(tmp_path / "hosts.yaml", extra={"workdir": DEST}))
    label = inv.hosts[0].label
    old_data = tmp_path / "old" / "data"
    old_data.mkdir(parents=True)
    (old_data / "big.bin").write_bytes(os.urandom(16 << 20))
    new_data = make_tree(tmp_path / "new", small=5, big=4096)
    # (a stall limit of 30 s: the host waits 15 s for DEST, were its holder not ended)
    monkeypatch.setenv(STALL_ENV, "30")
    raw = script("feedbeef") + _archive(old_data)
    stuck = Session(inv, inv.hosts[0]).popen(["receive", DEST, label])
    assert stuck.stdin is not None
    stopped: list[int] = []
    try:
        stuck.stdin.write(raw[:len(raw) // 2])  # (the rest never comes)
        stuck.stdin.flush()
        assert _until(lambda: bool(tb.processes(host, "tar"))), "no receive"
        for pid in tb.processes(host, "tar"):  # (its own: this host's tar)
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        direct = Session(inv, inv.hosts[0]).popen(["receive", DEST, label])
        out, err = direct.communicate(script("feedbeef") + _archive(new_data), timeout=120)
        assert verdicts(out) == {label: (True, "")}, err
        # the stuck one is gone, its tar with it
        assert _until(lambda: all(_gone(p) for p in stopped), 30), stopped
        assert _until(lambda: stuck.poll() is not None, 30)
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if stuck.poll() is None:
            stuck.kill()
        stuck.communicate(timeout=60)
    assert remote_state(tb, host) == local_state(new_data)
    assert _on_host(tb, host, f"ls -A {DEST}").split() == ["data"]  # no lock, no stage


def test_hashing_ended_by_a_signal_leaves_no_pid_file_and_no_reporter(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    tb = make_testbed(1, private_dirs={"/srv": "16m"})
    host = tb.hosts[0]
    inv = load_inventory(tb.write_inventory(tmp_path / "hosts.yaml", extra={"workdir": DEST}))
    _on_host(tb, host, f"mkdir -p /srv/tmp {DEST} && echo x > {DEST}/f")
    session = Session(inv, inv.hosts[0])
    # (the pid file where the test sees it alone: TMPDIR, set ahead of the script)
    sums = subprocess.Popen([*session.argv, remote_command("sums", DEST, "1")],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    assert sums.stdin is not None
    try:
        # one name, and the list still open: the hashing waits for the rest
        sums.stdin.write(b"TMPDIR=/srv/tmp\n" + script() + b"f\n")
        sums.stdin.flush()

        def shells() -> list[int]:
            return tb.processes(host, "sh")

        assert _until(lambda: len(shells()) == 2 and bool(
            _on_host(tb, host, "ls -A /srv/tmp").split())), shells()
        # the mode's shell, and its reporter (a subshell: its child)
        ppid = {p: parent for p in shells() if (parent := _parent(p))}
        main = next(p for p in ppid if ppid[p] not in ppid)
        os.kill(main, signal.SIGTERM)
        assert _until(lambda: all(_gone(p) for p in ppid), 30), shells()
        assert _on_host(tb, host, "ls -A /srv/tmp") == ""
    finally:
        sums.kill()
        sums.wait()
