"""Small network facts shared by the check, the launch, EC2 and the test hosts.

* :func:`known_hosts_name`: how OpenSSH names a host in known_hosts (``[host]:port``
  when the port is not 22);
* :data:`R_PORT_RANGE`: the ports R's PSOCK clusters pick from, and so do we;
* :func:`ssh_banner`: whether an SSH server answers on an address and port;
* :func:`r_address` and :func:`is_ipv6`: what R's sockets can connect to (IPv4 only).
"""

from __future__ import annotations

import ipaddress
import socket

#: R's ``parallel`` picks the PSOCK port at random in this range (``R_PARALLEL_PORT``
#: unset); sshcluster does the same when the inventory names no ``port``.
R_PORT_RANGE = (11000, 11999)


def known_hosts_name(host: str, port: int | None = None) -> str:
    """``host``, or ``[host]:port`` for a port other than 22, as known_hosts writes it."""
    return host if port in (None, 22) else f"[{host}]:{port}"


def ssh_banner(host: str, port: int, timeout: float) -> bool:
    """True if ``host:port`` answers with an SSH identification line within ``timeout``.

    RFC 4253 lets a server send other lines before its ``SSH-`` line; at most 8 KiB are read.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            data = b""
            while not any(line.startswith(b"SSH-") for line in data.split(b"\n")[:-1]):
                chunk = s.recv(256)
                if not chunk or len(data) > 8192:
                    return False
                data += chunk
            return True
    except OSError:
        return False


__all__ = ["R_PORT_RANGE", "known_hosts_name", "ssh_banner"]


def r_address(address: str) -> str:
    """``address`` as R's sockets can connect to it: an IPv4-mapped IPv6 address
    (``::ffff:192.0.2.1``, as a dual-stack sshd reports an IPv4 client) as its IPv4
    address; anything else as it is."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped) if mapped is not None else address


def is_ipv6(address: str) -> bool:
    """Whether ``address`` is an IPv6 literal that R cannot connect to: R's
    ``socketConnection()`` and ``serverSocket()`` use IPv4 sockets (PF_INET and
    gethostbyname), so ``socketConnection("::1", 9)`` cannot be opened."""
    try:
        ip = ipaddress.ip_address(r_address(address).strip("[]"))
    except ValueError:
        return False
    return ip.version == 6
