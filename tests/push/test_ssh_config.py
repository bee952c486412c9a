"""push and the user's ssh config, on real SSH test hosts: a host's Port set only in the
ssh config (the primary's and the hosts', for a chain) is the port every hop uses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from sshcluster.inventory import load_inventory
from sshcluster.push.fanout_check import fanout_step
from sshcluster.testing import Testbed
from sshcluster.testing.client import Client
from sshcluster.testing.fixtures import MakeTestbed
from sshcluster.testing.hosts import host_dir

from .helpers import DEST, SSHCLUSTER, cli_env, local_state, make_tree, remote_state

PUSH = [*SSHCLUSTER, "push"]


def _port_only_in_config(tb: Testbed, tmp_path: Path) -> tuple[Path, Client]:
    """An inventory (fanout: chain) that names no port for the last host, whose sshd
    listens on 2222; the primary's ssh config and the host before it say Port 2222."""
    last = tb.hosts[-1]
    assert last.ssh_port == 2222
    inventory = tb.write_inventory(tmp_path / "hosts.yaml",
                                   extra={"workdir": DEST, "fanout": "chain"})
    doc: dict[str, Any] = yaml.safe_load(inventory.read_text())
    for h in doc["hosts"]:
        h.pop("ssh_port", None)
    inventory.write_text(yaml.safe_dump(doc, sort_keys=False))
    block = f"Host {last.address}\n  Port 2222\n"
    client = Client(tmp_path / "client")
    client.trust(tb)
    (client.home / "config").write_text(block + (client.home / "config").read_text())
    before = host_dir(tb.workdir, tb.hosts[-2]) / "ssh" / "config"  # its /root/.ssh
    before.write_text(before.read_text() + block)
    return inventory, client


def test_a_port_set_only_in_the_ssh_config_is_used_down_the_chain(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    tb = make_testbed(3, private_dirs={"/srv": "16m"}, mesh=True, host_ssh_ports={3: 2222})
    inventory, client = _port_only_in_config(tb, tmp_path)
    data = make_tree(tmp_path / "src", small=5, big=1 << 20)
    out = client.run(*PUSH, str(inventory), str(data), "--json", timeout=120,
                     env=cli_env())
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    # the last host got the stream from the one before it, not a direct copy afterwards
    assert [h["via"] for h in doc["hosts"]] == ["chain"] * 3, out.stdout
    for h in tb.hosts:
        assert remote_state(tb, h) == local_state(data)

    # the check's fanout step asks the host before it the same way
    inv = load_inventory(inventory)
    before = tb.hosts[-2]

    class Conn:
        async def run(self, command: str, timeout: float) -> SimpleNamespace:
            r = subprocess.run(tb.ssh_argv(before, command), capture_output=True,
                               text=True, timeout=timeout)
            return SimpleNamespace(exit_status=r.returncode, stderr=r.stderr)

    hc = SimpleNamespace(ctx=SimpleNamespace(inventory=inv, remaining=lambda: 30.0),
                         host=inv.hosts[-2], conn=Conn())
    step = asyncio.run(fanout_step(hc))  # type: ignore[arg-type]
    assert (step.status, step.detail) == (
        "ok", f"passes a push on to {inv.hosts[-1].label} (ssh works)"), step


def test_the_user_s_control_master_is_neither_used_nor_left_behind(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    tb = make_testbed(2, private_dirs={"/srv": "16m"})
    inventory = tb.write_inventory(tmp_path / "hosts.yaml", extra={"workdir": DEST})
    client = Client(tmp_path / "client")
    client.trust(tb)
    (client.home / "config").write_text(
        "Host *\n  ControlMaster auto\n  ControlPath ~/.ssh/cm-%C\n  ControlPersist 30\n"
        + (client.home / "config").read_text())
    data = make_tree(tmp_path / "src", small=5, big=1 << 20)
    try:
        for _ in range(2):  # sending, then asking only (the listing sessions)
            out = client.run(*PUSH, str(inventory), str(data), "--json", timeout=120,
                             env=cli_env())
            assert out.returncode == 0, out.stdout + out.stderr
            assert sorted(p.name for p in client.home.glob("cm-*")) == []
    finally:  # (a master the push left: gone now, not in 30 s)
        for h in tb.hosts:
            client.run("ssh", "-o", "ControlPath=~/.ssh/cm-%C", "-O", "exit", h.address,
                       timeout=30)
    for h in tb.hosts:
        assert remote_state(tb, h) == local_state(data)


def test_a_chain_hop_neither_uses_nor_leaves_the_host_s_control_master(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    """The first host of a chain, whose own ssh config says ControlMaster auto and
    ControlPersist, passes the push on with the primary's session options: no master
    of its ssh is left there afterwards."""
    tb = make_testbed(2, private_dirs={"/srv": "16m"}, mesh=True)
    inventory = tb.write_inventory(tmp_path / "hosts.yaml",
                                   extra={"workdir": DEST, "fanout": "chain"})
    first = tb.hosts[0]
    ssh_dir = host_dir(tb.workdir, first) / "ssh"  # its /root/.ssh
    config = ssh_dir / "config"
    config.write_text("Host *\n  ControlMaster auto\n  ControlPath ~/.ssh/cm-%C\n"
                      "  ControlPersist 60\n" + config.read_text())
    data = make_tree(tmp_path / "src", small=5, big=1 << 20)
    try:
        out = subprocess.run([*PUSH, str(inventory), str(data), "--json"],
                             capture_output=True, text=True, timeout=120, env=cli_env())
        assert out.returncode == 0, out.stdout + out.stderr
        doc = json.loads(out.stdout)
        assert [h["via"] for h in doc["hosts"]] == ["chain"] * 2, out.stdout
        assert sorted(p.name for p in ssh_dir.glob("cm-*")) == []
        assert tb.leftovers("ssh", wait=10) == {}  # (a master would stay 60 s)
    finally:  # (a master the push left: gone now, not in 60 s)
        for pid in tb.processes(first, "ssh"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    for h in tb.hosts:
        assert remote_state(tb, h) == local_state(data)


def test_a_config_that_would_take_ssh_s_stdin_or_fork_it_does_not_apply_to_push(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    """``StdinNull yes`` for one host (ssh's stdin /dev/null: push's script, sent there,
    never arrived: "the script for this host did not arrive whole") and
    ``ForkAfterAuthentication yes`` for another, as a user may set them for interactive
    use: push's sessions set both back, and every host gets its files."""
    tb = make_testbed(3, private_dirs={"/srv": "16m"})
    inventory = tb.write_inventory(tmp_path / "hosts.yaml", extra={"workdir": DEST})
    client = Client(tmp_path / "client")
    client.trust(tb)
    null, fork, _ = tb.hosts
    (client.home / "config").write_text(
        f"Host {null.address}\n  StdinNull yes\nHost {fork.address}\n"
        f"  ForkAfterAuthentication yes\n" + (client.home / "config").read_text())
    data = make_tree(tmp_path / "src", small=3, big=1 << 16)
    for _ in range(2):  # sending, then asking only (the listing sessions)
        out = client.run(*PUSH, str(inventory), str(data), "--json", timeout=120,
                         env=cli_env())
        assert out.returncode == 0, out.stdout + out.stderr
    for h in tb.hosts:
        assert remote_state(tb, h) == local_state(data), h.hostname
