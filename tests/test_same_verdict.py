"""The check, the launch and a plain ``ssh`` reach the same verdict, on real test hosts.

Each client setup below is a user's own: files at the real paths (``/root/.ssh/config``,
``/root/.ssh/known_hosts``, ``/etc/ssh/ssh_known_hosts``, ...), which OpenSSH finds
through the passwd database, not ``$HOME``. So that this machine's own files stay as they
are, every command of a setup runs in a private mount namespace where ``/root/.ssh`` and
``/etc/ssh`` are the test's directories. In it, ``sshcluster check``, the rendered R file
(sourced by Rscript) and ``ssh -o BatchMode=yes HOST true`` must all accept the host, or
all refuse it. The inventories name no known_hosts and no key, as a user's would not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from sshcluster.quoting import r_string
from sshcluster.ssh.command import openssh_version
from sshcluster.testing import Testbed, TestHost
from sshcluster.testing.client import Client
from sshcluster.testing.fixtures import build_testbed

R_LAUNCH = """\
source({file})
cat(unique(unlist(parallel::clusterEvalQ(parallelCluster, Sys.info()[["nodename"]]))), "\\n")
sshcluster_stop()
"""


#: The fast launch's two routes, each with its own way of starting workers, as `render`
#: options: the reverse tunnel with forked workers (the default), and straight to the
#: primary with fresh ones. (The classic launch is left out: R's makeCluster() waits for
#: a refused worker until its timeout.)
LAUNCHES = {"tunnel-fork": (), "direct-fresh": ("--tunnel", "none", "--no-fork")}


@dataclass(frozen=True)
class Verdicts:
    check: bool
    #: each launch's verdict, by the names of LAUNCHES
    launch: dict[str, bool]
    ssh: bool
    said: str
    #: the steps the check failed, on any host
    check_failed: frozenset[str] = frozenset()
    #: each launch's stderr
    launch_said: dict[str, str] = field(default_factory=dict)


def verdicts(tb: Testbed, client: Client, host: str,
             env: dict[str, str] | None = None) -> Verdicts:
    """The check's, each launch's and plain ssh's verdict on ``host`` (as the inventory
    names it) with ``client``'s setup (and ``env``: an agent's socket, say)."""
    inventory = client.root / "hosts.yaml"
    tb.write_inventory(inventory, ncore=1, keys=False)
    doc = yaml.safe_load(inventory.read_text())
    doc["hosts"] = [{"host": host}]
    inventory.write_text(yaml.safe_dump(doc, sort_keys=False))
    sshcluster = [sys.executable, "-m", "sshcluster"]
    check = client.run(*sshcluster, "check", str(inventory), "--json", "--timeout", "20",
                       env=env)
    report = json.loads(check.stdout)
    launches = {}
    for name, options in LAUNCHES.items():
        cluster = client.root / f"{name}.R"
        rendered = client.run(*sshcluster, "render", str(inventory), "-o", str(cluster),
                              *options)
        assert rendered.returncode == 0, rendered.stderr
        launches[name] = client.run("Rscript", "-e", R_LAUNCH.format(file=r_string(str(cluster))),
                                    env=env)
    ssh = client.run("ssh", "-o", "BatchMode=yes", host, "true", timeout=60, env=env)
    failed = {h["host"]: {s: c["detail"] for s, c in h["checks"].items()
                          if c["status"] == "failed"} for h in report["hosts"]}
    said = "".join(f"launch {name}: {out.stdout}{out.stderr[-2000:]}\n"
                   for name, out in launches.items())
    return Verdicts(check=check.returncode == 0,
                    launch={name: out.returncode == 0 for name, out in launches.items()},
                    ssh=ssh.returncode == 0,
                    said=f"check: {failed}\n{said}ssh: {ssh.stderr}",
                    check_failed=frozenset(s for steps in failed.values() for s in steps),
                    launch_said={name: out.stderr for name, out in launches.items()})


@pytest.fixture(scope="module")
def tb(request: pytest.FixtureRequest, testbed_env: None) -> Iterator[Testbed]:
    """Three hosts of this module's own: node2 offers a host certificate, node3 is
    reachable from the primary only through node1."""
    yield build_testbed(request, 3)


@dataclass(frozen=True)
class Keys:
    host: dict[str, str]  # address -> "type base64"
    client: Path
    ca: Path


@pytest.fixture(scope="module")
def keys(tb: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("keys")
    ca = d / "ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ca", "-f", str(ca)],
                   check=True)
    tb.certify_host_key(tb.hosts[1], ca)
    tb.hide_ssh(tb.hosts[2])
    host = {}
    for line in tb.known_hosts.read_text().splitlines():
        name, kind, blob = line.split()[:3]
        host[name] = f"{kind} {blob}"
    return Keys(host=host, client=tb.identity_file, ca=ca)


def setup(name: str, tb: Testbed, keys: Keys, client: Client) -> tuple[str, bool]:
    """Write the client setup ``name``; return the inventory's host and whether ssh
    should accept it."""
    h1, h2, h3 = tb.hosts
    home, etc = client.home, client.etc
    shutil.copy(keys.client, home / "id_cluster")
    (home / "id_cluster").chmod(0o600)
    identity = "Host *\n  IdentityFile ~/.ssh/id_cluster\n  IdentitiesOnly yes\n"

    def key(h: TestHost) -> str:
        return keys.host[h.address]

    if name == "keys in a UserKnownHostsFile the config names through Include":
        (home / "conf.d").mkdir()
        (home / "conf.d" / "cluster.conf").write_text(
            f"Host {h1.address}\n  UserKnownHostsFile ~/.ssh/cluster_known_hosts\n")
        (home / "config").write_text(f"Include ~/.ssh/conf.d/*.conf\n{identity}")
        (home / "cluster_known_hosts").write_text(f"{h1.address} {key(h1)}\n")
        return h1.address, True
    if name == "keys only in the global file":
        (home / "config").write_text(identity)
        (etc / "ssh_known_hosts").write_text(f"{h1.address} {key(h1)}\n")
        return h1.address, True
    if name == "hashed keys":
        (home / "config").write_text(identity)
        (home / "known_hosts").write_text(f"{h1.address} {key(h1)}\n")
        subprocess.run(["ssh-keygen", "-H", "-f", str(home / "known_hosts")], check=True,
                       capture_output=True)
        return h1.address, True
    if name == "a host certificate signed by an @cert-authority":
        (home / "config").write_text(identity)
        ca = " ".join(Path(f"{keys.ca}.pub").read_text().split()[:2])
        (home / "known_hosts").write_text(f"@cert-authority 10.* {ca}\n")
        return h2.address, True
    if name == "a @revoked key":
        (home / "config").write_text(identity)
        (home / "known_hosts").write_text(f"{h1.address} {key(h1)}\n@revoked * {key(h1)}\n")
        return h1.address, False
    if name == "HostKeyAlias":
        (home / "config").write_text(
            f"Host {h1.address}\n  HostKeyAlias cluster-node\n{identity}")
        (home / "known_hosts").write_text(f"cluster-node {key(h1)}\n")
        return h1.address, True
    if name == "an alias with HostName, Port and User":
        (home / "config").write_text(
            f"Host db1\n  HostName {h1.address}\n  Port {h1.ssh_port}\n  User {tb.user}\n"
            f"{identity}")
        (home / "known_hosts").write_text(f"{h1.address} {key(h1)}\n")
        return "db1", True
    if name == "a host behind ProxyJump":
        (home / "config").write_text(
            f"Host {h3.address}\n  ProxyJump {tb.user}@{h1.address}\n{identity}")
        (home / "known_hosts").write_text(f"{h1.address} {key(h1)}\n{h3.address} {key(h3)}\n")
        return h3.address, True
    if name == "the same host without its ProxyJump":
        (home / "config").write_text(identity)
        (home / "known_hosts").write_text(f"{h3.address} {key(h3)}\n")
        return h3.address, False
    if name == "a wrong key in the config's file":
        (home / "config").write_text(
            f"Host *\n  UserKnownHostsFile ~/.ssh/cluster_known_hosts\n{identity}")
        (home / "cluster_known_hosts").write_text(f"{h1.address} {key(h2)}\n")
        (home / "known_hosts").write_text(f"{h1.address} {key(h1)}\n")  # ssh never reads it
        return h1.address, False
    if name == "CheckHostIP, and another key known for the address":
        with client.hosts.open("a") as f:
            f.write(f"{h1.address} node1.cluster.test\n")
        (home / "config").write_text(f"Host *\n  CheckHostIP yes\n{identity}")
        (home / "known_hosts").write_text(f"node1.cluster.test {key(h1)}\n"
                                          f"{h1.address} {key(h2)}\n")
        return "node1.cluster.test", False
    if name == "CheckHostIP, the address unknown":
        with client.hosts.open("a") as f:
            f.write(f"{h1.address} node1.cluster.test\n")
        (home / "config").write_text(f"Host *\n  CheckHostIP yes\n{identity}")
        (home / "known_hosts").write_text(f"node1.cluster.test {key(h1)}\n")
        return "node1.cluster.test", True
    if name == "PubkeyAcceptedAlgorithms without the key's type":
        (home / "config").write_text(f"Host *\n  PubkeyAcceptedAlgorithms ecdsa-sha2-nistp256\n"
                                     f"{identity}")
        (home / "known_hosts").write_text(f"{h1.address} {key(h1)}\n")
        return h1.address, False
    if name == "settings for interactive use: StdinNull, ForkAfterAuthentication":
        if openssh_version() < (8, 7):
            pytest.skip("OpenSSH 8.7 or later knows these settings")
        (home / "config").write_text(f"Host *\n  StdinNull yes\n  ForkAfterAuthentication yes\n"
                                     f"{identity}")
        (home / "known_hosts").write_text(f"{h1.address} {key(h1)}\n")
        return h1.address, True
    if name == "an identity given only in the config":
        (home / "config").write_text(f"Host {h1.address}\n  IdentityFile ~/.ssh/id_cluster\n")
        (home / "known_hosts").write_text(f"{h1.address} {key(h1)}\n")
        return h1.address, True
    raise AssertionError(name)


CASES = [
    "keys in a UserKnownHostsFile the config names through Include",
    "keys only in the global file",
    "hashed keys",
    "a host certificate signed by an @cert-authority",
    "a @revoked key",
    "HostKeyAlias",
    "an alias with HostName, Port and User",
    "a host behind ProxyJump",
    "the same host without its ProxyJump",
    "a wrong key in the config's file",
    "an identity given only in the config",
    "PubkeyAcceptedAlgorithms without the key's type",
    "CheckHostIP, and another key known for the address",
    "CheckHostIP, the address unknown",
    "settings for interactive use: StdinNull, ForkAfterAuthentication",
]


@pytest.mark.parametrize("name", CASES)
def test_check_launch_and_ssh_agree(name: str, tb: Testbed, keys: Keys,
                                    tmp_path: Path) -> None:
    client = Client(tmp_path)
    host, accepted = setup(name, tb, keys, client)
    v = verdicts(tb, client, host)
    assert v.ssh == accepted, v.said
    assert v.check == accepted, v.said
    assert v.launch == dict.fromkeys(LAUNCHES, accepted), v.said
    if not accepted:
        # Refused for the same reason: the host key, (no ProxyJump) for want of a route,
        # or no key ssh may offer; each launch names the host with ssh's own words.
        why = "Host key verification failed" if "hostkey" in v.check_failed else None
        assert v.check_failed & {"hostkey", "connect", "auth"}, v.said
        for name, err in v.launch_said.items():
            assert f"{host}: ssh exited with status 255" in err, f"{name}: {v.said}"
            if why:
                assert why in err and why in v.said.rsplit("ssh: ", 1)[1], f"{name}: {v.said}"


def test_the_inventory_known_hosts_adds_to_the_configs_file(tb: Testbed, keys: Keys,
                                                            tmp_path: Path) -> None:
    """One host's key in the file the user's config names, the other's in the inventory's
    known_hosts: the check and the launch accept both (the launch used to replace the
    config's file with ~/.ssh/known_hosts and the inventory's)."""
    h1, h2, _ = tb.hosts
    client = Client(tmp_path)
    shutil.copy(keys.client, client.home / "id_cluster")
    (client.home / "config").write_text(
        "Host *\n  UserKnownHostsFile ~/.ssh/cluster_known_hosts\n"
        "  IdentityFile ~/.ssh/id_cluster\n")
    (client.home / "cluster_known_hosts").write_text(f"{h1.address} {keys.host[h1.address]}\n")
    extra = tmp_path / "inventory_known_hosts"
    extra.write_text(f"{h2.address} {keys.host[h2.address]}\n")
    inventory = tmp_path / "hosts.yaml"
    tb.write_inventory(inventory, ncore=1, keys=False, extra={"known_hosts": str(extra)})
    doc: dict[str, Any] = yaml.safe_load(inventory.read_text())
    doc["hosts"] = [{"host": h1.address}, {"host": h2.address}]
    inventory.write_text(yaml.safe_dump(doc, sort_keys=False))
    sshcluster = [sys.executable, "-m", "sshcluster"]
    check = client.run(*sshcluster, "check", str(inventory), "--json", "--timeout", "20")
    assert check.returncode == 0, check.stdout
    cluster = tmp_path / "cluster.R"
    assert client.run(*sshcluster, "render", str(inventory), "-o", str(cluster)).returncode == 0
    launch = client.run("Rscript", "-e", R_LAUNCH.format(file=r_string(str(cluster))))
    assert launch.returncode == 0, launch.stderr
    assert sorted(launch.stdout.split()) == [h1.hostname, h2.hostname]


AGENT_CASES = ["IdentityFile names the .pub of a key only the agent holds",
               "a key with a passphrase, in the agent, and no .pub file"]


@pytest.mark.parametrize("name", AGENT_CASES)
def test_an_agent_s_key_chosen_by_identity_file_is_used_as_ssh_uses_it(
        name: str, tb: Testbed, keys: Keys, tmp_path: Path) -> None:
    """IdentitiesOnly with the key in an agent (a password manager's, say): ssh takes
    the public key from the IdentityFile itself when it is one, else from FILE.pub, else
    from the private key file's unencrypted head. The check offered nothing, and failed
    auth, where ssh and the launch logged in."""
    h1 = tb.hosts[0]
    client = Client(tmp_path)
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", str(keys.client)], env=env, check=True, capture_output=True)
        home = client.home
        if name.startswith("IdentityFile names the .pub"):
            shutil.copy(f"{keys.client}.pub", home / "id_cluster.pub")
            identity = "~/.ssh/id_cluster.pub"
        else:
            shutil.copy(keys.client, home / "id_cluster")
            (home / "id_cluster").chmod(0o600)
            subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", "a passphrase", "-f",
                            str(home / "id_cluster")], check=True, capture_output=True)
            identity = "~/.ssh/id_cluster"
        assert not (home / "id_cluster.pub").exists() or identity.endswith(".pub")
        (home / "config").write_text(f"Host *\n  IdentityFile {identity}\n"
                                     "  IdentitiesOnly yes\n")
        (home / "known_hosts").write_text(f"{h1.address} {keys.host[h1.address]}\n")
        v = verdicts(tb, client, h1.address, env=env)
        assert v.ssh, v.said
        assert v.check, v.said
        assert v.launch == dict.fromkeys(LAUNCHES, True), v.said
        # and without the agent, all three refuse it alike
        none = verdicts(tb, client, h1.address, env={k: x for k, x in env.items()
                                                       if k != "SSH_AUTH_SOCK"})
        assert not none.ssh and not none.check, none.said
        assert none.launch == dict.fromkeys(LAUNCHES, False), none.said
    finally:
        agent.kill()
        agent.wait()
