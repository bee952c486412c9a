"""RevokedHostKeys files, read as OpenSSH reads them (sshkey_check_revoked).

A RevokedHostKeys file is a binary KRL or a list of public keys, one a line (``#``
comments and blank lines allowed). OpenSSH stops at the first line it cannot read, and
then refuses every host key ("Error checking host key ... in revoked keys file"); a
certificate on a line revokes the plain key inside it. :func:`revoked_keys` gives the
keys line by line, in the order ssh compares them, and raises
:class:`RevokedKeysError` where ssh would give up. The check cannot read a KRL: it
fails the host then (see docs/check.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import asyncssh

from sshcluster.errors import SshclusterError
from sshcluster.ssh.keyblob import read_key

KRL_MAGIC = b"SSHKRL\n\0"


class RevokedKeysError(SshclusterError):
    """A RevokedHostKeys file with which ssh refuses every host key (or the check cannot
    tell what ssh does): ``path`` is the file, ``line`` its line (None: the whole file)."""

    def __init__(self, message: str, *, path: str, line: int | None = None,
                 hint: str | None = None) -> None:
        self.path = path
        self.line = line
        super().__init__(message, hint=hint)


def revoked_keys(path: str) -> Iterator[tuple[int, asyncssh.SSHKey]]:
    """The keys of the RevokedHostKeys file ``path`` with their line numbers, in file
    order; raises :class:`RevokedKeysError` when it cannot be read, is a KRL, or at the
    first line that is not a key (a known_hosts line, say), as ssh stops there."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise RevokedKeysError(f"RevokedHostKeys {path} cannot be read: {e.strerror}",
                               path=path, hint="ssh refuses every host key then too; fix "
                                               "the file or the setting") from None
    if raw.startswith(KRL_MAGIC):
        raise RevokedKeysError(f"RevokedHostKeys {path} is a binary KRL, which the check "
                               "cannot read", path=path,
                               hint="see docs/check.md: the check fails rather than guess")
    for number, line in enumerate(raw.split(b"\n"), 1):
        text = line.decode("utf-8", "replace").lstrip(" \t")
        if not text or text[0] in "#\0":
            continue
        # sshkey_read: a key type, spaces or tabs, base64 (then, optionally, a comment)
        m = re.match(r"([^ \t]*)[ \t]+([^ \t]*)", text)
        try:
            if not m or not m.group(2):
                raise ValueError("no key type and key")
            key, _ = read_key(m.group(1), m.group(2))
        except ValueError as e:
            raise RevokedKeysError(
                f"RevokedHostKeys {path} line {number} is not a public key ({e}): ssh "
                "stops reading there and refuses every host key", path=path, line=number,
                hint="write one public key a line, as in a .pub file (type, key, "
                     "comment)") from None
        yield number, key


__all__ = ["KRL_MAGIC", "RevokedKeysError", "revoked_keys"]
