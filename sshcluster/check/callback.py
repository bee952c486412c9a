"""The ``callback`` step in one place: a worker's R reaches the primary and proves who it is.

The launch's workers connect back to the primary's port, so the check does the same:

* :class:`CallbackListener` listens where the launch will: on the inventory's ``port``
  (or a free one in R's range) on every address, or with ``tunnel: reverse`` on
  127.0.0.1 only. It is the one owner of that socket (an async context manager).
* With ``tunnel: reverse``, :meth:`CallbackListener.forward` asks each host's sshd to
  listen on the host's 127.0.0.1:PORT, as the launch's ``ssh -R`` does, and hands what
  arrives there to the same handshake, attributed to that host.
* On the worker, ``step_callback`` in ``R/callback.R`` (part of the probe script, see
  :mod:`sshcluster.check.probe`) connects with R's own ``socketConnection`` and writes the
  host's nonce, which reached it on the ssh session's stdin (never in argv, where other
  users of the host could read it).
* The listener accepts exactly the nonces it handed out, each once: it reads at most
  :data:`NONCE_LIMIT` bytes within :data:`HANDSHAKE_TIMEOUT` seconds, then answers
  ``ok`` or closes. At most :data:`PER_SOURCE_EXTRA` connections more than there are
  hosts wait for their nonce at a time from one address (every connection through a
  host's forward counts as that host's): a new one makes room by closing the oldest still
  waiting. A genuine worker sends its nonce as soon as it connects, so strangers holding
  connections open (long lines, garbage, stalls; say, a user of the worker host on its
  forwarded port) are turned away without a traceback and cannot crowd it out; the
  report's notes count what was turned away.
* :func:`callback_verdict` turns the worker's answer and the listener's own record into
  the step's result.
* R's ``socketAccept()`` looks up the name of every address that connects (C's
  ``gethostbyaddr()``, which nothing in R turns off) before it hands the connection
  over, one connection at a time. Where that lookup is slow (a resolver that does not
  answer, as on many networks without internet), the launch waits that long for each
  connection. Straight to the primary (no tunnel), the listener looks up each host's
  address as R will, and :func:`slow_lookup_warning` says so when it is slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import asyncssh

from sshcluster.check.facts import Facts, r_died
from sshcluster.check.report import StepResult
from sshcluster.net import R_PORT_RANGE, is_ipv6
from sshcluster.protocol import Fact

#: The longest line a worker sends: a nonce is 32 hex digits and a newline.
NONCE_LIMIT = 64
#: Seconds a connection has to present its nonce.
HANDSHAKE_TIMEOUT = 3.0
#: Connections waiting for their nonce at once from one address, beyond one per host.
#: Each costs only a socket (or an ssh channel) for at most HANDSHAKE_TIMEOUT, and a new
#: one closes the oldest: a host user holding and reopening connections would have to
#: open this many between the genuine worker's connect and its nonce (16 was too few:
#: a user of the host reopening 40 connections pushed the probe out).
PER_SOURCE_EXTRA = 256
#: Random ports tried in R's range when the inventory names none.
PORT_TRIES = 50
#: Seconds past which the primary's lookup of a host's address (as R's accept makes it)
#: is worth a warning, and how long the check waits for one to end.
SLOW_LOOKUP = 1.0
LOOKUP_WAIT = 2.5


class NameLookup:
    """The primary's lookup of ``address``'s name (as R's ``socketAccept()`` makes it), in
    a thread of its own that nothing waits for at exit (a resolver that does not answer
    may take many seconds)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.started = time.monotonic()
        self.seconds: float | None = None
        threading.Thread(target=self._run, daemon=True, name="sshcluster-lookup").start()

    def _run(self) -> None:
        with contextlib.suppress(OSError, UnicodeError):
            socket.gethostbyaddr(self.address)
        self.seconds = time.monotonic() - self.started

    async def wait(self, limit: float = LOOKUP_WAIT) -> tuple[float, bool]:
        """Seconds it took, or, past ``limit`` seconds from its start (at most
        :data:`LOOKUP_WAIT`), how long it has taken so far; and whether it ended."""
        limit = min(limit, LOOKUP_WAIT)
        while self.seconds is None and time.monotonic() - self.started < limit:
            await asyncio.sleep(0.05)
        seconds = self.seconds
        return (seconds, True) if seconds is not None else (
            time.monotonic() - self.started, False)

_Read = Callable[[int], Awaitable[bytes]]


class CallbackListener:
    """The primary's end of the callback: listens, checks nonces, counts strangers.

    ``port`` is the inventory's (None: a free one in R's range); ``loopback_only``
    listens on 127.0.0.1 (the reverse tunnel's end) instead of every address;
    ``hosts`` sizes the per-address limit. After :meth:`start` (or ``async with``),
    ``port`` is the port and ``error`` says why listening failed, if it did.
    """

    def __init__(self, *, port: int | None, loopback_only: bool = False,
                 hosts: int = 1) -> None:
        self.wanted = port
        self.port = port or 0
        self.loopback_only = loopback_only
        self.error: str | None = None
        self._per_source = hosts + PER_SOURCE_EXTRA
        self._server: asyncio.AbstractServer | None = None
        self._nonces: dict[str, str] = {}  # nonce -> host label
        self._confirmed: set[str] = set()
        # per source: the connections waiting for their nonce, oldest first -> close
        self._waiting: dict[str, dict[object, Callable[[], Any]]] = {}
        self._turned_away: Counter[str] = Counter()
        self._open: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._lookups: dict[str, NameLookup] = {}  # host label -> its address's lookup

    async def __aenter__(self) -> CallbackListener:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen; on failure set ``error`` (the hosts' callback steps then say it)."""
        candidates = [self.wanted] if self.wanted else random.sample(
            range(R_PORT_RANGE[0], R_PORT_RANGE[1] + 1), PORT_TRIES)
        last: OSError | None = None
        for port in candidates:
            try:
                self._server = await asyncio.start_server(
                    self._serve_tcp, host="127.0.0.1" if self.loopback_only else None,
                    port=port, reuse_address=True, limit=NONCE_LIMIT)
            except OSError as e:
                last = e
                if e.errno == errno.EADDRINUSE and not self.wanted:
                    continue
                break
            self.port = port
            return
        where = self.wanted or "in {}-{}".format(*R_PORT_RANGE)
        self.error = (f"the primary cannot listen on port {where}: "
                      f"{last.strerror if last else 'no free port'}")

    async def close(self) -> None:
        """Stop listening and drop the connections still open (idempotent)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._open.values():
            writer.transport.abort()  # their handlers see the end and return
        await asyncio.gather(*self._open, return_exceptions=True)

    def expect(self, nonce: str, label: str) -> None:
        """Accept ``nonce`` once, as the callback of host ``label``."""
        self._nonces[nonce] = label

    def confirmed(self, label: str) -> bool:
        """Whether host ``label``'s nonce arrived."""
        return label in self._confirmed

    async def lookup(self, label: str, wait: float = LOOKUP_WAIT
                     ) -> tuple[str, float, bool] | None:
        """Host ``label``'s address, how long the primary took to look up its name and
        whether that ended (waiting up to ``wait`` seconds), if it came straight (not
        through a tunnel) and took over :data:`SLOW_LOOKUP`."""
        found = self._lookups.get(label)
        if found is None:
            return None
        seconds, ended = await found.wait(wait)
        return (found.address, seconds, ended) if seconds > SLOW_LOOKUP else None

    def notes(self) -> list[str]:
        """One line about the connections turned away, if there were any."""
        if not self._turned_away:
            return []
        total = sum(self._turned_away.values())
        who = ", ".join(f"{src}: {n}" for src, n in self._turned_away.most_common(5))
        return [f"the callback listener on port {self.port} turned away {total} "
                f"connection{'s' if total != 1 else ''} without a valid nonce ({who})"]

    async def forward(self, conn: asyncssh.SSHClientConnection, label: str) -> str | None:
        """Listen on 127.0.0.1:PORT of ``conn``'s host and bring what arrives here, as the
        launch's ``ssh -R`` will; None, or why the host refused."""
        source = f"{label} (tunnel)"

        def handler(_host: str, _port: int) -> Callable[..., Awaitable[None]]:
            async def serve(reader: asyncssh.SSHReader[bytes],
                            writer: asyncssh.SSHWriter[bytes]) -> None:
                await self._guarded(source, reader.read, writer.write, writer.close)
            return serve

        try:
            await conn.start_server(handler, "127.0.0.1", self.port)
        except (asyncssh.Error, asyncssh.ChannelListenError, OSError) as e:
            return (f"the reverse tunnel cannot listen on 127.0.0.1:{self.port} on {label}: "
                    f"{getattr(e, 'reason', '') or e}")
        return None

    async def _serve_tcp(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        task = asyncio.current_task()
        assert task is not None
        self._open[task] = writer
        try:
            await self._guarded(source, reader.read, writer.write, writer.close,
                                tcp=source != "?")
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        except asyncio.CancelledError:
            # Ended by the listener's close (or the run's end). Python 3.11's
            # start_server reports a handler that ends cancelled as an unhandled
            # exception, with a traceback: this one ends quietly instead.
            writer.close()
        finally:
            del self._open[task]

    async def _guarded(self, source: str, read: _Read, write: Callable[[bytes], Any],
                       close: Callable[[], Any], tcp: bool = False) -> None:
        """One connection: never raises, whatever the peer sends or does not send
        (``tcp``: straight from ``source``, an address, not through a tunnel)."""
        waiting = self._waiting.setdefault(source, {})
        me = object()
        try:
            if len(waiting) >= self._per_source:
                # The oldest waiting makes room (its read then ends, and it is counted):
                # turning the new one away instead would let idle strangers keep a
                # genuine worker out.
                close_oldest = waiting.pop(next(iter(waiting)))
                with contextlib.suppress(OSError, asyncssh.Error):
                    close_oldest()
            waiting[me] = close
            try:
                nonce = await asyncio.wait_for(_read_line(read), HANDSHAKE_TIMEOUT)
            finally:
                waiting.pop(me, None)
            label = self._claim(nonce)
            if label is None:
                self._turned_away[source] += 1
                write(b"no\n")
            else:
                write(b"ok\n")
                if tcp:
                    self._lookups[label] = NameLookup(source)
        except (OSError, EOFError, ValueError, asyncio.TimeoutError, asyncssh.Error):
            self._turned_away[source] += 1
        finally:
            with contextlib.suppress(OSError, asyncssh.Error):
                close()

    def _claim(self, line: bytes | None) -> str | None:
        if line is None:
            return None
        for nonce, label in self._nonces.items():
            if hmac.compare_digest(nonce.encode("utf-8"), line):
                if label in self._confirmed:
                    return None  # each nonce once
                self._confirmed.add(label)
                return label
        return None


def slow_lookup_warning(ok: StepResult, address: str, seconds: float, ended: bool,
                        name: str) -> StepResult:
    """The ``callback`` step of a host whose address the primary is slow to look up: it
    works, but R's accept waits that long for each of its connections. ``name``: the
    host's name in the inventory (an address there: a name is to be chosen)."""
    took = f"{seconds:.1f} s" if ended else f"over {seconds:.1f} s (and still going)"
    try:
        ipaddress.ip_address(name)
        line = f"'{address} NAME'"
    except ValueError:
        line = f"'{address} {name}'"
    return StepResult(
        "warning",
        f"{ok.detail}; but the primary took {took} to look up the name of {address}, and "
        "R's accept looks up every connection's address before it takes the next: the "
        "launch waits that long for each connection from this host (one for a host's "
        "relay, one per worker with 'relay: false')", ok.seconds,
        hint=(f"give the primary a quick answer for {address}: a line {line} in its "
              "/etc/hosts, a reverse DNS zone, or a resolver in /etc/resolv.conf that "
              "answers; or carry R's traffic in the ssh sessions ('tunnel: reverse', the "
              "default), whose connections come from 127.0.0.1"))


async def _read_line(read: _Read) -> bytes | None:
    """Up to :data:`NONCE_LIMIT` bytes ending in a newline; None for anything else."""
    data = b""
    while len(data) < NONCE_LIMIT:
        chunk = await read(NONCE_LIMIT - len(data))
        if not chunk:
            return None
        data += chunk
        if b"\n" in data:
            line, _, rest = data.partition(b"\n")
            return line if not rest else None
    return None


def callback_verdict(facts: Facts, *, complete: bool, target: str, listen_error: str | None,
                     tunnel: bool, timeout: float, confirmed: bool, who: str = "R"
                     ) -> StepResult:
    """The ``callback`` step: what the worker's R said, checked against what the
    listener saw (``confirmed``). ``target`` names where R connected; ``timeout`` is the
    connect timeout R was given (to tell a drop from a refusal); ``who`` names that R
    (``R in IMAGE`` for a host with a container:)."""
    if listen_error:
        return StepResult(
            "failed", listen_error,
            hint=("choose another 'port:' in the inventory" if not tunnel else
                  "choose another 'port:' in the inventory (a port taken on a host cannot "
                  "be forwarded), and check that sshd there allows it "
                  "(AllowTcpForwarding yes)"))
    seen = facts.get(Fact.PRIMARY) or ""
    if not tunnel and is_ipv6(seen):
        return StepResult(
            "failed", f"{who} cannot connect to the primary's IPv6 address {seen} (where this "
                      "host's ssh came from): R's sockets are IPv4 only",
            facts.number(Fact.T_CALLBACK) or 0.0,
            hint="use the reverse tunnel (tunnel: reverse, the default: the workers connect "
                 "to 127.0.0.1 on their side), or set primary.host to the primary's IPv4 "
                 "address")
    if Fact.CALLBACK not in facts:
        if not complete:
            return StepResult("failed", "no answer before the deadline")
        return StepResult("failed", r_died(facts))
    answer = facts.get(Fact.CALLBACK) or ""
    secs = facts.number(Fact.T_CALLBACK) or 0.0
    if answer == "ok":
        if not confirmed:
            return StepResult("failed", "the worker says it called back, but the primary did "
                                        "not see its nonce", secs)
        return StepResult("ok", f"{who} reached {target}, nonce checked", secs)
    if timeout and secs >= timeout - 0.5:
        why = (f"no answer from {target} within {secs:.0f} s (packets dropped by a firewall, "
               "or a wrong primary address)")
    elif "cannot be opened" in answer and secs < 1.0:
        why = (f"connection to {target} refused or unreachable ({answer}): a firewall "
               "rejects it, or the address is not the primary's")
    else:
        why = f"{who} could not talk to {target}: {answer}"
    return StepResult(
        "failed", why, secs,
        hint=("ssh works, so launching with '--tunnel reverse' carries R's connection "
              "through the ssh session; or open the port on the primary's firewall, or set "
              "primary.host to an address the workers can reach") if not tunnel else
             "the forward is up but R's connection through it failed: see sshd's log on "
             "the host",
    )


__all__ = [
    "HANDSHAKE_TIMEOUT",
    "NONCE_LIMIT",
    "PER_SOURCE_EXTRA",
    "CallbackListener",
    "callback_verdict",
]
