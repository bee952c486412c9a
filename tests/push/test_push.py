"""push on real SSH test hosts, each with a disk of its own at the destination."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import sshcluster
from sshcluster.cli import cli
from sshcluster.inventory import load_inventory
from sshcluster.testing import Testbed
from sshcluster.testing.fixtures import MakeTestbed

from .helpers import DEST, local_state, make_tree, remote_state


def _inventory(tb: Testbed, tmp_path: Path, **extra: object) -> sshcluster.Inventory:
    return load_inventory(tb.write_inventory(tmp_path / "hosts.yaml",
                                             extra={"workdir": DEST, **extra}))


@pytest.mark.parametrize("fanout", ["direct", "chain", "tree"])
def test_every_host_gets_every_file_with_its_mode_then_only_changes(
    make_testbed: MakeTestbed, tmp_path: Path, fanout: str
) -> None:
    tb = make_testbed(3, private_dirs={"/srv": "64m"}, mesh=fanout != "direct")
    inv = _inventory(tb, tmp_path, fanout=fanout)
    data = make_tree(tmp_path / "src")
    want = local_state(data)

    result = sshcluster.push(inv, [data])
    assert result.ok, result.to_json()
    assert [h.host for h in result.hosts] == [h.address for h in tb.hosts]
    assert {h.via for h in result.hosts} == {fanout}
    assert result.skipped == (str(data / "outside"),)
    for h in tb.hosts:
        assert remote_state(tb, h) == want, h.hostname  # nothing else: no staging left
    size = sum(p.stat().st_size for p in data.rglob("*") if p.is_file() and not p.is_symlink())
    # direct: a copy per host; chain: the primary sends one, tree: two
    copies = {"direct": 3, "chain": 1, "tree": 2}[fanout]
    assert copies * size <= result.bytes_out < copies * (size * 1.1 + (2 << 20))

    again = sshcluster.push(inv, [data])
    assert again.ok and again.bytes_out == 0
    assert {h.detail for h in again.hosts} == {"unchanged"}

    # one file changed: only it is sent, to every host
    f = data / "d3" / "e0" / "f3.csv"
    f.write_text("x,y\n3,changed\n")
    os.utime(f, (time.time() + 5, time.time() + 5))
    third = sshcluster.push(inv, [data])
    assert third.ok and {h.detail for h in third.hosts} == {"1 file, 14 bytes sent"}
    assert third.bytes_out < copies * 200_000
    for h in tb.hosts:
        assert remote_state(tb, h) == local_state(data)

    # same content, new mtime: the hash says unchanged, and the mtime is set to ours
    os.utime(f, (time.time() + 50, time.time() + 50))
    fourth = sshcluster.push(inv, [data])
    assert fourth.ok and fourth.bytes_out == 0
    assert sshcluster.push(inv, [data]).bytes_out == 0


def test_chain_without_host_to_host_ssh_falls_back_to_direct_copies(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    tb = make_testbed(3, private_dirs={"/srv": "64m"})  # no mesh: hosts cannot ssh on
    inv = _inventory(tb, tmp_path, fanout="chain")
    data = make_tree(tmp_path / "src", small=5, big=1 << 20)
    result = sshcluster.push(inv, [data])
    assert result.ok, result.to_json()
    assert [h.via for h in result.hosts] == ["chain", "direct", "direct"]
    for h in tb.hosts:
        assert remote_state(tb, h) == local_state(data)


def test_cli_push_json_and_verdicts(make_testbed: MakeTestbed, tmp_path: Path) -> None:
    tb = make_testbed(2, private_dirs={"/srv": "64m"})
    inv_path = tb.write_inventory(tmp_path / "hosts.yaml")
    data = make_tree(tmp_path / "src", small=3, big=1000)
    runner = CliRunner()
    out = runner.invoke(cli, ["push", str(inv_path), str(data), "--to", "/srv/x", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["ok"] and doc["dest"] == "/srv/x"
    assert [h["host"] for h in doc["hosts"]] == [h.address for h in tb.hosts]
    assert remote_state(tb, tb.hosts[1], "/srv/x") == local_state(data)
    out = runner.invoke(cli, ["push", str(inv_path), str(data), "--to", "/srv/x"])
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ok", tb.hosts[0].address, "unchanged"]
    assert lines[-1].startswith("2/2 hosts have the files in /srv/x; 0 B sent")
    # no workdir, no --to: a usage error, before anything is sent
    out = runner.invoke(cli, ["push", str(inv_path), str(data)])
    assert out.exit_code == 2 and "no destination" in out.output
