"""known_hosts as the check reads it: which host keys it trusts, and its verdict on a key.

:class:`KnownHosts` loads the known_hosts files once per check run. Its
:meth:`~KnownHosts.verdict` decides about the key a server offers and returns a
:class:`HostKeyVerdict`: trusted, or why not and what to do; only with ``accept_new``
does it record a first-seen key, as OpenSSH's ``StrictHostKeyChecking=accept-new`` does.
A *changed* key is never accepted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from sshcluster.errors import SshclusterError
from sshcluster.files import append_line
from sshcluster.net import known_hosts_name
from sshcluster.report import StepResult


@dataclass(frozen=True)
class HostKeyVerdict:
    """The check's decision about one server's host key: ``trusted`` or not, what was
    found (``detail``) and what to do about it (``hint``)."""

    trusted: bool
    detail: str
    hint: str | None = None

    def result(self) -> StepResult:
        """The ``hostkey`` step's result."""
        return StepResult("ok" if self.trusted else "failed", self.detail, hint=self.hint)


def fingerprint(key: asyncssh.SSHKey) -> str:
    """``ssh-ed25519 SHA256:...``, as OpenSSH shows a key."""
    return f"{key.get_algorithm()} {key.get_fingerprint()}"


class KnownHosts:
    """The known_hosts files host keys are verified against, loaded once per run.

    ``files`` are read in order (missing ones are skipped); new keys accepted with
    ``accept_new`` are appended to ``record_to``.
    """

    def __init__(self, files: Sequence[str], *, record_to: str | None,
                 accept_new: bool) -> None:
        self.files = [f for f in files if os.path.isfile(f)]
        self.record_to = record_to
        self.accept_new = accept_new
        self.trusted = asyncssh.SSHKnownHosts()
        for f in self.files:
            try:
                self.trusted.load(Path(f).read_text(encoding="utf-8", errors="replace"))
            except (OSError, ValueError) as e:
                raise SshclusterError(f"cannot read known_hosts file {f}: {e}") from None

    def known_keys(self, host: str, addr: str, port: int | None) -> list[asyncssh.SSHKey]:
        """Keys that known_hosts lists for ``host`` (or its address) on ``port``."""
        port = None if port in (None, 22) else port
        return list(asyncssh.match_known_hosts(self.trusted, host, addr, port)[0])

    def files_naming(self, host: str, addr: str, port: int | None) -> list[str]:
        """The known_hosts files that have a key for the host (for the ``-R`` hint)."""
        port = None if port in (None, 22) else port
        out = []
        for f in self.files:
            try:
                one = asyncssh.read_known_hosts(f)
            except (OSError, ValueError):
                continue
            if asyncssh.match_known_hosts(one, host, addr, port)[0]:
                out.append(f)
        return out

    def verdict(self, host: str, addr: str, port: int,
                key: asyncssh.SSHKey) -> HostKeyVerdict:
        """Decide about ``key``, offered by ``host`` (at ``addr``, ``port``), which the
        loaded files do not list as trusted: changed, recorded (accept-new) or unknown."""
        shown = known_hosts_name(host, port)
        old = self.known_keys(host, addr, port)
        if old:
            files = self.files_naming(host, addr, port) or self.files
            olds = ", ".join(fingerprint(k) for k in old)
            return HostKeyVerdict(
                False,
                f"HOST KEY CHANGED for {shown}: the server offers {fingerprint(key)}, "
                f"known_hosts has {olds}. Someone may be intercepting the connection, "
                "or the host was reinstalled.",
                "only if you know why the key changed: "
                + "; ".join(f"ssh-keygen -R '{shown}' -f {f}" for f in files)
                + ", then check again with --accept-new",
            )
        if self.accept_new and self.record_to:
            where = self.record(host, port, key)
            return HostKeyVerdict(True, f"new key {fingerprint(key)} recorded in {where} "
                                        "(accept-new)")
        return HostKeyVerdict(
            False,
            f"{shown} is not in known_hosts (it offers {fingerprint(key)})",
            f"check that fingerprint with the host's owner, then run 'ssh {shown}' once, or "
            "pass --accept-new to record it",
        )

    def record(self, host: str, port: int | None, key: asyncssh.SSHKey) -> str:
        """Append ``key`` for ``host`` like OpenSSH's accept-new; return the file."""
        if not self.record_to:
            raise SshclusterError("no known_hosts file to record the new key in")
        name = known_hosts_name(host, port)
        line = key.export_public_key("openssh").decode("ascii").split()
        path = Path(self.record_to)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        append_line(path, f"{name} {line[0]} {line[1]}", mode=0o600)
        self.trusted.load(f"{name} {line[0]} {line[1]}\n")
        if path.name not in self.files and str(path) not in self.files:
            self.files.append(str(path))
        return str(path)


__all__ = ["HostKeyVerdict", "KnownHosts", "fingerprint"]
