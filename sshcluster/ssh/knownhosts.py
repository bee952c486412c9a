"""known_hosts as OpenSSH reads it: the files, the names in them, and the policy a host's
ssh settings make of them.

:func:`parse_known_hosts` reads a file as ssh does (markers ``@cert-authority`` and
``@revoked``, hashed names, comma-separated patterns with ``*``, ``?`` and ``!``,
certificates; lines ssh would skip are skipped), :func:`host_matches` matches a name as
ssh does, and :class:`KnownHostsFiles` reads each file once per check run. A :class:`TrustPolicy` is
what one host's effective settings say about host keys: the name its keys are filed
under (``HostKeyAlias``, else ``[host]:port`` for a port other than 22), every
``UserKnownHostsFile`` and ``GlobalKnownHostsFile``, and the inventory's ``known_hosts:``
that the launch adds with ``KnownHostsCommand``. :func:`order_host_key_algorithms` asks
the server for the key types known for the host first, as ssh does. The decision itself
is :func:`sshcluster.ssh.keycheck.verify`.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncssh

from sshcluster.errors import UnsafePathError
from sshcluster.files import read_regular
from sshcluster.net import known_hosts_name
from sshcluster.ssh.keyblob import CERT_SUFFIX, read_key

CA_MARKER = "@cert-authority"
REVOKED_MARKER = "@revoked"
#: OpenSSH's check_markers copies a marker into a buffer of this size.
_MARKER_SIZE = 32


def fingerprint(key: asyncssh.SSHKey) -> str:
    """``ssh-ed25519 SHA256:...``, as OpenSSH shows a key."""
    return f"{plain_type(key.get_algorithm())} {key.get_fingerprint()}"


def plain_type(algorithm: str) -> str:
    """The key type behind a host key algorithm: ``rsa-sha2-512`` and
    ``ssh-rsa-cert-v01@openssh.com`` are ``ssh-rsa`` keys."""
    if algorithm.endswith(CERT_SUFFIX):
        algorithm = algorithm[: -len(CERT_SUFFIX)]
    return "ssh-rsa" if algorithm.startswith("rsa-sha2-") else algorithm


# --------------------------------------------------------------------------- the files


@dataclass(frozen=True)
class Entry:
    """One valid known_hosts line: its marker (``""``, ``@cert-authority`` or
    ``@revoked``), its host field as written (patterns or a hashed name), its key, and
    where it is. ``certificate``: the line holds a certificate, and ``key`` is the plain
    key inside it (as a CA or a revoked key it counts as that key; as a host's key it
    matches no key a server offers, as in ssh, where it equals no plain key)."""

    marker: str
    hosts: str
    key: asyncssh.SSHKey
    file: str
    line: int
    certificate: bool = False

    @property
    def where(self) -> str:
        return f"{self.file} line {self.line}"


def parse_known_hosts(text: str, path: str) -> list[Entry]:
    """The valid entries of a known_hosts file; lines OpenSSH would skip are skipped."""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.lstrip(" \t")
        if not line or line.startswith("#"):
            continue
        split = _marker(line)
        if split is None:
            continue
        marker, rest = split
        words = re.split(r"[ \t]+", rest, maxsplit=3)
        if len(words) < 3 or not words[2] or words[1].startswith("#"):
            continue
        try:
            # (a certificate's signature is checked where it would make the check
            # trust more, as a CA; where it can only make it refuse, it is not)
            key, certificate = read_key(words[1], words[2], checked=marker == CA_MARKER)
        except ValueError:
            continue
        entries.append(Entry(marker, words[0], key, path, number, certificate))
    return entries


def _marker(line: str) -> tuple[str, str] | None:
    """The marker of a known_hosts line and the rest of it, as OpenSSH's check_markers
    finds them: a marker ends at the first space of the line (at a tab only when the
    line has no space), so ``@cert-authority<TAB>host key`` is a bad line, which ssh
    skips (None). Markers are case-sensitive, and a line has one at most."""
    marker = ""
    while line.startswith("@"):
        end = line.find(" ")
        if end < 0:
            end = line.find("\t")
        if marker or end <= 1 or end >= _MARKER_SIZE or \
                line[:end] not in (CA_MARKER, REVOKED_MARKER):
            return None
        marker, line = line[:end], line[end:].lstrip(" \t")
    return marker, line


def host_matches(name: str, hosts: str) -> bool:
    """Whether ``name`` is one of ``hosts``: a hashed name (``|1|salt|hash``) or a
    comma-separated pattern list with ``*``, ``?`` and ``!`` negation, case-insensitive."""
    if hosts.startswith("|1|"):
        parts = hosts.split("|")
        try:
            salt = base64.b64decode(parts[2], validate=True)
            want = base64.b64decode(parts[3], validate=True)
        except (IndexError, binascii.Error, ValueError):
            return False
        if len(salt) != 20:
            return False
        return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), want)
    name = name.lower()
    positive = False
    for pattern in hosts.lower().split(","):
        negated = pattern.startswith("!")
        if fnmatch.fnmatchcase(name, _glob(pattern[1:] if negated else pattern)):
            if negated:
                return False
            positive = True
    return positive


def _glob(pattern: str) -> str:
    # OpenSSH patterns know only * and ?; fnmatch's [...] must stay literal ([host]:port).
    return pattern.replace("[", "[[]")


def hashed_name(name: str, salt: bytes | None = None) -> str:
    """``name`` hashed as ``HashKnownHosts yes`` writes it."""
    salt = salt if salt is not None else os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


class KnownHostsFiles:
    """known_hosts files, each read once per check run (and again after a record)."""

    def __init__(self) -> None:
        self._cache: dict[str, list[Entry] | None] = {}

    def entries(self, path: str) -> list[Entry] | None:
        """The file's entries; None when it does not exist (or cannot be read)."""
        if path not in self._cache:
            try:
                # (a FIFO planted at the path is not read: it would wait, or choose keys)
                text = read_regular(path).decode("utf-8", errors="replace")
            except (OSError, UnsafePathError):
                self._cache[path] = None
            else:
                self._cache[path] = parse_known_hosts(text, path)
        return self._cache[path]

    def matching(self, paths: Sequence[str], name: str) -> list[Entry]:
        """The entries of ``paths`` whose host field matches ``name``, in file order."""
        return [e for p in paths for e in (self.entries(p) or []) if host_matches(name, e.hosts)]

    def forget(self, path: str) -> None:
        self._cache.pop(path, None)


# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class TrustPolicy:
    """What ssh's effective settings say about host keys for one host.

    ``hostname`` is the ``HostName`` ssh connects to, ``port`` its port, ``alias`` the
    ``HostKeyAlias``; ``user_files``, ``global_files`` and ``command_files`` (the
    inventory's file, added by ``KnownHostsCommand``) are read in that order.
    ``strict`` is ``StrictHostKeyChecking`` (yes, ask, accept-new, no); ``record_to``
    where a key accepted as new is recorded (None: nowhere); ``openssh`` the version of
    ssh whose rules apply (some changed in 9.6 and 10.3).
    """

    hostname: str
    port: int
    alias: str | None = None
    user_files: tuple[str, ...] = ()
    global_files: tuple[str, ...] = ()
    command_files: tuple[str, ...] = ()
    strict: str = "yes"
    check_host_ip: bool = False
    proxied: bool = False
    hash_known_hosts: bool = False
    ca_sign_algorithms: tuple[str, ...] = ()
    revoked_keys_files: tuple[str, ...] = ()
    no_host_auth_localhost: bool = False
    record_to: str | None = None
    openssh: tuple[int, int] = (99, 0)
    files: KnownHostsFiles = field(default_factory=KnownHostsFiles, compare=False)

    @property
    def consulted(self) -> tuple[str, ...]:
        """Every file looked in, in order."""
        return (*self.user_files, *self.global_files, *self.command_files)

    def name(self, port: int | None = None) -> str:
        """The name the host's keys are filed under (``port`` 0: without the port)."""
        if self.alias:
            return self.alias
        return known_hosts_name(self.hostname, self.port if port is None else port or 22)

    def entries(self, name: str, *, with_command: bool = True) -> list[Entry]:
        paths = self.user_files + self.global_files
        if with_command:
            paths += self.command_files
        return self.files.matching(paths, name)


def order_host_key_algorithms(policy: TrustPolicy, algorithms: Sequence[str]) -> list[str]:
    """``algorithms`` in the order OpenSSH's order_hostkeyalgs asks the server for them:
    as they are when a key of the first one's type is known, else the types known for
    the host first (certificate types first when it has a ``@cert-authority``). The keys
    KnownHostsCommand prints count under the name the files are read with; before
    OpenSSH 9.6 ssh looked them up here under the bare host name (bz3643)."""
    command_name = policy.name() if policy.openssh >= (9, 6) else policy.hostname
    entries = (policy.files.matching(policy.user_files + policy.global_files, policy.name())
               + policy.files.matching(policy.command_files, command_name))
    known = {plain_type(e.key.get_algorithm()) for e in entries
             if e.marker == "" and not e.certificate}
    if not algorithms or plain_type(algorithms[0]) in known:
        return list(algorithms)
    has_ca = any(e.marker == CA_MARKER for e in entries)
    first = [a for a in algorithms
             if (a.endswith(CERT_SUFFIX) and has_ca) or plain_type(a) in known]
    return first + [a for a in algorithms if a not in first]


__all__ = [
    "CA_MARKER",
    "CERT_SUFFIX",
    "REVOKED_MARKER",
    "Entry",
    "KnownHostsFiles",
    "TrustPolicy",
    "fingerprint",
    "hashed_name",
    "host_matches",
    "order_host_key_algorithms",
    "parse_known_hosts",
    "plain_type",
]
