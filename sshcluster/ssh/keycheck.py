"""The host key check, as OpenSSH makes it: trust exactly what ``ssh`` trusts.

:func:`verify` is a port of OpenSSH 9's ``check_host_key`` and ``verify_host_key``
(``sshconnect.c``) over a host's :class:`~sshcluster.ssh.knownhosts.TrustPolicy`: the key a
server offers is looked up under ssh's name for the host; any matching key that is not
the server's counts as a *changed* key, whatever its type; a host certificate is trusted
through a matching ``@cert-authority`` when it is valid now, for that name, signed with
an allowed algorithm and without critical options, and otherwise its plain key is
checked instead; ``@revoked`` lines and ``RevokedHostKeys`` refuse a key outright; a key
not found under ``[host]:port`` may be found under the plain host name; ``CheckHostIP``
refuses a key whose address is known with another. ``--accept-new`` records a first-seen
key as ``StrictHostKeyChecking=accept-new`` does (hashed with ``HashKnownHosts yes``), in
the inventory's file when it names one; a changed or revoked key is never accepted.

Every :class:`HostKeyVerdict` names the files looked in, and the file and line found.
"""

from __future__ import annotations

import base64
import fnmatch
import ipaddress
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

import asyncssh

from sshcluster.files import append_line
from sshcluster.net import known_hosts_name
from sshcluster.ssh.keyblob import (
    CERT_SUFFIX,
    all_ssh_strings,
    certificate_key,
    ssh_string,
    ssh_strings,
)
from sshcluster.ssh.knownhosts import (
    CA_MARKER,
    REVOKED_MARKER,
    Entry,
    TrustPolicy,
    fingerprint,
    hashed_name,
)
from sshcluster.ssh.revoked import RevokedKeysError, revoked_keys

_HOST_CERT = 2  # SSH2_CERT_TYPE_HOST


@dataclass(frozen=True)
class HostKeyVerdict:
    """The check's decision about one server's host key: ``trusted`` or not, what was
    found (``detail``) and what to do about it (``hint``); ``recorded`` is the file a key
    accepted as new (accept-new) was written to."""

    trusted: bool
    detail: str
    hint: str | None = None
    recorded: str | None = None


class Status(Enum):
    OK = "ok"
    NEW = "new"
    CHANGED = "changed"
    REVOKED = "revoked"


@dataclass(frozen=True)
class _Lookup:
    status: Status
    found: Entry | None = None


def _lookup(entries: Sequence[Entry], key: asyncssh.SSHKey,
            ca: asyncssh.SSHKey | None) -> _Lookup:
    """OpenSSH's check_key_in_hostkeys: for a certificate (signed by ``ca``) its CA, for
    a plain key the key itself (any other key there, or a certificate, means CHANGED);
    then @revoked (a certificate there revokes the plain key inside it)."""
    result = _Lookup(Status.NEW)
    for e in entries:
        if e.marker != (CA_MARKER if ca else ""):
            continue
        if ca is not None:
            if e.key.public_data == ca.public_data:
                result = _Lookup(Status.OK, e)
                break
        elif e.key.public_data == key.public_data and not e.certificate:
            result = _Lookup(Status.OK, e)
            break
        else:
            result = _Lookup(Status.CHANGED, e)
    revoked = {key.public_data} | ({ca.public_data} if ca else set())
    for e in entries:
        if e.marker == REVOKED_MARKER and e.key.public_data in revoked:
            return _Lookup(Status.REVOKED, e)
    return result


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class HostCertificate:
    """What OpenSSH checks in a host certificate (read from the wire blob)."""

    cert: asyncssh.SSHCertificate | None  # None: asyncssh could not read it (then invalid)
    key: asyncssh.SSHKey
    ca: asyncssh.SSHKey
    cert_type: int
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int
    critical: bytes
    signature_algorithm: str


def decode_host_key(data: bytes) -> tuple[asyncssh.SSHKey, HostCertificate | None]:
    """The plain key a server offered, and its certificate if it offered one."""
    algorithm = ssh_strings(data, 1)[0].decode("ascii", "replace")
    if not algorithm.endswith(CERT_SUFFIX):
        return asyncssh.import_public_key(f"{algorithm} {base64.b64encode(data).decode()}"), None
    cert = _read_certificate(data, algorithm)
    return cert.key, cert


def _read_certificate(data: bytes, algorithm: str) -> HostCertificate:
    key, pos = certificate_key(data)
    pos += 8  # serial
    (cert_type,) = struct.unpack(">I", data[pos:pos + 4])
    pos += 4
    _, pos = ssh_string(data, pos)  # key id
    principals_blob, pos = ssh_string(data, pos)
    valid_after, valid_before = struct.unpack(">QQ", data[pos:pos + 16])
    pos += 16
    critical, pos = ssh_string(data, pos)
    for _ in range(2):  # extensions, reserved
        _, pos = ssh_string(data, pos)
    ca_blob, pos = ssh_string(data, pos)
    signature, pos = ssh_string(data, pos)
    ca_type = ssh_strings(ca_blob, 1)[0].decode("ascii", "replace")
    ca = asyncssh.import_public_key(f"{ca_type} {base64.b64encode(ca_blob).decode()}")
    try:
        cert: asyncssh.SSHCertificate | None = asyncssh.import_certificate(
            f"{algorithm} {base64.b64encode(data).decode()}")
    except (asyncssh.KeyImportError, ValueError):
        cert = None  # a bad signature, or critical options asyncssh refuses: not valid
    return HostCertificate(
        cert=cert, key=key, ca=ca, cert_type=cert_type,
        principals=tuple(p.decode("utf-8", "replace") for p in all_ssh_strings(principals_blob)),
        valid_after=valid_after, valid_before=valid_before, critical=critical,
        signature_algorithm=ssh_strings(signature, 1)[0].decode("ascii", "replace"))


def _certificate_problem(cert: HostCertificate, name: str,
                         policy: TrustPolicy) -> str | None:
    """Why OpenSSH's sshkey_cert_check_host refuses ``cert`` for ``name`` (None: it
    does not). Before 10.3 a certificate without principals is valid for any host, and a
    principal must equal the name."""
    now = int(time.time())
    if cert.cert is None:
        return "the certificate cannot be read (a bad signature or critical options)"
    if cert.cert_type != _HOST_CERT:
        return "not a host certificate"
    if now < cert.valid_after:
        return "the certificate is not yet valid"
    if now >= cert.valid_before:
        return "the certificate has expired"
    if policy.openssh >= (10, 3):  # principals required, and matched as * ? patterns
        if not cert.principals:
            return "the certificate lists no principals"
        if not any(fnmatch.fnmatchcase(name, p.replace("[", "[[]")) for p in cert.principals):
            return (f"{name} matches no principal of the certificate "
                    f"({', '.join(cert.principals)})")
    elif cert.principals and name not in cert.principals:
        return f"{name} is not a principal of the certificate ({', '.join(cert.principals)})"
    if cert.critical:
        return "the certificate has critical options"
    if policy.ca_sign_algorithms and cert.signature_algorithm not in policy.ca_sign_algorithms:
        return (f"the CA signed it with {cert.signature_algorithm}, which "
                "CASignatureAlgorithms does not allow")
    return None


_READ_WRITE, _READ_ONLY, _QUIET = 0, 1, 2


@dataclass(frozen=True)
class _Outcome:
    """How one pass of the check ended: trusted or not, the lookup under ``name``, and
    what explains it."""

    trusted: bool
    name: str
    status: Status
    found: Entry | None = None
    ip_name: str | None = None
    ip_found: Entry | None = None
    cert_problem: str | None = None
    recorded: str | None = None
    why: str = ""


class _Checker:
    """One host key decision: OpenSSH's check_host_key, pass by pass."""

    def __init__(self, policy: TrustPolicy, address: str | None, strict: str) -> None:
        self.policy = policy
        self.address = address
        self.strict = strict
        self.local = _is_loopback(address)

    def check(self, key: asyncssh.SSHKey, cert: HostCertificate | None, *, port: int,
              readonly: int, clobber: bool) -> _Outcome:
        p = self.policy
        if p.no_host_auth_localhost and self.local and not p.alias:
            return _Outcome(True, p.name(), Status.OK,
                            why="loopback, and NoHostAuthenticationForLocalhost is on")
        if any(c in p.hostname for c in "@?*#[]|'\"\\") or p.record_to is None:
            readonly = max(readonly, _READ_ONLY)  # a name ssh would never write down
        use_port = 0 if clobber else port
        name = p.name(use_port)
        ip = (None if p.proxied or self.address is None
              else known_hosts_name(self.address, use_port or 22))
        check_ip = p.check_host_ip and not (self.local or ip is None or p.hostname == ip)
        entries = p.entries(name, with_command=not clobber)
        ip_entries = (p.entries(ip, with_command=not clobber)
                      if check_ip and cert is None and ip else None)
        cert_problem = None
        while True:
            found = _lookup(entries, key, cert.ca if cert else None)
            ip_found = (_lookup(ip_entries, key, None) if ip_entries is not None and not cert
                        else found)
            outcome = self._decide(found, key, cert, name, ip, ip_found, port=port,
                                   readonly=readonly, clobber=clobber)
            if outcome is not None and outcome.trusted:
                return self._ip_check(outcome, found, ip_found, check_ip and cert is None)
            if cert is not None and found.status is not Status.REVOKED:
                # No CA for it, or a certificate OpenSSH refuses: the plain key inside.
                if outcome is not None and outcome.cert_problem:
                    cert_problem = outcome.cert_problem
                elif found.status is Status.NEW:
                    cert_problem = f"no {CA_MARKER} line for {name} lists its CA"
                cert = None
                continue
            assert outcome is not None
            return replace(outcome, cert_problem=cert_problem)

    def _decide(self, found: _Lookup, key: asyncssh.SSHKey, cert: HostCertificate | None,
                name: str, ip: str | None, ip_found: _Lookup, *, port: int, readonly: int,
                clobber: bool) -> _Outcome | None:
        p, strict = self.policy, self.strict
        status = found.status
        base = _Outcome(False, name, status, found.found, ip, ip_found.found)
        if status is Status.OK:
            if cert is not None:
                problem = _certificate_problem(cert, p.alias or p.hostname, p)
                if problem:
                    return replace(base, cert_problem=problem)
            return replace(base, trusted=True)
        if status is Status.NEW:
            if p.alias is None and port not in (0, 22) and not clobber:
                portless = self.check(key, cert, port=0, readonly=_QUIET, clobber=True)
                if portless.trusted:
                    return portless
            if readonly or cert is not None:
                return replace(base, why="not known")
            if strict in ("yes", "ask"):
                return replace(base, why="not known")
            recorded = self._record(name, ip if p.check_host_ip and ip_found.status
                                    is Status.NEW else None, key)
            return replace(base, trusted=True, recorded=recorded)
        if status is Status.REVOKED:
            return replace(base, trusted=strict == "no")
        if cert is not None or readonly == _QUIET:
            return base
        return replace(base, trusted=strict == "no", why="changed")

    def _ip_check(self, outcome: _Outcome, found: _Lookup, ip_found: _Lookup,
                  check_ip: bool) -> _Outcome:
        if (check_ip and found.status is not Status.CHANGED
                and ip_found.status is Status.CHANGED and self.strict != "no"):
            return replace(outcome, trusted=False, status=Status.CHANGED,
                           ip_found=ip_found.found, why="ip changed")
        return outcome

    def _record(self, name: str, ip: str | None, key: asyncssh.SSHKey) -> str | None:
        p = self.policy
        if p.record_to is None:
            return None
        kind, blob = key.export_public_key("openssh").decode("ascii").split()[:2]
        names = [name] + ([ip] if ip else [])
        path = Path(p.record_to)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if p.hash_known_hosts:  # one line per name, in one rewrite of the file
            line = "\n".join(f"{hashed_name(n)} {kind} {blob}" for n in names)
        else:
            line = f"{','.join(names)} {kind} {blob}"
        append_line(path, line, mode=0o600)
        p.files.forget(str(path))
        return str(path)


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def verify(policy: TrustPolicy, data: bytes, address: str | None, *,
           accept_new: bool = False) -> tuple[HostKeyVerdict, asyncssh.SSHKey | None]:
    """Decide, as ssh with ``policy`` would, about the host key blob ``data`` that a
    server at ``address`` (None: through a proxy) offered; return the verdict and the
    plain key to verify the key exchange with (None when not trusted). ``accept_new``
    records a key nobody knows yet, like ``StrictHostKeyChecking=accept-new``."""
    try:
        key, cert = decode_host_key(data)
    except (ValueError, asyncssh.KeyImportError) as e:
        return HostKeyVerdict(False, f"the server's host key cannot be read: {e}"), None
    revoked = _revoked_by_files(policy, key, cert)
    if revoked is not None:
        return revoked, None
    strict = "accept-new" if accept_new and policy.strict in ("yes", "ask") else policy.strict
    outcome = _Checker(policy, address, strict).check(key, cert, port=policy.port,
                                                      readonly=_READ_WRITE, clobber=False)
    verdict = _explain(policy, outcome, key, cert, accept_new=accept_new)
    return verdict, key if verdict.trusted else None


def _revoked_by_files(policy: TrustPolicy, key: asyncssh.SSHKey,
                     cert: HostCertificate | None) -> HostKeyVerdict | None:
    """Why ssh refuses the key by RevokedHostKeys (sshkey_check_revoked), if it does: a
    line that lists it or its certificate's CA, or a file ssh cannot read to the end."""
    refused = {key.public_data} | ({cert.ca.public_data} if cert else set())
    for path in policy.revoked_keys_files:  # (several from OpenSSH 10.3; in order)
        try:
            for line, listed in revoked_keys(path):
                if listed.public_data in refused:
                    return HostKeyVerdict(
                        False, f"the server's key {fingerprint(key)} is revoked by "
                               f"RevokedHostKeys {path} line {line}",
                        "a revoked key is never accepted: ask the host's owner why")
        except RevokedKeysError as e:
            return HostKeyVerdict(False, e.message, e.hint)
    return None


def _explain(policy: TrustPolicy, o: _Outcome, key: asyncssh.SSHKey,
             cert: HostCertificate | None, *, accept_new: bool) -> HostKeyVerdict:
    offered = fingerprint(key)
    looked = ", ".join(policy.consulted) or "no known_hosts file (UserKnownHostsFile none)"
    certificate = (f"; its certificate was not accepted: {o.cert_problem}"
                   if o.cert_problem else "")
    if o.trusted:
        if o.recorded:
            return HostKeyVerdict(True, f"new key {offered} for {o.name} recorded in "
                                        f"{o.recorded} (accept-new)", recorded=o.recorded)
        if o.found is not None and o.found.marker == CA_MARKER and cert and not o.cert_problem:
            return HostKeyVerdict(True, f"certificate for {o.name} signed by the "
                                        f"{CA_MARKER} in {o.found.where}")
        if o.found is not None:
            return HostKeyVerdict(True, f"{offered} for {o.name} matches {o.found.where}"
                                        + certificate)
        return HostKeyVerdict(True, f"{o.name}: {o.why}")
    if o.status is Status.REVOKED:
        where = o.found.where if o.found else "known_hosts"
        return HostKeyVerdict(False, f"REVOKED HOST KEY for {o.name}: the server offers "
                                     f"{offered}, marked {REVOKED_MARKER} in {where}",
                              "a revoked key is never accepted: ask the host's owner why")
    if o.why == "ip changed":
        where = o.ip_found.where if o.ip_found else "known_hosts"
        return HostKeyVerdict(
            False, f"the key for {o.name} matches, but {where} has another key for its "
                   f"address {o.ip_name}, and CheckHostIP is on: ssh refuses it",
            f"only if you know why: ssh-keygen -R '{o.ip_name}' -f {o.ip_found.file}"
            if o.ip_found else None)
    if o.status is Status.CHANGED:
        offending = o.found
        files = sorted({e.file for e in policy.entries(o.name) if e.marker == ""})
        return HostKeyVerdict(
            False, f"HOST KEY CHANGED for {o.name}: the server offers {offered}, "
                   + (f"{offending.where} has {fingerprint(offending.key)}" if offending
                      else "known_hosts has another key")
                   + f"{certificate}. Someone may be intercepting the connection, or the "
                   "host was reinstalled.",
            "only if you know why the key changed: "
            + "; ".join(f"ssh-keygen -R '{o.name}' -f {f}" for f in files)
            + ", then check again with --accept-new")
    into = policy.user_files[0] if policy.user_files else policy.record_to
    hint: str | None = (f"check that fingerprint with the host's owner, then add it to {into} (the "
            f"file ssh records keys in), or pass --accept-new to record it"
            + (f" in {policy.record_to}" if policy.record_to else "")
            if into else "no UserKnownHostsFile to record it in: add it to a "
                          "GlobalKnownHostsFile or to the inventory's known_hosts:")
    if accept_new and policy.record_to is None:
        hint = "nowhere to record it: the ssh config says UserKnownHostsFile none"
    return HostKeyVerdict(False, f"{o.name} is not in known_hosts (it offers {offered}"
                                 f"{certificate}); looked in {looked}", hint)


__all__ = ["HostCertificate", "HostKeyVerdict", "decode_host_key", "verify"]
