"""SSH host keys of new cloud instances, read from the console output and written to
known_hosts (the check's own reading of known_hosts is :mod:`sshcluster.ssh.knownhosts`).

At first boot cloud-init prints the instance's public host keys to the serial console
between ``-----BEGIN SSH HOST KEY KEYS-----`` and ``-----END SSH HOST KEY KEYS-----``.
EC2 hands that text out through ``GetConsoleOutput`` over the authenticated AWS API, so
the keys are known before the first SSH connection: the channel that could be attacked
(the network path to port 22) is not the one the keys come from.

Console text is messy: lines may carry a prefix (``ec2: ``, a syslog header, a kernel
timestamp), end in CRLF, be interleaved with kernel messages, or be cut off because the
console is still being written. The parser keeps only complete blocks and only lines whose
base64 blob really encodes a key of the declared type.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from sshcluster.files import atomic_write
from sshcluster.net import known_hosts_name

BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
END = "-----END SSH HOST KEY KEYS-----"

#: Key types OpenSSH still accepts as host keys (ssh-dss is disabled since OpenSSH 7.0).
KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)

_KEY_LINE = re.compile(
    r"(?:^|\s)(?P<type>" + "|".join(re.escape(t) for t in KEY_TYPES) + r")"
    r"\s+(?P<blob>[A-Za-z0-9+/]+={0,2})(?=\s|$)"
)


@dataclass(frozen=True)
class HostKey:
    """One public host key: ``type`` such as ``ssh-ed25519`` and its base64 ``blob``."""

    type: str
    blob: str

    def known_hosts_line(self, host: str, port: int = 22) -> str:
        """The known_hosts line for this key at ``host`` (``[host]:port`` when not 22)."""
        return f"{known_hosts_name(host, port)} {self.type} {self.blob}"


def _blob_type(blob: str) -> str | None:
    """The key type written inside an SSH public key blob, or None if it is not one."""
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) < 4:
        return None
    (length,) = struct.unpack(">I", raw[:4])
    if length > 64 or len(raw) < 4 + length:
        return None
    try:
        return raw[4 : 4 + length].decode("ascii")
    except UnicodeDecodeError:
        return None


def parse_console_host_keys(text: str) -> tuple[HostKey, ...]:
    """Return the host keys of the last complete BEGIN/END block in console ``text``.

    An instance that rebooted prints the block again; the last complete one is the
    current one. A block still being written (no END yet) is ignored, so a caller polling
    the console sees ``()`` until the keys are really there. Lines that do not hold a
    well-formed key (kernel messages written in between, lines cut short) are skipped.
    """
    blocks: list[list[HostKey]] = []
    current: list[HostKey] | None = None
    for line in text.splitlines():
        if BEGIN in line:
            current = []  # a BEGIN without END before it: that earlier block was cut off
            continue
        if current is None:
            continue
        if END in line:
            blocks.append(current)
            current = None
            continue
        match = _KEY_LINE.search(line)
        if match and _blob_type(match["blob"]) == match["type"]:
            key = HostKey(match["type"], match["blob"])
            if key not in current:
                current.append(key)
    return tuple(blocks[-1]) if blocks else ()


def write_known_hosts(path: str | os.PathLike[str],
                      entries: Iterable[tuple[str, int, HostKey]]) -> None:
    """Write a known_hosts file with one line per ``(host, port, key)``, replacing it whole.

    Written to a temporary file and renamed, so ssh never reads half a file.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    text = "".join(key.known_hosts_line(host, port) + "\n" for host, port, key in entries)
    atomic_write(path, text)


def scan_host_key(host: str, port: int, timeout: float) -> HostKey | None:
    """The host key ``host:port`` shows on first contact, or None. This is trust on first
    use, so only for callers that asked for it in so many words (``accept_new``)."""
    import asyncssh

    async def scan() -> asyncssh.SSHKey | None:
        return await asyncssh.get_server_host_key(host, port)

    try:
        key = asyncio.run(asyncio.wait_for(scan(), timeout))
    except (OSError, asyncssh.Error, asyncio.TimeoutError):
        return None
    if key is None:
        return None
    kind, blob = key.export_public_key("openssh").decode().split()[:2]
    return HostKey(kind, blob)


# How the check reads known_hosts is sshcluster.ssh.knownhosts; fingerprint stays importable.
from sshcluster.ssh.knownhosts import fingerprint  # noqa: E402

__all__ = ["BEGIN", "END", "KEY_TYPES", "HostKey", "fingerprint",
           "parse_console_host_keys", "scan_host_key", "write_known_hosts"]
