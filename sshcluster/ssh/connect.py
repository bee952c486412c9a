"""Connecting as OpenSSH would: asyncssh given exactly what ``ssh -G`` says for a host.

:func:`trust_policy` turns a host's :class:`~sshcluster.ssh.config.ClientSettings` into
the :class:`~sshcluster.ssh.knownhosts.TrustPolicy` its host keys are checked with;
:class:`Connector` builds asyncssh's connect options from the same settings (the host
name, port and user ssh uses, its identity files, certificates and agent, and the host
key algorithms in ssh's order) and opens ``ProxyJump`` hops as ssh does (each hop
checked with its own settings, as the ``ssh -W`` that ssh starts for it would).

asyncssh offers no hook that sees a host certificate whole, so :class:`HostKeyClient`
takes over the connection's ``validate_server_host_key`` and decides with
:func:`~sshcluster.ssh.knownhosts.verify`; asyncssh's own known_hosts is given nothing to
trust, so that anything slipping past the hook is refused, never accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncssh
from asyncssh.encryption import get_encryption_algs
from asyncssh.kex import get_kex_algs
from asyncssh.mac import get_mac_algs
from asyncssh.public_key import get_certificate_algs, get_public_key_algs

from sshcluster.ssh.config import ClientSettings, SshConfigError, client_settings, split_hop
from sshcluster.ssh.identities import KeyFiles, KeyOffer, identity_public_key, key_offer
from sshcluster.ssh.keyblob import ssh_string
from sshcluster.ssh.keycheck import HostKeyVerdict, verify
from sshcluster.ssh.knownhosts import KnownHostsFiles, TrustPolicy, order_host_key_algorithms

#: The host key algorithms asyncssh can take, in any order.
SUPPORTED_HOST_KEY_ALGS = frozenset(a.decode() for a in (*get_certificate_algs(),
                                                        *get_public_key_algs()))
_ALGORITHMS = {
    "kexalgorithms": ("kex_algs", frozenset(a.decode() for a in get_kex_algs())),
    "ciphers": ("encryption_algs", frozenset(a.decode() for a in get_encryption_algs())),
    "macs": ("mac_algs", frozenset(a.decode() for a in get_mac_algs())),
    # (the signatures a user key may make: OpenSSH 8.8 and later leave out ssh-rsa,
    # which asyncssh would fall back to with a server that names none)
    "pubkeyacceptedalgorithms": ("signature_algs",
                                 frozenset(a.decode() for a in get_public_key_algs())),
}
_KNOWN_HOSTS_COMMAND = re.compile(
    r"""^/bin/sh -c 'cat -- "\$0" 2>/dev/null; exit 0' "((?:[^"\\]|\\.)*)"$""")


def command_file(command: str | None) -> str | None:
    """The file of the launch's own KnownHostsCommand (see
    :func:`~sshcluster.ssh.command.ssh_command`); None for any other command."""
    m = _KNOWN_HOSTS_COMMAND.match(command or "")
    if not m:
        return None
    return re.sub(r"\\(.)", r"\1", m.group(1)).replace("%%", "%")


def trust_policy(settings: ClientSettings, files: KnownHostsFiles, *,
                 record_to: str | None, command_files: Sequence[str] = ()) -> TrustPolicy:
    """How ssh with ``settings`` checks host keys; ``command_files`` are what its
    ``KnownHostsCommand`` prints, ``record_to`` where ``--accept-new`` records."""
    return TrustPolicy(
        hostname=settings.hostname, port=settings.port, alias=settings.host_key_alias,
        user_files=settings.user_known_hosts, global_files=settings.global_known_hosts,
        command_files=tuple(command_files), strict=settings.strict_host_key_checking,
        check_host_ip=settings.check_host_ip, proxied=settings.proxied,
        hash_known_hosts=settings.hash_known_hosts,
        ca_sign_algorithms=settings.ca_signature_algorithms,
        revoked_keys_files=settings.revoked_host_keys,
        no_host_auth_localhost=settings.no_host_auth_localhost, record_to=record_to,
        openssh=settings.openssh, files=files)


def host_decision(settings: ClientSettings, launch_args: Sequence[str],
                  inventory_file: str | None, files: KnownHostsFiles,
                  accept_new: bool) -> tuple[HostKeyDecision, str | None]:
    """How the launch's ssh (``ssh LAUNCH_ARGS host``, with ``settings``) checks the
    host's keys: the files ssh reads, the inventory's file when its KnownHostsCommand is
    the launch's own, and where ``--accept-new`` records. Also why the check cannot
    decide as ssh would, if it cannot (then it must fail the host)."""
    ours = next((w.partition("=")[2] for w in launch_args
                 if w.startswith("KnownHostsCommand=")), None)
    command_files: tuple[str, ...] = ()
    problem = None
    if settings.known_hosts_command and settings.known_hosts_command == ours \
            and inventory_file:
        command_files = (command_file(ours) or inventory_file,)
    elif settings.known_hosts_command:
        problem = (f"the ssh config sets KnownHostsCommand {settings.known_hosts_command}, "
                   "which the check does not run")
    users = settings.user_known_hosts
    record_to = inventory_file or (users[0] if users else None)
    policy = trust_policy(settings, files, record_to=record_to, command_files=command_files)
    return HostKeyDecision(policy, accept_new), problem


@dataclass
class HostKeyDecision:
    """Where :class:`HostKeyClient` leaves its verdict, and marks the end of the key
    exchange (authentication begins). ``either_order``: the two orders ssh may ask for
    host key types in, when ssh -G cannot tell which (see :func:`_ssh_reorders`)."""

    policy: TrustPolicy
    accept_new: bool
    verdict: HostKeyVerdict | None = None
    kex_done: asyncio.Event = field(default_factory=asyncio.Event)
    either_order: tuple[tuple[str, ...], ...] = ()


def _unsure_order(decision: HostKeyDecision, conn: asyncssh.SSHClientConnection,
                  ) -> tuple[HostKeyVerdict, None] | None:
    """The host's failure when ssh may ask for host key types in either of two orders
    and the server would show another key in each (None: the same key either way, so
    the check sees the key ssh sees)."""
    if not decision.either_order:
        return None
    # The server's KEXINIT: its type, a cookie, its key exchange and host key algorithms.
    # (asyncssh keeps it, but has no public way to read it.)
    kexinit = getattr(conn, "_server_kexinit", b"")
    try:
        listed, _ = ssh_string(kexinit, ssh_string(kexinit, 17)[1])
        offered = listed.decode("ascii").split(",")
    except (ValueError, UnicodeError):
        offered = []
    picks = [next((a for a in order if a in offered), "?") for order in decision.either_order]
    if offered and picks[0] == picks[1]:
        return None
    policy = decision.policy
    return HostKeyVerdict(
        False, f"ssh may ask {policy.name()} for either of two host key types: "
               "HostKeyAlgorithms is set in the ssh config and gives OpenSSH's default "
               "order, and ssh -G cannot tell whether ssh asks for the key types known "
               f"for the host (in {', '.join(policy.consulted) or 'no file'}) first "
               "(unset, or changed with + or -) or keeps the list as written; the server "
               f"would show its {picks[0]} key one way and its {picks[1]} key the other",
        "leave HostKeyAlgorithms unset, change it with + or - only, or write it in another "
        "order than OpenSSH's default (see docs/check.md)"), None


class HostKeyClient(asyncssh.SSHClient):
    """Decides about the server's host key with OpenSSH's rules (see the module)."""

    def __init__(self, decision: HostKeyDecision) -> None:
        self.decision = decision

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        peer = conn.get_extra_info("peername")
        address = None if self.decision.policy.proxied or not peer else str(peer[0])

        def validate(key_data: bytes) -> asyncssh.SSHKey:
            verdict, key = _unsure_order(self.decision, conn) or verify(
                self.decision.policy, key_data, address, accept_new=self.decision.accept_new)
            self.decision.verdict = verdict
            if key is None:
                raise asyncssh.HostKeyNotVerifiable(verdict.detail)
            trusted: asyncssh.SSHKey = key
            return trusted

        conn.validate_server_host_key = validate  # type: ignore[method-assign]

    def begin_auth(self, username: str) -> None:
        self.decision.kex_done.set()


@dataclass
class Connector:
    """What the connections of one check run share: the ``-F`` config (None: ssh's
    defaults), the known_hosts files, ``accept_new``, ssh's default host key algorithms,
    and the keys loaded so far (what a host opens, each host check closes)."""

    config: str | None
    files: KnownHostsFiles
    accept_new: bool
    default_host_key_algs: tuple[str, ...] = ()
    key_files: KeyFiles = field(default_factory=KeyFiles)

    async def options(self, settings: ClientSettings, decision: HostKeyDecision,
                      opened: list[Any], offer: KeyOffer | None = None) -> dict[str, Any]:
        """asyncssh connect options for ssh's ``settings`` (without sock/tunnel/proxy),
        offering the keys of ``offer`` (by default :meth:`key_offer`'s). An agent
        connection it opens is added to ``opened``, for its owner to close
        (:func:`close_all`)."""
        if offer is None:
            offer = await self.key_offer(settings, opened)
        order = settings.host_key_algorithms
        reordered = tuple(order_host_key_algorithms(decision.policy, order))
        reorders = _ssh_reorders(order, self.default_host_key_algs,
                                 listed=settings.host_key_algorithms_listed)
        if reorders:
            order = reordered
        elif reorders is None and reordered != order:
            decision.either_order = tuple(
                tuple(a for a in o if a in SUPPORTED_HOST_KEY_ALGS) for o in (order, reordered))
        kw: dict[str, Any] = {
            "host": settings.hostname, "port": settings.port, "username": settings.user,
            "config": [],  # everything comes from ssh -G, nothing from asyncssh's reading
            "known_hosts": ([], [], []),  # the hook decides; asyncssh trusts nothing
            "server_host_key_algs": [a for a in order if a in SUPPORTED_HOST_KEY_ALGS],
            "client_factory": lambda: HostKeyClient(decision),
            # Exactly ssh's keys, agent keys among them: asyncssh would add every agent
            # key in front of them, and load ~/.ssh/id_* for an empty list (None: none).
            "client_keys": list(offer.keys) or None, "agent_path": None,
            "public_key_auth": bool(offer.keys),
            "password_auth": False, "kbdint_auth": False, "gss_auth": False,
            "host_based_auth": False, "connect_timeout": None,
        }
        for key, (name, supported) in _ALGORITHMS.items():
            wanted = [a for a in settings.get(key).split(",") if a in supported]
            if wanted:
                kw[name] = wanted
        return kw

    async def key_offer(self, settings: ClientSettings, opened: list[Any]) -> KeyOffer:
        """The keys ssh with ``settings`` offers, in its order (see
        :mod:`sshcluster.ssh.identities`); an agent connection it opens is added to
        ``opened``."""
        return await key_offer(settings, self.key_files, opened)

    async def jump(self, spec: str, deadline: float, opened: list[Any],
                   ) -> tuple[asyncssh.SSHClientConnection | None, str]:
        """Open the ProxyJump ``spec`` (``[user@]host[:port]``, comma-separated hops)
        as ssh does; the connection to the last hop, or None and why not. Each hop's
        connection (and agent) is added to ``opened``, for its owner to close."""
        rest, _, last = spec.rpartition(",")
        user, host, port = split_hop(last)
        args = [*(["-l", user] if user else []), *(["-p", str(port)] if port else []),
                *(["-J", rest] if rest else [])]
        try:
            settings = await client_settings(host, args, config=self.config)
        except SshConfigError as e:
            return None, e.message
        files = settings.user_known_hosts
        decision = HostKeyDecision(
            trust_policy(settings, self.files, record_to=files[0] if files else None),
            self.accept_new)
        offer = await self.key_offer(settings, opened)
        kw = await self.options(settings, decision, opened, offer)
        tunnel: asyncssh.SSHClientConnection | None = None
        if settings.proxy_jump:
            tunnel, why = await self.jump(settings.proxy_jump, deadline, opened)
            if tunnel is None:
                return None, why
            kw["tunnel"] = tunnel  # (in opened already)
        elif settings.proxy_command:
            kw["proxy_command"] = settings.proxy_argv()
        name = f"jump host {host}"
        try:
            conn = await asyncio.wait_for(asyncssh.connect(**kw), max(
                0.1, min(deadline, _now() + (settings.connect_timeout or deadline)) - _now()))
        except asyncio.TimeoutError:
            return None, f"{name}: no answer in time"
        except asyncssh.HostKeyNotVerifiable as e:
            return None, f"{name}: " + (decision.verdict.detail if decision.verdict
                                        else e.reason)
        except asyncssh.PermissionDenied as e:
            return None, (f"{name}: permission denied for {settings.user} ({e.reason}; "
                          f"{offer.described()})")
        except (asyncssh.Error, OSError) as e:
            return None, f"{name}: {getattr(e, 'reason', '') or e}"
        opened.append(conn)  # (the hops before it already are)
        return conn, f"{name} ({settings.hostname} port {settings.port})"


async def close_all(opened: list[Any]) -> None:
    """Close the agent and jump host connections in ``opened``, newest first."""
    while opened:
        one = opened.pop()
        one.close()
        with contextlib.suppress(Exception):
            await one.wait_closed()


def _now() -> float:
    return asyncio.get_running_loop().time()


def _ssh_reorders(algorithms: Sequence[str], default: Sequence[str], *,
                  listed: bool = True) -> bool | None:
    """Whether ssh asks for the host's known key types first (sshconnect2.c ssh_kex2):
    when HostKeyAlgorithms is unset or changes OpenSSH's default with + or -; a list of
    one's own, or one with ^, keeps its order. ``ssh -G`` shows only the resulting list:
    when nothing ``listed`` a list of its own, ssh reorders; a list that is not the
    default with algorithms left out or added at the end was written out, and is kept;
    otherwise (a list written out in the default's order) it cannot be told (None)."""
    if not listed:
        return True
    common = [a for a in algorithms if a in default]
    if default and not (common == [d for d in default if d in common]
                        and list(algorithms[:len(common)]) == common):
        return False
    return None


__all__ = [
    "SUPPORTED_HOST_KEY_ALGS",
    "Connector",
    "HostKeyClient",
    "HostKeyDecision",
    "command_file",
    "host_decision",
    "identity_public_key",
    "trust_policy",
]

