"""A real SSH server inside the test process, on 127.0.0.1:0, as asyncssh's own
``tests/server.py`` runs one: no root, no network namespace.

By default it accepts one client key and runs what a session asks for with a real ``sh``
on this machine (with ``SSH_CONNECTION`` set as sshd sets it), so the check's remote
script runs for real too. ``authorized=None`` lets in any client key, and ``session``
replaces ``sh`` with a function of the session (a stand-in for a cloud instance).

    async with LocalServer(keys().host_key, keys().client_key) as server:
        ...  # connect to 127.0.0.1:server.port, host key keys().host_key

:class:`ServerThread` runs servers on an event loop of its own, for code that runs its
own loop (a CLI command, a blocking function).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import asyncssh

_T = TypeVar("_T")
#: What a session runs instead of ``sh``: a function of the session (text mode).
Session = Callable[[asyncssh.SSHServerProcess[str]], None]


@dataclass(frozen=True)
class Keys:
    """Keys made once per test session: the server's host key, another host key (a
    "reinstalled" server), and the client's key pair."""

    host_key: asyncssh.SSHKey
    other_host_key: asyncssh.SSHKey
    client_key: asyncssh.SSHKey

    def write_client_key(self, path: Path) -> Path:
        """Write the client's private key (OpenSSH format, mode 0600) to ``path``."""
        self.client_key.write_private_key(str(path))
        path.chmod(0o600)
        self.client_key.write_public_key(str(path) + ".pub")
        return path


@cache
def keys() -> Keys:
    """The session's keys (ed25519: fast to make)."""
    return Keys(*(asyncssh.generate_private_key("ssh-ed25519") for _ in range(3)))


class LocalServer:
    """An asyncssh server on 127.0.0.1 (a free port) with ``host_key`` (or several, and
    host certificates), that lets in ``authorized`` (None: any client key) and runs
    sessions with ``sh -c`` (or ``session``)."""

    def __init__(self, host_key: asyncssh.SSHKey | Sequence[asyncssh.SSHKey],
                 authorized: asyncssh.SSHKey | None,
                 certificates: Sequence[asyncssh.SSHCertificate] = (), *,
                 jump_host: bool = False, session: Session | None = None) -> None:
        self.host_keys = [host_key] if isinstance(host_key, asyncssh.SSHKey) else list(host_key)
        self.jump_host = jump_host
        self.certificates = list(certificates)
        self.client_key = authorized
        self.session = session
        self.port = 0
        self._server: asyncssh.SSHAcceptor | None = None

    async def __aenter__(self) -> LocalServer:
        options: dict[str, Any] = {}
        if self.client_key is not None:
            options["authorized_client_keys"] = asyncssh.import_authorized_keys(
                self.client_key.export_public_key().decode())
        if self.session is not None:
            options["process_factory"] = self.session
        else:
            options.update(process_factory=_run_session, encoding=None, allow_scp=False)
        factory = (_AnyKey if self.client_key is None else
                   _JumpHost if self.jump_host else asyncssh.SSHServer)
        self._server = await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=self.host_keys,
            server_host_certs=self.certificates or (), server_factory=factory, **options)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


class _JumpHost(asyncssh.SSHServer):
    """Forwards connections to 127.0.0.1 (ssh -W, ProxyJump), and nowhere else."""

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> bool:
        return dest_host == "127.0.0.1"


class _AnyKey(asyncssh.SSHServer):
    """Lets in any client key (a stand-in for an instance whose key pair only the code
    under test knows)."""

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return True


async def _run_session(process: asyncssh.SSHServerProcess[bytes]) -> None:
    peer = process.get_extra_info("peername") or ("127.0.0.1", 0)
    local = process.get_extra_info("sockname") or ("127.0.0.1", 0)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/"),
           "SSH_CONNECTION": f"{peer[0]} {peer[1]} {local[0]} {local[1]}"}
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", process.command or "exec sh", env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        await process.redirect(stdin=proc.stdin, stdout=proc.stdout)
        status = await proc.wait()
        await process.stdout.drain()
        process.exit(status)
        await process.wait_closed()  # runs asyncssh's own clean-up of the redirection
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


class ServerThread:
    """An event loop on a thread of its own, for :class:`LocalServer` s that must serve
    while the test's own code blocks or runs its own loop; :meth:`close` stops them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[LocalServer] = []

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = 10) -> _T:
        """Run ``coro`` on the thread's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, server: LocalServer) -> LocalServer:
        """Start ``server`` on the thread's loop."""
        self.run(server.__aenter__())
        self.servers.append(server)
        return server

    def close(self, join: float = 10) -> None:
        """Stop the servers, then the loop."""
        try:
            for server in self.servers:
                self.run(server.__aexit__(None, None, None))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(join)


@contextlib.contextmanager
def server_in_thread() -> Iterator[LocalServer]:
    """A :class:`LocalServer` on an event loop of its own, for commands that run theirs."""
    thread = ServerThread()
    try:
        yield thread.start(LocalServer(keys().host_key, keys().client_key))
    finally:
        thread.close()
        thread.loop.close()


__all__ = ["Keys", "LocalServer", "ServerThread", "Session", "keys", "server_in_thread"]
