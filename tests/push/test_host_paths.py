"""push and what a host holds at the destination, on real SSH test hosts: a symbolic
link where the push needs a directory (refused, never followed), names that start with
``-`` or have spaces at either end, and the staging directories a push killed outright
left behind (removed by a later push, but never a live one)."""

from __future__ import annotations

import io
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

import sshcluster
from sshcluster.inventory import load_inventory
from sshcluster.push.manifest import local_manifest
from sshcluster.push.stream import STALL_ENV, tar_stream
from sshcluster.push.transfer import Session, script, verdicts
from sshcluster.testing import Testbed
from sshcluster.testing.fixtures import MakeTestbed

from .helpers import DEST, local_state, make_tree, remote_state


def _inventory(tb: Testbed, tmp_path: Path) -> sshcluster.Inventory:
    return load_inventory(tb.write_inventory(tmp_path / "hosts.yaml", extra={"workdir": DEST}))


def _on_host(tb: Testbed, host: object, command: str) -> str:
    return subprocess.run(tb.ssh_argv(host, command),  # type: ignore[arg-type]
                          capture_output=True, text=True, timeout=60, check=True).stdout


def _listing(tb: Testbed, host: object, path: str) -> str:
    """Every entry under ``path`` with its mode and, for a file, its content."""
    return _on_host(tb, host, f"cd {path} && find . -printf '%m %y %p\\n' -name '*' "
                    "-type f -exec cat {} \\; | sort")


def _archive(sources: list[Path]) -> bytes:
    manifest = local_manifest(sources)
    out = io.BytesIO()
    tar_stream(manifest.files, [e for e in manifest.entries if e.kind == "d"], out)
    return out.getvalue()


def test_a_symbolic_link_where_a_directory_goes_is_refused_not_followed(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    tb = make_testbed(2, private_dirs={"/srv": "16m"})
    inv = _inventory(tb, tmp_path)
    data = make_tree(tmp_path / "src", small=5, big=4096)
    first, second = tb.hosts
    # Another directory, which a push to DEST must leave as it is, and a link to it:
    # where DEST/data goes on the first host, where DEST/data/d3 goes on the second.
    for h, link in ((first, f"{DEST}/data"), (second, f"{DEST}/data/d3")):
        _on_host(tb, h, f"mkdir -p /srv/else {link} && echo mine > /srv/else/big.bin && "
                 f"chmod 700 /srv/else && rmdir {link} && ln -s /srv/else {link}")
    before = {h.index: _listing(tb, h, "/srv/else") for h in tb.hosts}

    result = sshcluster.push(inv, [data])
    for h, link in zip(result.hosts, (f"{DEST}/data", f"{DEST}/data/d3"), strict=True):
        assert not h.ok
        assert h.detail == (f"{link} is a symbolic link (to /srv/else): refused, a push does "
                            "not follow one below DEST"), h.detail
    for h in tb.hosts:
        assert _listing(tb, h, "/srv/else") == before[h.index], h.hostname
        assert ".sshcluster-push" not in _on_host(tb, h, f"ls -A {DEST}")
    # (the refusal comes before any file is renamed)
    assert _on_host(tb, second, f"find {DEST} ! -type d ! -name d3") == ""

    # Once the links are gone: a link where a file goes is replaced by the file (a
    # rename does not follow it), and the file it led to is left as it was.
    for h in tb.hosts:
        _on_host(tb, h, f"rm {DEST}/data {DEST}/data/d3 2>/dev/null; mkdir -p {DEST}/data && "
                 f"ln -s /srv/else/big.bin {DEST}/data/big.bin")
    result = sshcluster.push(inv, [data])
    assert result.ok, result.to_json()
    for h in tb.hosts:
        assert remote_state(tb, h) == local_state(data)
        assert _listing(tb, h, "/srv/else") == before[h.index], h.hostname


def test_names_that_start_with_a_dash_are_sent_once(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    tb = make_testbed(1, private_dirs={"/srv": "16m"})
    inv = _inventory(tb, tmp_path)
    src = tmp_path / "src"
    make_tree(src, small=5, big=4096).rename(src / "-data")
    (src / "-model.rds").write_bytes(os.urandom(3000))
    sources = [src / "-data", src / "-model.rds"]
    result = sshcluster.push(inv, sources)
    assert result.ok, result.to_json()
    assert result.bytes_out > 3000
    again = sshcluster.push(inv, sources)
    assert again.ok and again.bytes_out == 0, again.to_json()
    assert again.hosts[0].detail == "unchanged"


def test_names_with_spaces_at_either_end_get_the_times_of_ours(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    # Same content, other mtime: the hash says unchanged, and the host's mtime is set
    # to ours, for every such file, whatever its name.
    tb = make_testbed(1, private_dirs={"/srv": "16m"})
    inv = _inventory(tb, tmp_path)
    data = tmp_path / "src" / "data"
    data.mkdir(parents=True)
    names = ["  both  ", " lead.csv", "mid  dle.csv", "trail.csv ", "z.csv"]
    for i, name in enumerate(names):
        (data / name).write_text(f"{i}\n")
    assert sshcluster.push(inv, [data]).ok
    later = int(time.time()) + 100
    for name in names:
        os.utime(data / name, (later, later))
    second = sshcluster.push(inv, [data])
    assert second.ok and second.bytes_out == 0, second.to_json()
    out = _on_host(tb, tb.hosts[0], f"cd {DEST} && find data -type f -printf '%T@ %p|\\n'")
    times = {line[line.index(" ") + 1:-1]: int(float(line.split(" ")[0]))
             for line in out.splitlines()}
    assert times == {f"data/{n}": later for n in names}


def test_staging_left_by_a_killed_push_goes_but_not_a_live_one(
    make_testbed: MakeTestbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tb = make_testbed(1, private_dirs={"/srv": "128m"})
    inv = _inventory(tb, tmp_path)
    host, label = tb.hosts[0], inv.hosts[0].label
    # What a push killed outright (SIGKILL, a crash of the host) leaves: its staging
    # directory, here with a read-only directory in it; and one of another user's.
    old, others = f"{DEST}/.sshcluster-push.Old123", f"{DEST}/.sshcluster-push.Other1"
    _on_host(tb, host, f"mkdir -p {old}/data/ro {others} && echo x > {old}/data/ro/f && "
             f"chmod 555 {old}/data/ro {old}/data && chown nobody {others}")
    small = make_tree(tmp_path / "a", small=3, big=4096)
    # not after seconds: a push now leaves it
    assert sshcluster.push(inv, [small]).ok
    assert old in _on_host(tb, host, f"ls -d {DEST}/.sshcluster-push.*")

    # A live push, its archive still arriving (a piece every 0.3 s): its staging
    # directory is older than the limit, but what is written into it is not.
    big = tmp_path / "b" / "big"
    big.mkdir(parents=True)
    (big / "x.bin").write_bytes(os.urandom(24 << 20))
    raw = script() + _archive([big])
    live = Session(inv, inv.hosts[0]).popen(["receive", DEST, label])
    assert live.stdin is not None
    done = threading.Event()

    def feed() -> None:
        assert live.stdin is not None
        at = 1 << 20
        live.stdin.write(raw[:at])
        while not done.is_set() and at < len(raw) - (1 << 20):
            live.stdin.write(raw[at:at + (128 << 10)])
            live.stdin.flush()
            at += 128 << 10
            time.sleep(0.3)
        live.stdin.write(raw[at:])  # (the rest: communicate() below ends it)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        time.sleep(6)  # the leftovers, and the live one's directory, are 5 s old and more
        # a push that counts 3 s as stale (the default is hours); it sweeps, then waits
        # for the live one's lock in DEST (1 s, with a stall limit of 2 s) and gives up
        monkeypatch.setenv(STALL_ENV, "2")
        sweeper = Session(inv, inv.hosts[0]).popen(["receive", DEST, label])
        out, err = sweeper.communicate(b"SSHCLUSTER_PUSH_STALE=3\n" + script() +
                                       _archive([tmp_path / "a" / "data"]), timeout=120)
        assert verdicts(out) == {label: (False, f"another push to {DEST} is running on "
                                                f"{label} (waited 1 s for it): try again "
                                                "once it has ended")}, err
        left = _on_host(tb, host, f"ls -A {DEST}").split()
    finally:
        done.set()
        feeder.join()
        out, err = live.communicate(timeout=120)
    assert verdicts(out) == {label: (True, "")}, err
    assert ".sshcluster-push.Old123" not in left
    assert ".sshcluster-push.Other1" in left  # not this user's
    # + the live one's staging directory, and its lock
    assert len([n for n in left if n.startswith(".sshcluster-push.")]) == 3, left
    assert ".sshcluster-push.lock" in left
    assert remote_state(tb, host)["big/x.bin"] == local_state(big)["big/x.bin"]
    assert _on_host(tb, host, f"ls -A {DEST}").split() == [
        ".sshcluster-push.Other1", "big", "data"]


def test_hosts_that_share_dest_both_place_every_directory(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    """Two hosts that see one DEST (a home shared over NFS, without ``shared_dir``) get
    the same archive at once and make its directories side by side: a directory the other
    made meanwhile is taken as it is, not a failure."""
    tb = make_testbed(2)  # (no private /srv: both hosts see this machine's files)
    dest = tmp_path / "shared-dest"
    inv = load_inventory(tb.write_inventory(tmp_path / "hosts.yaml",
                                            extra={"workdir": str(dest)}))
    data = tmp_path / "src" / "data"
    for i in range(150):
        (data / f"d{i:03}" / "sub").mkdir(parents=True)
        (data / f"d{i:03}" / "sub" / "f.txt").write_text(f"{i}\n")
    result = sshcluster.push(inv, [data], fanout="direct")
    assert result.ok, result.to_json()
    assert sorted(p.relative_to(dest) for p in dest.rglob("f.txt")) == sorted(
        p.relative_to(data.parent) for p in data.rglob("f.txt"))


def test_a_set_group_id_dest_is_unchanged_on_the_second_push(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    """In a set-group-ID DEST (a group's project directory) every directory made there
    has that bit too: it is no difference from ours, so a second push has nothing to do."""
    tb = make_testbed(1, private_dirs={"/srv": "16m"})
    inv = _inventory(tb, tmp_path)
    _on_host(tb, tb.hosts[0], f"mkdir -p {DEST} && chmod 2775 {DEST}")
    data = make_tree(tmp_path / "src", small=5, big=4096)
    first = sshcluster.push(inv, [data])
    assert first.ok, first.to_json()
    assert _on_host(tb, tb.hosts[0], f"stat -c %a {DEST}/data").strip() == "2755"
    again = sshcluster.push(inv, [data])
    assert again.ok and again.hosts[0].detail == "unchanged", again.to_json()
