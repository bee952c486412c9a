"""What a testbed is to be, checked before anything is made, and whether this machine
can make it.

A :class:`TestbedSpec` is the arguments of :class:`~sshcluster.testing.Testbed`,
validated once (a bad count, name, hostname prefix, port or subnet is a
:class:`~sshcluster.errors.TestbedError` before anything exists) and with a fresh name
picked when none was given; :meth:`TestbedSpec.hosts_on` lays its hosts out on a subnet.
:func:`require_root_and_netns` says whether this process can build any testbed at all.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sshcluster.errors import TestbedError
from sshcluster.testing.hosts import TestHost
from sshcluster.testing.netns import netns_names, run_command
from sshcluster.testing.registry import state_path
from sshcluster.testing.sshd import SSHD
from sshcluster.testing.subnets import parse_subnet

__all__ = [
    "MAX_HOSTS",
    "PRIVATE_DIR_SIZE",
    "TestbedSpec",
    "inventory_data",
    "new_name",
    "private_dirs_spec",
    "require_root_and_netns",
]

#: The size of each host's tmpfs at one of its ``private_dirs``, unless given.
PRIVATE_DIR_SIZE = "256m"

MAX_HOSTS = 253

_NAME_RE = re.compile(r"[a-z][a-z0-9]{0,9}")  # + "-v253" must fit IFNAMSIZ (15)
_HOSTNAME_PREFIX_RE = re.compile(r"[a-z]([a-z0-9-]{0,50}[a-z0-9])?")


def require_root_and_netns() -> None:
    """Raise :class:`TestbedError` unless this process can build a testbed.

    A testbed needs root, the ``ip``, ``unshare``, ``sshd`` and ``ssh-keygen`` programs,
    and a kernel (or container) that lets it create network, UTS and mount namespaces.
    """
    if os.geteuid() != 0:
        raise TestbedError(
            "the SSH testbed needs root (it creates network namespaces and a bridge)",
            hint="run as root, e.g. in a disposable VM or container with CAP_SYS_ADMIN",
        )
    for prog in ("ip", "unshare", "hostname", "mount", "ssh-keygen", "ssh", SSHD):
        if shutil.which(prog) is None:
            raise TestbedError(
                f"the SSH testbed needs {prog!r}, which is not installed",
                hint="on Debian: apt-get install iproute2 util-linux hostname openssh-server",
            )
    try:
        run_command(["ip", "netns", "list"], what="ip netns list", timeout=10)
        run_command(["unshare", "--net", "--uts", "--mount", "true"], what="unshare", timeout=10)
    except TestbedError as e:
        raise TestbedError(
            f"network namespaces are not available here: {e.message}",
            hint="a container needs --privileged (or CAP_SYS_ADMIN and CAP_NET_ADMIN)",
        ) from e


def new_name(prefix: str = "sc", digits: int = 4) -> str:
    """A testbed name (``prefix`` and ``digits`` hex digits) not used by any state file
    or namespace on this machine."""
    taken_ns = netns_names()
    for _ in range(100):
        name = prefix + secrets.token_hex(digits // 2)
        if not state_path(name).exists() and f"{name}-h1" not in taken_ns:
            return name
    raise TestbedError("could not find an unused testbed name", hint="pass name=")


@dataclass(frozen=True)
class TestbedSpec:
    """The arguments of a :class:`~sshcluster.testing.Testbed`, validated.

    Make one with :meth:`make`, which picks a fresh ``name`` when none is given and
    resolves ``workdir``.
    """

    __test__ = False  # not a pytest test class, despite the name

    n: int
    name: str
    hostname_prefix: str = "node"
    subnet: str | None = None
    primary_ssh_port: int | None = None
    workdir: Path | None = None
    timeout: float = 60.0
    #: (host index, port) for each host whose sshd listens elsewhere than on 22.
    host_ssh_ports: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        _check(self.n, self.name, self.hostname_prefix, self.primary_ssh_port, self.subnet)
        _check_ports(self.n, dict(self.host_ssh_ports))

    @classmethod
    def make(
        cls,
        n: int,
        *,
        workdir: Path | str | None = None,
        subnet: str | None = None,
        name: str | None = None,
        hostname_prefix: str = "node",
        primary_ssh_port: int | None = None,
        timeout: float = 60.0,
        host_ssh_ports: Mapping[int, int] | None = None,
    ) -> TestbedSpec:
        """The spec of ``Testbed(n, ...)``: the arguments checked first, then a fresh name
        picked (which looks at this machine) if none was given."""
        _check(n, name, hostname_prefix, primary_ssh_port, subnet)
        _check_ports(n, host_ssh_ports or {})
        return cls(
            n=n,
            name=name or new_name(),
            hostname_prefix=hostname_prefix,
            subnet=subnet,
            primary_ssh_port=primary_ssh_port,
            workdir=Path(workdir).resolve() if workdir is not None else None,
            timeout=timeout,
            host_ssh_ports=tuple(sorted((host_ssh_ports or {}).items())),
        )

    def hosts_on(self, net: ipaddress.IPv4Network) -> tuple[str, tuple[TestHost, ...]]:
        """(the primary's address, the hosts) on ``net``: ``.1`` and ``.2`` .. ``.n+1``."""
        addrs = list(net.hosts())
        if len(addrs) < self.n + 1:
            raise TestbedError(f"subnet {net} has no room for {self.n} hosts")
        ports = dict(self.host_ssh_ports)
        hosts = tuple(
            TestHost(
                index=i,
                hostname=f"{self.hostname_prefix}{i}",
                address=str(addrs[i]),
                netns=f"{self.name}-h{i}",
                ssh_port=ports.get(i, 22),
            )
            for i in range(1, self.n + 1)
        )
        return str(addrs[0]), hosts


def _check(
    n: int, name: str | None, hostname_prefix: str, primary_ssh_port: int | None,
    subnet: str | None,
) -> None:  # fmt: skip
    if not 1 <= n <= MAX_HOSTS:
        raise TestbedError(f"a testbed has 1 to {MAX_HOSTS} hosts, not {n}")
    if name is not None and not _NAME_RE.fullmatch(name):
        raise TestbedError(
            f"testbed name {name!r} must be 1-10 lowercase letters or digits, "
            "starting with a letter (it prefixes interface names, at most 15 chars)"
        )
    if not _HOSTNAME_PREFIX_RE.fullmatch(hostname_prefix):
        raise TestbedError(
            f"hostname prefix {hostname_prefix!r} must be lowercase letters, digits "
            "and '-', starting with a letter"
        )
    if primary_ssh_port is not None and not 1 <= primary_ssh_port <= 65535:
        raise TestbedError(f"primary_ssh_port {primary_ssh_port} is not a TCP port")
    if subnet is not None:
        net = parse_subnet(subnet)
        if net.num_addresses - 2 < n + 1:
            raise TestbedError(
                f"subnet {net} has room for {max(net.num_addresses - 3, 0)} hosts, not {n}"
            )


def _check_ports(n: int, ports: Mapping[int, int]) -> None:
    for index, port in ports.items():
        if not 1 <= index <= n:
            raise TestbedError(f"host_ssh_ports names host {index}, not one of 1..{n}")
        if not 1 <= port <= 65535:
            raise TestbedError(f"host_ssh_ports: {port} is not a TCP port")


def private_dirs_spec(private_dirs: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    """A testbed's ``private_dirs`` as path: tmpfs size, checked."""
    out = (dict(private_dirs) if isinstance(private_dirs, Mapping)
           else dict.fromkeys(private_dirs, PRIVATE_DIR_SIZE))
    for path, size in out.items():
        if not path.startswith("/") or not re.fullmatch(r"[0-9]+[kmg%]?", size):
            raise TestbedError(f"private_dirs: {path!r}: {size!r} must be an absolute "
                               "path and a tmpfs size such as 64m")
    return out


def inventory_data(
    hosts: Sequence[TestHost],
    *,
    primary_address: str,
    primary_port: int,
    user: str,
    ncore: int,
    port: int | None,
    extra: Mapping[str, Any] | None,
    keys: tuple[Path, Path] | None,
) -> dict[str, Any]:
    """The inventory of a testbed's hosts as plain data; ``keys`` is (known_hosts, client
    key), or None to leave them out."""
    primary: dict[str, Any] = {"host": primary_address, "user": user}
    if primary_port != 22:
        primary["ssh_port"] = primary_port
    entries: list[dict[str, Any]] = []
    for h in hosts:
        entry: dict[str, Any] = {"host": h.address}
        if h.ssh_port != 22:
            entry["ssh_port"] = h.ssh_port
        entries.append(entry)
    data: dict[str, Any] = {
        "primary": primary,
        "known_hosts": str(keys[0]) if keys else "",
        "defaults": {"user": user, "identity_file": str(keys[1]) if keys else "",
                     "ncore": ncore},
        "hosts": entries,
    }
    if not keys:
        del data["known_hosts"], data["defaults"]["identity_file"]
    if port is not None:
        data["port"] = port
    if extra:
        data.update(extra)
    return data
