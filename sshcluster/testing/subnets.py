"""The subnets of the testbeds: choose a free one, and lock it while a testbed uses it.

A testbed's subnet must not overlap any address of this machine (that would route a test
host's traffic somewhere real) nor a route at least as specific as itself, and no two
testbeds may share one: a flock per subnet in :data:`LOCK_DIR`, held by the testbed's
process, sees to that, also across processes.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os

from sshcluster.errors import TestbedError
from sshcluster.testing.netns import run_command
from sshcluster.testing.registry import RUN_DIR

__all__ = ["DEFAULT_POOL", "LOCK_DIR", "SubnetLock", "lock_subnet", "parse_subnet"]

#: The subnet locks (a tmpfs: nothing outlives a reboot, nor do the bridges they guard).
LOCK_DIR = RUN_DIR / "subnets"

DEFAULT_POOL = ipaddress.IPv4Network("10.213.0.0/16")


def parse_subnet(subnet: str) -> ipaddress.IPv4Network:
    """The IPv4 network ``subnet`` names (host bits allowed: ``10.213.5.9/24`` is
    ``10.213.5.0/24``); raises :class:`TestbedError` if it names none."""
    try:
        return ipaddress.IPv4Network(subnet, strict=False)
    except ValueError as e:
        raise TestbedError(
            f"subnet {subnet!r} is not an IPv4 network such as 10.213.5.0/24: {e}"
        ) from e


def _used_networks() -> tuple[list[ipaddress.IPv4Network], list[ipaddress.IPv4Network]]:
    """(networks of this machine's IPv4 addresses, destinations of its IPv4 routes)."""
    addrs = json.loads(
        run_command(["ip", "-j", "-4", "addr", "show"], what="ip addr").stdout or "[]"
    )
    nets = [
        ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}").network
        for link in addrs
        for a in link.get("addr_info", [])
    ]
    routes = json.loads(
        run_command(["ip", "-j", "-4", "route", "show", "table", "all"], what="ip route").stdout
        or "[]"
    )
    dsts = []
    for r in routes:
        dst = r.get("dst", "default")
        if dst != "default":
            dsts.append(ipaddress.IPv4Network(dst, strict=False))
    return nets, dsts


def _conflict(net: ipaddress.IPv4Network) -> str | None:
    """Why ``net`` cannot be a testbed subnet on this machine, or None if it can.

    It may not overlap any address of this machine (that would route a test host's
    traffic somewhere real) nor any route at least as specific as itself; a wider route
    (say 10.0.0.0/8 via a VPN) is fine, as the bridge's /24 takes precedence.
    """
    nets, dsts = _used_networks()
    for other in nets:
        if net.overlaps(other):
            return f"overlaps {other}, which is on an interface of this machine"
    for other in dsts:
        if net.overlaps(other) and other.prefixlen >= net.prefixlen:
            return f"overlaps the route to {other}"
    return None


class SubnetLock:
    """An exclusive flock on one subnet, held as long as a testbed uses it.

    flock (not fcntl/lockf) because flock locks belong to the open file, so two testbeds
    in one process exclude each other too. A crashed owner's lock is released by the
    kernel; its bridge still holds the address, which :func:`_conflict` sees.
    """

    def __init__(self, net: ipaddress.IPv4Network) -> None:
        self.net = net
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        path = LOCK_DIR / f"{net.network_address}_{net.prefixlen}.lock"
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise

    def release(self) -> None:
        """Give the subnet up; safe to call more than once."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock_subnet(subnet: str | None) -> SubnetLock:
    """Lock the asked subnet, or the first free 10.213.X.0/24 if none was asked."""
    if subnet is not None:
        net = ipaddress.IPv4Network(subnet, strict=False)
        try:
            lock = SubnetLock(net)
        except BlockingIOError:
            raise TestbedError(
                f"subnet {net} is in use by another testbed", hint="pick another subnet="
            ) from None
        why = _conflict(net)
        if why:
            lock.release()
            raise TestbedError(f"subnet {net} cannot be used: it {why}")
        return lock
    for net in DEFAULT_POOL.subnets(new_prefix=24):
        try:
            lock = SubnetLock(net)
        except BlockingIOError:
            continue
        if _conflict(net) is None:
            return lock
        lock.release()
    raise TestbedError(
        f"no free /24 left in {DEFAULT_POOL} for a testbed",
        hint="remove testbeds you no longer need (sshcluster testbed down --name NAME), "
        "or pass subnet=",
    )
