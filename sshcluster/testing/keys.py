"""The keys of a testbed, and the ssh files that say who may log in where.

Four kinds of key, made with ``ssh-keygen`` in the testbed's workdir:

* the *client* key (``id_ed25519``): the primary user's, accepted by every host;
* the *worker* key (``hostkey/id_ed25519``): every host's root user's, accepted by the
  primary, so that a worker can ssh back;
* the primary sshd's host key, and one host key per host.

:func:`write_ssh_files` then writes each sshd's config and authorized_keys, a
``known_hosts`` with every host's real key (:data:`KNOWN_HOSTS`), an ``ssh_config`` with
one alias per hostname (:data:`SSH_CONFIG`), and each host's own ``/root/.ssh``: the
worker key, the primary's host key and an alias ``primary``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from sshcluster.net import known_hosts_name
from sshcluster.testing.hosts import TestHost, host_dir
from sshcluster.testing.sshd import (
    FRESH_BASHRC,
    keygen,
    make_host_key,
    ssh_config_text,
    write_file,
    write_sshd_config,
)

__all__ = ["CLIENT_KEY", "KNOWN_HOSTS", "SSH_CONFIG", "Keys", "make_keys", "write_ssh_files"]

#: In the workdir: the client key, the hosts' known_hosts, the ssh_config with aliases.
CLIENT_KEY = "id_ed25519"
KNOWN_HOSTS = "known_hosts"
SSH_CONFIG = "ssh_config"


@dataclass(frozen=True)
class Keys:
    """The public keys of a testbed (``ssh-ed25519 AAAA...``); ``hosts`` by host index."""

    client: str
    worker: str
    primary: str
    hosts: Mapping[int, str]


def make_keys(workdir: Path, name: str, hosts: Sequence[TestHost], pool: Executor) -> Keys:
    """Generate every key of the testbed ``name`` concurrently on ``pool``."""
    (workdir / "primary").mkdir(exist_ok=True)
    (workdir / "hostkey").mkdir(exist_ok=True)
    for h in hosts:
        (host_dir(workdir, h) / "ssh").mkdir(parents=True, exist_ok=True, mode=0o700)
    client = pool.submit(keygen, workdir / CLIENT_KEY, f"sshcluster-{name}-client")
    worker = pool.submit(keygen, workdir / "hostkey" / "id_ed25519", f"sshcluster-{name}-hosts")
    primary = pool.submit(make_host_key, workdir / "primary", f"{name}-primary")
    host_keys = {
        h.index: pool.submit(make_host_key, host_dir(workdir, h), f"{name}-{h.hostname}")
        for h in hosts
    }
    return Keys(
        client=client.result(),
        worker=worker.result(),
        primary=primary.result(),
        hosts={i: f.result() for i, f in host_keys.items()},
    )


def write_ssh_files(
    workdir: Path,
    keys: Keys,
    hosts: Sequence[TestHost],
    *,
    name: str,
    user: str,
    primary_address: str,
    primary_port: int,
    mesh: bool = False,
) -> None:
    """Write the sshd configs, authorized_keys, known_hosts and ssh configs; with
    ``mesh``, every host's root can also ssh to every other host (by address)."""
    primary_dir = workdir / "primary"
    write_file(primary_dir / "authorized_keys", keys.worker + "\n")
    write_sshd_config(
        primary_dir,
        listen=primary_address,
        port=primary_port,
        authorized_keys=str(primary_dir / "authorized_keys"),
        title=f"primary of {name}",
    )
    hosts_entries = "".join(
        f"{known_hosts_name(h.address, h.ssh_port)} {keys.hosts[h.index]}\n" for h in hosts
    )
    write_file(workdir / KNOWN_HOSTS, hosts_entries)
    worker_priv = (workdir / "hostkey" / "id_ed25519").read_text()
    primary_entry = f"{known_hosts_name(primary_address, primary_port)} {keys.primary}\n"
    ssh_client_config = (
        "# the primary of this testbed, as `ssh primary` or by its address\n"
        f"Host primary {primary_address}\n"
        f"  HostName {primary_address}\n  Port {primary_port}\n  User root\n"
    )
    for h in hosts:
        d = host_dir(workdir, h)
        write_sshd_config(
            d,
            listen=h.address,
            port=h.ssh_port,
            authorized_keys=".ssh/authorized_keys",  # the bind-mounted /root/.ssh
            title=f"{h.hostname} of {name}",
        )
        write_file(d / "bashrc", FRESH_BASHRC)
        s = d / "ssh"
        authorized = keys.client + "\n" + (keys.worker + "\n" if mesh else "")
        write_file(s / "authorized_keys", authorized, 0o600)
        write_file(s / "id_ed25519", worker_priv, 0o600)
        write_file(s / "id_ed25519.pub", keys.worker + "\n")
        write_file(s / "known_hosts", primary_entry + (hosts_entries if mesh else ""))
        write_file(s / "config", ssh_client_config)
    write_file(
        workdir / SSH_CONFIG,
        ssh_config_text(
            ((h.hostname, h.address, h.ssh_port) for h in hosts),
            user=user,
            identity_file=workdir / CLIENT_KEY,
            known_hosts=workdir / KNOWN_HOSTS,
        ),
    )
