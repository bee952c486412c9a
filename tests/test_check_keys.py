"""The check offers the keys the launch's ssh offers, in ssh's order, and no others.

On a real test host, ``sshcluster check`` and ``ssh`` with the launch's options
(:func:`~sshcluster.ssh.command.ssh_command`: ``-i KEY -o IdentitiesOnly=yes`` for the
inventory's ``identity_file:``) run side by side with one client setup (a
:class:`~sshcluster.testing.client.Client`: its ``~/.ssh`` is ``/root/.ssh`` for both,
in a mount namespace of its own) and the same ``$HOME``, a directory of the test's.
Both must log in, or both be refused.

The check used to hand asyncssh an empty list of keys when the inventory's key could not
be used, which asyncssh reads as "load ``$HOME/.ssh/id_*``": it logged in with a key
the launch's ssh never offers. And it offered the agent's keys, then the same keys again
from their files, where ssh offers each once (sshd's MaxAuthTries counts every offer).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sshcluster.inventory import load_inventory
from sshcluster.ssh.command import ssh_command
from sshcluster.testing import Testbed
from sshcluster.testing.client import Client
from sshcluster.testing.fixtures import build_testbed


@pytest.fixture(scope="module")
def tb(request: pytest.FixtureRequest, testbed_env: None) -> Iterator[Testbed]:
    yield build_testbed(request, 1)


@dataclass(frozen=True)
class Keys:
    good: Path  # authorized on the test host
    locked: Path  # the same key, with a passphrase
    wrong: tuple[Path, ...]  # keys the host does not know


def keygen(path: Path, passphrase: str = "") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", path.name,
                    "-f", str(path)], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def keys(tb: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("client-keys")
    locked = d / "locked"
    shutil.copy(tb.identity_file, locked)
    locked.chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", "pass", "-f", str(locked)],
                   check=True, capture_output=True)
    return Keys(good=tb.identity_file, locked=locked,
                wrong=tuple(keygen(d / f"wrong{i}") for i in range(6)))


def put(key: Path, where: Path) -> None:
    """``key`` (and its .pub) as the identity file ``where``."""
    where.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(key, where)
    where.chmod(0o600)
    if Path(f"{key}.pub").exists():
        shutil.copy(f"{key}.pub", f"{where}.pub")


class Agent:
    """An ssh-agent of the test's, on a socket in ``d``."""

    def __init__(self, d: Path) -> None:
        self.sock = d / "agent.sock"
        self.proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(self.sock)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if self.sock.exists():
                break
            time.sleep(0.05)

    def add(self, key: Path) -> None:
        subprocess.run(["ssh-add", str(key)], env={**os.environ, "SSH_AUTH_SOCK": str(self.sock)},
                       check=True, capture_output=True)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@dataclass(frozen=True)
class Verdicts:
    ssh: bool
    check: bool
    auth: dict[str, Any]  # the check's auth step
    said: str


def verdicts(tb: Testbed, client: Client, home: Path, identity: str | None,
             agent: Agent | None) -> Verdicts:
    """The check's and the launch's ssh's verdict on the host, the inventory naming
    ``identity`` (none: no identity_file:)."""
    inventory = client.root / "hosts.yaml"
    tb.write_inventory(inventory, ncore=1, keys=False)
    doc = yaml.safe_load(inventory.read_text())
    doc["hosts"] = [{"host": tb.hosts[0].address,
                     **({"identity_file": identity} if identity else {})}]
    inventory.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env["HOME"] = str(home)
    if agent is not None:
        env["SSH_AUTH_SOCK"] = str(agent.sock)
    inv = load_inventory(inventory)
    host = inv.hosts[0]
    ssh = client.run(*ssh_command(inv, host), "-l", tb.user, host.host, "true",
                     timeout=60, env=env)
    check = client.run(sys.executable, "-m", "sshcluster", "check", str(inventory), "--json",
                       "--timeout", "20", env=env)
    report = json.loads(check.stdout)
    auth = report["hosts"][0]["checks"]["auth"]
    return Verdicts(ssh=ssh.returncode == 0, check=check.returncode == 0, auth=auth,
                    said=f"ssh ({ssh.returncode}): {ssh.stderr}\ncheck: "
                         f"{json.dumps(report['hosts'][0]['checks'], indent=1)}")


#: name: whether ssh (and so the check) logs in
CASES = {
    "identity_file missing, a working key only in $HOME/.ssh": False,
    "identity_file missing, a working default key in ~/.ssh": True,
    "identity_file with a passphrase, no agent, a working default key": False,
    "identity_file with a passphrase, in the agent": True,
    "identity_file the working key, six other keys in the agent": True,
    "the agent holds the failing default keys, the working one is only a file": True,
    "the agent holds six other keys, then a default file's": True,
}


@pytest.mark.parametrize("name", list(CASES))
def test_check_offers_the_keys_ssh_offers(name: str, tb: Testbed, keys: Keys,
                                         tmp_path: Path) -> None:
    client = Client(tmp_path / "client")
    shutil.copy(tb.known_hosts, client.home / "known_hosts")
    home = tmp_path / "home"  # $HOME, which ssh never reads (it asks the passwd database)
    (home / ".ssh").mkdir(parents=True)
    dot_ssh = client.home  # ~/.ssh for ssh, and for the check (as ssh -G names it)
    agent = None
    identity: str | None = None
    if name.startswith("identity_file missing"):
        identity = str(tmp_path / "no-such-key")
        put(keys.good, home / ".ssh" / "id_ed25519")
        if "default key in ~/.ssh" in name:
            put(keys.good, dot_ssh / "id_ed25519")
    elif name.startswith("identity_file with a passphrase"):
        identity = str(keys.locked)
        put(keys.good, home / ".ssh" / "id_ed25519")
        put(keys.good, dot_ssh / "id_ed25519")
        if "in the agent" in name:  # (the same key, as ssh-add KEY would give it)
            agent = Agent(tmp_path)
            agent.add(keys.good)
    elif name.startswith("identity_file the working key"):
        identity = str(keys.good)
        agent = Agent(tmp_path)
        for key in keys.wrong:
            agent.add(key)
    elif name.startswith("the agent holds six other keys"):
        # ssh offers the agent's key that a default identity file names first, then the
        # agent's others: offering them in the agent's order would take sshd's
        # MaxAuthTries (6) before the working one.
        agent = Agent(tmp_path)
        for key in keys.wrong[:6]:
            agent.add(key)
        agent.add(keys.good)
        put(keys.good, dot_ssh / "id_ed25519")
    else:
        # ssh offers the agent's four keys (each one of its default files), then
        # id_ed25519: the fifth try, within sshd's MaxAuthTries (6). Offering the four
        # again from their files would be the ninth.
        agent = Agent(tmp_path)
        for key, file in zip(keys.wrong[:4], ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_xmss"),
                             strict=True):
            put(key, dot_ssh / file)
            agent.add(key)
        put(keys.good, dot_ssh / "id_ed25519")
    try:
        v = verdicts(tb, client, home, identity, agent)
    finally:
        if agent is not None:
            agent.stop()
    assert v.ssh == CASES[name], v.said  # the setup means what its name says
    assert v.check == v.ssh, v.said
    auth = v.auth
    if v.ssh:
        assert auth["status"] in ("ok", "warning"), v.said
        if "missing" in name:  # ssh warns, and falls back to its default keys
            assert auth["status"] == "warning" and identity in auth["detail"], v.said
            assert auth["field"] == "identity_file", v.said
        return
    assert auth["status"] == "failed", v.said
    assert "no key it can offer" in auth["detail"] and identity in auth["detail"], v.said
    assert auth["field"] == "identity_file" and auth["line"], v.said
    if "missing" in name:
        assert "does not exist" in auth["detail"], v.said
    else:
        assert "has a passphrase" in auth["detail"] and "no agent holds it" in auth["detail"]
        assert f"ssh-add {identity}" in auth["hint"], v.said
    assert f"line {auth['line']}" in auth["hint"], v.said
