"""The check's callback listener against hostile peers on 127.0.0.1: it accepts only the
nonces it handed out, each once, reads a few bytes within a deadline, never raises, and
keeps answering the genuine hosts while strangers flood it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sshcluster.check import callback
from sshcluster.check.callback import NONCE_LIMIT, CallbackListener

NONCE = "0123456789abcdef" * 2
#: The genuine worker connects from another loopback address than the strangers.
GENUINE = "127.0.0.2"


async def call_back(port: int, line: bytes, source: str = GENUINE) -> bytes:
    """Connect as a worker does, send ``line``, return the answer (b"" when closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(line)
        await writer.drain()
        return await asyncio.wait_for(reader.read(100), 10)
    except ConnectionError:
        return b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def run_quietly(main: Callable[[], Awaitable[Any]], caplog: pytest.LogCaptureFixture) -> Any:
    """Run ``main`` in a fresh event loop; fail if anything reached the loop's exception
    handler or asyncio's log (where tracebacks would come from)."""
    errors: list[dict[str, Any]] = []

    async def wrapped() -> Any:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, c: errors.append(c))
        return await main()

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        result = asyncio.run(wrapped())
    assert errors == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    return result


def test_only_the_expected_nonce_once(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with CallbackListener(port=None, hosts=1) as lst:
            lst.expect(NONCE, "node1")
            assert await call_back(lst.port, b"not the nonce\n") == b"no\n"
            assert not lst.confirmed("node1")
            assert await call_back(lst.port, NONCE.encode() + b"\n") == b"ok\n"
            assert lst.confirmed("node1")
            assert await call_back(lst.port, NONCE.encode() + b"\n") == b"no\n"  # used up
            assert await call_back(lst.port, NONCE.upper().encode() + b"\n") == b"no\n"
            # a nonce followed by more, or without its newline, is not a nonce
            more, bare = "fedcba9876543210" * 2, "0f1e2d3c4b5a6978" * 2
            lst.expect(more, "node2")
            lst.expect(bare, "node3")
            assert await call_back(lst.port, more.encode() + b"\nmore") in (b"", b"no\n")
            assert await call_back(lst.port, bare.encode()) in (b"", b"no\n")
            assert not lst.confirmed("node2") and not lst.confirmed("node3")
            notes = lst.notes()
        assert len(notes) == 1 and "turned away 5 connections" in notes[0]
        assert GENUINE in notes[0]

    run_quietly(main, caplog)


@pytest.mark.parametrize("payload", [
    b"A" * (1 << 20),                   # one long line, no newline
    (b"B" * 100 + b"\n") * 1000,        # many long lines
    bytes(range(256)) * 64,             # garbage
])
def test_floods_get_no_answer_and_no_traceback(payload: bytes,
                                              caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with CallbackListener(port=None, hosts=1) as lst:
            assert await call_back(lst.port, payload, source="127.0.0.1") in (b"", b"no\n")
            assert lst.notes()

    run_quietly(main, caplog)


def test_a_stalled_peer_is_dropped_at_the_deadline(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(callback, "HANDSHAKE_TIMEOUT", 0.5)

    async def main() -> float:
        async with CallbackListener(port=None, hosts=1) as lst:
            reader, writer = await asyncio.open_connection("127.0.0.1", lst.port)
            writer.write(NONCE[:2].encode())  # two bytes, then nothing
            t0 = time.monotonic()
            assert await asyncio.wait_for(reader.read(100), 10) == b""
            writer.close()
            return time.monotonic() - t0

    assert run_quietly(main, caplog) < 3


def test_genuine_workers_pass_while_strangers_flood(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Hundreds of stalled and flooding connections from one address: the workers, from
    their own addresses, still get their answer at once."""
    # (long enough that a worker held up until a stranger's stall timed out would show,
    # with a margin for a busy machine: the workers get in well within a second)
    monkeypatch.setattr(callback, "HANDSHAKE_TIMEOUT", 6.0)
    nonces = {f"node{i}": f"{i:032x}" for i in range(8)}

    async def stranger(port: int, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"x" * (NONCE_LIMIT * 4))
                await asyncio.sleep(0)  # and leave it open: a stall

    async def main() -> tuple[list[bytes], float]:
        async with CallbackListener(port=None, hosts=len(nonces)) as lst:
            for label, nonce in nonces.items():
                lst.expect(nonce, label)
            stop = asyncio.Event()
            strangers = [asyncio.ensure_future(stranger(lst.port, stop)) for _ in range(20)]
            await asyncio.sleep(0.5)
            t0 = time.monotonic()
            answers = await asyncio.gather(*(
                call_back(lst.port, f"{nonce}\n".encode(), source=f"127.0.1.{i + 1}")
                for i, nonce in enumerate(nonces.values())))
            took = time.monotonic() - t0
            stop.set()
            await asyncio.gather(*strangers)
            assert all(lst.confirmed(label) for label in nonces)
            assert "turned away" in lst.notes()[0]
            return answers, took

    answers, took = run_quietly(main, caplog)
    assert answers == [b"ok\n"] * len(nonces)
    assert took < callback.HANDSHAKE_TIMEOUT


def test_a_port_in_use_is_reported_not_raised() -> None:
    async def main() -> None:
        async with CallbackListener(port=None) as first, \
                CallbackListener(port=first.port) as second:
            assert second.error and f"port {first.port}" in second.error

    asyncio.run(main())


def test_idle_strangers_from_the_workers_own_address_cannot_crowd_it_out(
        caplog: pytest.LogCaptureFixture) -> None:
    """A user of the worker host holds many connections open, saying nothing, from the
    host's own address (through the forward, every connection counts as the host's):
    the worker's callback, from that same address, still gets its answer."""
    hosts = 1
    held_count = hosts + callback.PER_SOURCE_EXTRA + 8

    async def main() -> tuple[bytes, list[str]]:
        async with CallbackListener(port=None, hosts=hosts) as lst:
            lst.expect(NONCE, "node1")
            held = []
            for _ in range(held_count):
                _, writer = await asyncio.open_connection("127.0.0.1", lst.port,
                                                          local_addr=(GENUINE, 0))
                held.append(writer)
            await asyncio.sleep(0.2)  # all of them accepted and waiting
            answer = await call_back(lst.port, f"{NONCE}\n".encode())
            for writer in held:
                writer.close()
            return answer, lst.notes()

    answer, notes = run_quietly(main, caplog)
    assert answer == b"ok\n"
    assert "turned away" in notes[0]


def test_a_slow_name_lookup_is_a_warning_that_says_how_slow(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """The lookup R's accept will make, in a thread of its own: one that ends past
    SLOW_LOOKUP is timed; one still going past LOOKUP_WAIT says so; a quick one is no
    warning. (The real resolver: tests/test_callback_lookup.py.)"""
    delays = {"10.0.0.1": 0.0, "10.0.0.2": 1.3, "10.0.0.3": 4.0}
    monkeypatch.setattr(callback.socket, "gethostbyaddr",
                        lambda a: time.sleep(delays[a]) or (a, [], [a]))
    monkeypatch.setattr(callback, "SLOW_LOOKUP", 1.0)
    monkeypatch.setattr(callback, "LOOKUP_WAIT", 2.0)

    async def main() -> dict[str, Any]:
        found = {a: callback.NameLookup(a) for a in delays}
        return {a: await lookup.wait() for a, lookup in found.items()}

    waited = asyncio.run(main())
    assert waited["10.0.0.1"][1]
    assert waited["10.0.0.2"][1] and waited["10.0.0.2"][0] >= 1.3
    assert not waited["10.0.0.3"][1] and waited["10.0.0.3"][0] >= 2.0
    ok = callback.StepResult("ok", "R reached 10.0.0.9:11000, nonce checked", 0.1)
    slow = callback.slow_lookup_warning(ok, "10.0.0.2", 1.3, True, "node2")
    assert slow.status == "warning" and slow.detail.startswith(ok.detail)
    assert "took 1.3 s to look up the name of 10.0.0.2" in slow.detail
    assert "'10.0.0.2 node2'" in (slow.hint or "")
    going = callback.slow_lookup_warning(ok, "10.0.0.3", 2.0, False, "10.0.0.3")
    assert "over 2.0 s (and still going)" in going.detail
    assert "'10.0.0.3 NAME'" in (going.hint or "")
