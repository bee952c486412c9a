"""SSH keys and certificates read from their blobs, as OpenSSH's sshkey_read reads them.

known_hosts, RevokedHostKeys and the key exchange all carry keys as blobs (on a line:
``type base64``). :func:`read_key` reads a line's key, a certificate included: OpenSSH
compares a certificate in those files by the plain key inside it (sshkey_equal_public).
:func:`certificate_key` takes that plain key out of a certificate blob by hand, since
asyncssh refuses some certificates OpenSSH reads (unknown critical options, odd
characters in a principal).
"""

from __future__ import annotations

import base64
import binascii
import struct

import asyncssh

CERT_SUFFIX = "-cert-v01@openssh.com"

#: How many fields follow the nonce for each plain key type (ecdsa-*: curve and point).
_KEY_FIELDS = {"ssh-ed25519": 1, "ssh-rsa": 2, "sk-ssh-ed25519@openssh.com": 2,
               "sk-ecdsa-sha2-nistp256@openssh.com": 3}


def ssh_string(data: bytes, pos: int) -> tuple[bytes, int]:
    """The SSH string at ``pos`` of ``data``, and the position after it."""
    if pos + 4 > len(data):
        raise ValueError("truncated key blob")
    (n,) = struct.unpack(">I", data[pos:pos + 4])
    if pos + 4 + n > len(data):
        raise ValueError("truncated key blob")
    return data[pos + 4:pos + 4 + n], pos + 4 + n


def ssh_strings(data: bytes, count: int) -> list[bytes]:
    """The first ``count`` SSH strings of ``data``."""
    out, pos = [], 0
    for _ in range(count):
        item, pos = ssh_string(data, pos)
        out.append(item)
    return out


def all_ssh_strings(data: bytes) -> list[bytes]:
    """Every SSH string of ``data`` (a name list such as a certificate's principals)."""
    out, pos = [], 0
    while pos < len(data):
        item, pos = ssh_string(data, pos)
        out.append(item)
    return out


def certificate_key(data: bytes) -> tuple[asyncssh.SSHKey, int]:
    """The plain key inside the certificate blob ``data`` (its signature not checked),
    and the position of the certificate's own fields (its serial) in ``data``."""
    algorithm = ssh_strings(data, 1)[0].decode("ascii", "replace")
    if not algorithm.endswith(CERT_SUFFIX):
        raise ValueError(f"{algorithm} is not a certificate type")
    plain = algorithm[: -len(CERT_SUFFIX)]
    pos = 0
    items: list[bytes] = []
    for _ in range(2 + _KEY_FIELDS.get(plain, 2)):  # algorithm, nonce, the key's fields
        item, pos = ssh_string(data, pos)
        items.append(item)
    key_blob = b"".join(struct.pack(">I", len(i)) + i for i in [plain.encode(), *items[2:]])
    return asyncssh.import_public_key(f"{plain} {base64.b64encode(key_blob).decode()}"), pos


def read_key(kind: str, text: str, *, checked: bool = True) -> tuple[asyncssh.SSHKey, bool]:
    """The key of a line's ``kind`` and base64 ``text``, and whether it is a certificate
    (then the plain key inside it). ValueError when it cannot be read: not base64, not
    the type it says it is, or (``checked``) a certificate asyncssh does not accept,
    such as one whose signature is wrong (which OpenSSH refuses too)."""
    text = "".join(text.split())  # (OpenSSH's base64 decoder skips \r and the like)
    try:
        if not kind.endswith(CERT_SUFFIX):
            return asyncssh.import_public_key(f"{kind} {text}"), False
        if checked:
            return asyncssh.import_certificate(f"{kind} {text}").key, True
        data = base64.b64decode(text, validate=True)
        if ssh_strings(data, 1)[0] != kind.encode():
            raise ValueError(f"the key is not of type {kind}")
        return certificate_key(data)[0], True
    except (asyncssh.KeyImportError, binascii.Error, UnicodeError) as e:
        raise ValueError(str(e) or type(e).__name__) from None


__all__ = ["CERT_SUFFIX", "all_ssh_strings", "certificate_key", "read_key", "ssh_string",
           "ssh_strings"]
