"""relay.pl (the hosts' relay for big messages behind lanes) on its own: a real perl with
a real TCP connection for the primary's, socket pairs for its workers' ends and a pipe
for stdin, as worker.R starts it. Each message is kept once in a file without a name,
which each worker it is for opens by the path it is told and reads where it is; a file
is let go once every worker told of it has opened it and a newer message came; a
directory that is full passes the message on to the next one, and one no directory
could take is told as such; a worker gone is dropped (and killed where a write to it
fails); the relay ends with the primary's connection or its stdin. With splice() and
without (as where perl cannot tell the CPU's number for it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

RELAY_PL = (Path(__file__).parents[1] / "sshcluster" / "R" / "relay.pl").read_text()
SPLICE = {"x86_64": 275, "aarch64": 76}.get(os.uname().machine, 0)
MB = 1 << 20

pytestmark = pytest.mark.skipif(shutil.which("perl") is None, reason="no perl here")


@dataclass
class Relay:
    proc: subprocess.Popen[bytes]
    primary: socket.socket
    workers: dict[int, socket.socket]
    sleepers: dict[int, subprocess.Popen[bytes]]

    def frame(self, slot: int, message: bytes = b"") -> None:
        self.primary.sendall(struct.pack(">id", slot, len(message)) + message)

    def notice(self, slot: int) -> tuple[int, float, str]:
        """A worker's notice: its kind, the message's length and the path (or reason)."""
        s = self.workers[slot]
        head = _read(s, 16)
        kind, n, length = struct.unpack(">iid", head)
        return kind, length, _read(s, n).decode()

    def files(self, under: Path) -> list[str]:
        """The relay's open files under a directory (their targets, '(deleted)' and all;
        it inherits others, from pytest)."""
        targets = []
        for p in Path(f"/proc/{self.proc.pid}/fd").iterdir():
            with contextlib.suppress(FileNotFoundError):  # (closed while this looked)
                targets.append(os.readlink(p))
        return [t for t in targets if t.startswith(f"{under}/") and "(deleted)" in t]


def _read(s: socket.socket, n: int) -> bytes:
    out = b""
    s.settimeout(20)
    while len(out) < n:
        chunk = s.recv(n - len(out))
        assert chunk, f"closed after {len(out)} of {n} bytes"
        out += chunk
    return out


def _wait(predicate, what: str, seconds: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.fixture
def start(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    started: list[Relay] = []

    def make(dirs: list[str], splice: int = SPLICE, slots: tuple[int, ...] = (1, 2),
             wrap: list[str] | None = None) -> Relay:
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        theirs = socket.create_connection(("127.0.0.1", port))
        ours, _ = listener.accept()
        listener.close()
        pairs = {slot: socket.socketpair() for slot in slots}
        sleepers = {slot: subprocess.Popen(["sleep", "300"]) for slot in slots}
        args = [str(splice), str(theirs.fileno()), *dirs, "--",
                *(f"{slot}:{pairs[slot][1].fileno()}:{sleepers[slot].pid}" for slot in slots)]
        proc = subprocess.Popen(
            [*(wrap or []), "perl", "-e", RELAY_PL, *args], stdin=subprocess.PIPE,
            pass_fds=[theirs.fileno(), *(p[1].fileno() for p in pairs.values())])
        theirs.close()
        for _ours, b in pairs.values():
            b.close()
        relay = Relay(proc, ours, {slot: pairs[slot][0] for slot in slots}, sleepers)
        started.append(relay)
        return relay

    yield make
    for r in started:
        r.proc.kill()
        r.proc.wait()
        for p in r.sleepers.values():
            p.kill()
            p.wait()
        r.primary.close()
        for s in r.workers.values():
            s.close()


@pytest.mark.parametrize("splice", sorted({SPLICE, 0}))
def test_a_message_kept_once_read_by_each_worker_and_let_go(start, tmp_path: Path,
                                                            splice: int) -> None:
    """A message for worker 1, then the same for worker 2 (its head again): one file,
    each worker reads the whole message by its path; the file stays while worker 2 has
    not opened it, even once a newer message came, and goes once it has; the newest
    stays for a head that may still name it."""
    r = start([str(tmp_path)], splice=splice)
    one = os.urandom(3 * MB + 17)
    r.frame(1, one)
    r.frame(-2)
    k1, n1, p1 = r.notice(1)
    k2, n2, p2 = r.notice(2)
    assert (k1, n1, k2, n2) == (1, len(one), 1, len(one))
    assert p1 == p2 and p1.startswith(f"/proc/{r.proc.pid}/fd/")
    assert Path(p1).read_bytes() == one
    assert len(r.files(tmp_path)) == 1
    with open(p2, "rb") as f2:  # (worker 2 opens, does not say so yet)
        r.workers[1].sendall(b"\x06")
        two = os.urandom(MB)
        r.frame(1, two)
        assert r.notice(1)[2] != p1
        _wait(lambda: len(r.files(tmp_path)) == 2, "both kept while worker 2 has not said")
        r.workers[2].sendall(b"\x06")
        _wait(lambda: len(r.files(tmp_path)) == 1, "the first file let go")
        assert f2.read() == one  # (what a worker opened stays whole)
    r.frame(-2)
    k, n, p = r.notice(2)
    assert (k, n) == (1, len(two)) and Path(p).read_bytes() == two
    r.frame(0)  # an echo
    assert _read(r.primary, 12) == struct.pack(">id", 0, 0)


def test_a_full_directory_passes_the_message_on_and_none_is_told(start, tmp_path: Path) -> None:
    """A 1 MB tmpfs first: a 3 MB message moves, the bytes already there with it, to the
    next directory, whole; where no directory can take it, the workers are told so (kind
    2, the reason) and the relay goes on; a small one stays in the tmpfs."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a tmpfs of its own")
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir()
    big.mkdir()
    wrap = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs -o size=1m none "$1" && shift && exec "$@"', "sh", str(small)]
    r = start([str(small), str(big)], wrap=wrap)
    three = os.urandom(3 * MB)
    r.frame(1, three)
    kind, n, path = r.notice(1)
    assert (kind, n) == (1, len(three))
    assert Path(path).read_bytes() == three
    assert len(r.files(big)) == 1 and not r.files(small), r.files(tmp_path)
    r.workers[1].sendall(b"\x06")
    tiny = os.urandom(100_000)
    r.frame(2, tiny)
    kind, n, path = r.notice(2)
    assert Path(path).read_bytes() == tiny
    assert len(r.files(small)) == 1, r.files(tmp_path)
    r.workers[2].sendall(b"\x06")

    lone = start([str(small)], wrap=wrap)
    lone.frame(1, three)
    kind, n, why = lone.notice(1)
    assert (kind, n) == (2, len(three)) and "no room" in why and str(small) in why, why
    lone.frame(1, tiny)  # (the stream stays in step)
    kind, n, path = lone.notice(1)
    assert kind == 1 and Path(path).read_bytes() == tiny


def test_no_directory_at_all_is_told(start, tmp_path: Path) -> None:
    r = start([str(tmp_path / "missing")])
    r.frame(1, b"x" * 70_000)
    kind, n, why = r.notice(1)
    assert (kind, n) == (2, 70_000) and "missing" in why
    r.frame(1, b"")
    assert r.notice(1)[0] == 2


def test_a_gone_worker_is_dropped_and_the_others_go_on(start, tmp_path: Path) -> None:
    """Worker 2's end closed: the relay drops it (a message for it is read and
    forgotten) and goes on for worker 1; the end of stdin (the host's R gone) ends it."""
    r = start([str(tmp_path)])
    r.workers[2].close()
    r.frame(2, os.urandom(200_000))
    msg = os.urandom(200_000)
    r.frame(1, msg)
    assert Path(r.notice(1)[2]).read_bytes() == msg
    assert r.sleepers[2].poll() is None  # (gone by itself: not killed)
    assert r.proc.stdin is not None
    r.proc.stdin.close()
    assert r.proc.wait(timeout=10) == 0


def test_the_primary_gone_ends_the_relay_mid_message(start, tmp_path: Path) -> None:
    r = start([str(tmp_path)])
    r.primary.sendall(struct.pack(">id", 1, 10 * MB) + os.urandom(MB))
    r.primary.close()
    assert r.proc.wait(timeout=10) == 0


def test_a_worker_that_cannot_be_written_to_is_killed(start, tmp_path: Path) -> None:
    """A worker whose end takes no notice (its reader gone while the relay still held
    it: a write fails) is killed, as the R relay kills it, so that its host reports it."""
    r = start([str(tmp_path)])
    r.workers[2].shutdown(socket.SHUT_RD)  # (a write to its end now fails)
    r.frame(2, b"y" * 70_000)
    _wait(lambda: r.sleepers[2].poll() is not None, "the worker killed")
    assert r.sleepers[2].returncode == -signal.SIGKILL
    r.frame(1, b"z" * 70_000)
    assert r.notice(1)[0] == 1
