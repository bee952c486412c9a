"""Small network facts shared by the check, the launch, EC2 and the test hosts.

* :func:`known_hosts_name`: how OpenSSH names a host in known_hosts (``[host]:port``
  when the port is not 22);
* :data:`R_PORT_RANGE`: the ports R's PSOCK clusters pick from, and so do we;
* :func:`ssh_banner`: whether an SSH server answers on an address and port.
"""

from __future__ import annotations

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
