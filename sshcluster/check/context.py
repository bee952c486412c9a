"""What the steps of the check share: the run's :class:`CheckContext`, and each host's
:class:`HostCheck` (what its steps found and what they opened).

The steps themselves are in :mod:`sshcluster.check.steps`; the steps a sub-system adds
(``shared_dir``, ``fanout``) take a :class:`HostCheck` too.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import Any

import asyncssh

from sshcluster.check.callback import CallbackListener
from sshcluster.check.probe import Facts, RemoteContext
from sshcluster.inventory import Host, Inventory
from sshcluster.packages.reference import Reference
from sshcluster.push.marker import SharedMarker
from sshcluster.ssh.config import ClientSettings
from sshcluster.ssh.connect import Connector, HostKeyDecision, close_all
from sshcluster.ssh.identities import KeyOffer


@dataclass
class CheckContext:
    """What every host's check shares: the inventory, the deadline (event-loop time),
    the callback listener, the connector (ssh config, known_hosts, keys) and the
    primary's facts."""

    inventory: Inventory
    timeout: float
    deadline: float
    listener: CallbackListener
    connector: Connector
    primary_user: str
    slots: asyncio.Semaphore
    concurrency: int
    tunnel: bool = False
    primary_r_version: str | None = None
    reference: Reference | None = None
    shared: SharedMarker | None = None  # the marker of the inventory's shared_dir

    def remaining(self) -> float:
        """Seconds left until the deadline."""
        return max(0.0, self.deadline - asyncio.get_running_loop().time())


class HostCheck:
    """One host's check in progress: what its steps found and what they opened."""

    def __init__(self, ctx: CheckContext, host: Host, nonce: str) -> None:
        self.ctx = ctx
        self.host = host
        self.nonce = nonce
        self.settings: ClientSettings | None = None
        self.decision: HostKeyDecision | None = None
        self.key_problem: str | None = None
        self.connect_by = 0.0  # when ssh's ConnectTimeout would give up
        self.candidates: list[tuple[int, tuple[Any, ...]]] = []
        self.address: str | None = None
        self.sock: socket.socket | None = None
        self.route: dict[str, Any] = {}  # tunnel or proxy_command for asyncssh
        self.offer: KeyOffer | None = None  # the keys ssh would offer, as the check does
        self.handshake: asyncio.Task[asyncssh.SSHClientConnection] | None = None
        self.conn: asyncssh.SSHClientConnection | None = None
        self.tunnel_error: str | None = None
        self.facts = Facts()
        self.remote: asyncio.Task[None] | None = None
        self.callback_timeout = 0
        self.opened: list[Any] = []  # its jump host and agent connections

    def remote_context(self) -> RemoteContext:
        """What the remote verdicts need besides the facts."""
        inv = self.ctx.inventory
        return RemoteContext(self.host, self.ctx.primary_r_version,
                             reverse_ssh_required=inv.reverse_ssh == "required",
                             reference=self.ctx.reference, packages=inv.packages,
                             inventory_path=inv.path, launch=inv.launch, workdir=inv.workdir,
                             worker_output=inv.worker_output, lease=inv.lease,
                             register=inv.register)

    async def close(self) -> None:
        """Close whatever the steps opened (idempotent)."""
        tasks = [t for t in (self.remote, self.handshake) if t is not None]
        for task in tasks:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, asyncssh.SSHClientConnection):  # not handed to auth
                outcome.abort()
        if self.conn is not None:
            self.conn.abort()
        if self.sock is not None:
            self.sock.close()
        await close_all(self.opened)  # (after the connection that ran through them)


__all__ = ["CheckContext", "HostCheck"]
