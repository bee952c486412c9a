"""The check's shared_dir step, and push to a shared directory, on real SSH test hosts.

The test hosts share this machine's filesystem, so a directory on it is a "shared
mount" that every host sees; a host given a private tmpfs at that path lacks it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import sshcluster
from sshcluster.inventory import load_inventory
from sshcluster.testing.fixtures import MakeTestbed

from .helpers import local_state, make_tree


def test_shared_dir_seen_on_every_host_then_missing_on_one(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    shared = tmp_path / "nfs"
    shared.mkdir()
    tb = make_testbed(3, private_dirs={str(shared): "4m"}, private_on=[2])
    inv = load_inventory(tb.write_inventory(tmp_path / "hosts.yaml",
                                            extra={"shared_dir": str(shared)}))
    report = sshcluster.check(inv, timeout=60)
    steps = {h.label: h.checks["shared_dir"] for h in report.hosts}
    good = [tb.hosts[0].address, tb.hosts[2].address]
    for label in good:
        assert steps[label].status == "ok", steps[label]
        assert "sees the marker the primary wrote" in steps[label].detail
    bad = steps[tb.hosts[1].address]
    assert bad.status == "failed"
    assert bad.detail.startswith(f"{tb.hosts[1].address} lacks the shared mount {shared}: "
                                 "it sees no marker where the primary wrote one (there "), bad
    assert "mounted at" in bad.detail
    assert report[tb.hosts[1].address].failed == ["shared_dir"]
    assert list(shared.iterdir()) == []  # the marker is gone

    # a push into the shared directory sends one copy, to the first host
    data = make_tree(tmp_path / "src", small=10, big=1 << 20)
    result = sshcluster.push(inv, [data], str(shared / "push"))
    assert result.ok, result.to_json()
    assert [h.via for h in result.hosts] == ["direct", "shared_dir", "shared_dir"]
    size = sum(p.stat().st_size for p in data.rglob("*") if p.is_file() and not p.is_symlink())
    assert size <= result.bytes_out < 1.1 * size + (1 << 20)
    got = {p.relative_to(shared / "push").as_posix() for p in (shared / "push").rglob("*")
           if not p.is_dir()}
    assert got == set(local_state(data))


def test_the_check_tells_whether_each_host_reaches_the_next_of_a_chain(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    tb = make_testbed(3, mesh=True)
    try:
        # host 3 refuses host 2's ssh: 1 -> 2 works, 2 -> 3 does not
        subprocess.run(["ip", "netns", "exec", tb.hosts[2].netns, "iptables", "-w", "5",
                        "-I", "INPUT", "1", "-s", tb.hosts[1].address, "-p", "tcp",
                        "--dport", "22", "-j", "REJECT", "--reject-with", "tcp-reset"],
                       check=True)
        inv = load_inventory(tb.write_inventory(tmp_path / "hosts.yaml",
                                                extra={"fanout": "chain"}))
        report = sshcluster.check(inv, timeout=60)
    finally:
        subprocess.run(["ip", "netns", "exec", tb.hosts[2].netns, "iptables", "-w", "5",
                        "-F", "INPUT"], check=True)
    steps = [h.checks["fanout"] for h in report.hosts]
    assert steps[0].status == "ok" and tb.hosts[1].address in steps[0].detail
    assert steps[1].status == "warning", steps[1]
    assert steps[1].detail.startswith(f"{tb.hosts[1].address} cannot ssh to "
                                      f"{tb.hosts[2].address}, the next host of the push chain")
    assert steps[2] == sshcluster.StepResult("ok", "last in its chain (chain)", steps[2].seconds)
    assert report.ok  # a warning: push copies to that host directly
