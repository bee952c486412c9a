"""A real SSH server inside the test process, on 127.0.0.1:0, as asyncssh's own
``tests/server.py`` runs one: no root, no network namespace.

It accepts one client key, and runs what a session asks for with a real ``sh`` on this
machine (with ``SSH_CONNECTION`` set as sshd sets it), so the check's remote script runs
for real too.

    async with LocalServer(keys) as server:
        ...  # connect to 127.0.0.1:server.port, host key keys.host_key
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import TracebackType

import asyncssh


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
    host certificates), that lets in ``client_key`` and runs sessions with ``sh -c``."""

    def __init__(self, host_key: asyncssh.SSHKey | Sequence[asyncssh.SSHKey],
                 client_key: asyncssh.SSHKey,
                 certificates: Sequence[asyncssh.SSHCertificate] = (), *,
                 jump_host: bool = False) -> None:
        self.host_keys = [host_key] if isinstance(host_key, asyncssh.SSHKey) else list(host_key)
        self.jump_host = jump_host
        self.certificates = list(certificates)
        self.client_key = client_key
        self.port = 0
        self._server: asyncssh.SSHAcceptor | None = None

    async def __aenter__(self) -> LocalServer:
        authorized = asyncssh.import_authorized_keys(
            self.client_key.export_public_key().decode())
        self._server = await asyncssh.listen(
            "127.0.0.1", 0, server_host_keys=self.host_keys,
            server_host_certs=self.certificates or (), authorized_client_keys=authorized,
            process_factory=_run_session, encoding=None, allow_scp=False,
            server_factory=_JumpHost if self.jump_host else asyncssh.SSHServer)
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


@contextlib.contextmanager
def server_in_thread() -> Iterator[LocalServer]:
    """A :class:`LocalServer` on an event loop of its own, for commands that run theirs."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = LocalServer(keys().host_key, keys().client_key)
    try:
        asyncio.run_coroutine_threadsafe(server.__aenter__(), loop).result(10)
        yield server
        asyncio.run_coroutine_threadsafe(server.__aexit__(None, None, None), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
