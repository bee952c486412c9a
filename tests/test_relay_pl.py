"""relay.pl (the hosts' relay for big messages behind lanes) on its own: a real perl with
a real TCP connection for the primary's, socket pairs for its workers' ends and a pipe
for stdin, as worker.R starts it. Each message is kept once in a file without a name,
which each worker it is for opens by the path it is told and reads where it is; a file
is let go once every worker told of it has opened it and a newer message came; a
message goes to the first directory where it takes at most half the room left, and
one no directory has room for follows its notice on the worker's socket, from memory
(also where a write to its file fails), as does one a worker could not open (NAK); a
worker gone is dropped; the relay ends with the primary's connection or its parent (the
host's R). With splice() (seen in strace) and without, and on a CPU whose system calls
relay.pl does not know (no file then: the room cannot be known).
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

from sshcluster.testing.fixtures import skip_or_fail

RELAY_PL = (Path(__file__).parents[1] / "sshcluster" / "R" / "relay.pl").read_text()
#: R's name for this CPU, as worker.R passes it (relay.pl knows x86_64 and aarch64).
ARCH = os.uname().machine
MB = 1 << 20

pytestmark = pytest.mark.skipif(shutil.which("perl") is None, reason="no perl here")


@dataclass
class Relay:
    proc: subprocess.Popen[bytes]
    pid: int  # relay.pl's, from its "ready PID"
    primary: socket.socket
    workers: dict[int, socket.socket]

    def frame(self, slot: int, message: bytes = b"") -> None:
        self.primary.sendall(struct.pack(">id", slot, len(message)) + message)

    def notice(self, slot: int) -> tuple[int, float, str]:
        """A worker's notice: its kind, the message's length and the path (kind 1)."""
        s = self.workers[slot]
        head = _read(s, 16)
        kind, n, length = struct.unpack(">iid", head)
        return kind, length, _read(s, n).decode()

    def message(self, slot: int) -> bytes:
        """A worker's next message, as worker.R reads it (the file opened, then said so)."""
        kind, length, path = self.notice(slot)
        if kind == 3:
            return _read(self.workers[slot], int(length))
        assert kind == 1, kind
        with open(path, "rb") as f:
            self.workers[slot].sendall(b"\x06")
            return f.read()

    def files(self, under: Path) -> list[str]:
        """The relay's open files under a directory (their targets, '(deleted)' and all;
        it inherits others, from pytest)."""
        targets = []
        for p in Path(f"/proc/{self.pid}/fd").iterdir():
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

    def make(dirs: list[str], arch: str = ARCH, slots: tuple[int, ...] = (1, 2),
             wrap: list[str] | None = None, env: dict[str, str] | None = None) -> Relay:
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        theirs = socket.create_connection(("127.0.0.1", port))
        ours, _ = listener.accept()
        listener.close()
        pairs = {slot: socket.socketpair() for slot in slots}
        args = [arch, str(theirs.fileno()), *dirs, "--",
                *(f"{slot}:{pairs[slot][1].fileno()}" for slot in slots)]
        proc = subprocess.Popen(
            [*(wrap or []), "perl", "-e", RELAY_PL, *args], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, env={**os.environ, **(env or {})},
            pass_fds=[theirs.fileno(), *(p[1].fileno() for p in pairs.values())])
        theirs.close()
        for _ours, b in pairs.values():
            b.close()
        assert proc.stdout is not None
        ready = proc.stdout.readline().split()
        assert ready[0] == b"ready", ready
        relay = Relay(proc, int(ready[1]), ours, {slot: pairs[slot][0] for slot in slots})
        # (each worker's first byte from its relay: this relay's kind)
        assert all(_read(w, 1) == b"F" for w in relay.workers.values())
        started.append(relay)
        return relay

    yield make
    for r in started:
        with contextlib.suppress(ProcessLookupError):
            os.kill(r.pid, signal.SIGKILL)
        r.proc.kill()
        r.proc.wait()
        r.primary.close()
        for s in r.workers.values():
            s.close()


@pytest.mark.parametrize("splice", ["1", "0"])
def test_a_message_kept_once_read_by_each_worker_and_let_go(start, tmp_path: Path,
                                                            splice: str) -> None:
    """A message for worker 1, then the same for worker 2 (its head again): one file,
    each worker reads the whole message by its path; the file stays while worker 2 has
    not opened it, even once a newer message came, and goes once it has; the newest
    stays for a head that may still name it. The bytes went through splice() (strace),
    or, told not to, through perl."""
    if shutil.which("strace") is None:
        skip_or_fail("strace(1) missing: scripts/setup.sh installs it")
    trace = tmp_path / "trace"
    files = tmp_path / "files"
    files.mkdir()
    r = start([str(files)], env={"SSHCLUSTER_RELAY_SPLICE": splice},
              wrap=["strace", "-f", "-qq", "-e", "trace=splice", "-o", str(trace)])
    tmp_path = files
    one = os.urandom(3 * MB + 17)
    r.frame(1, one)
    r.frame(-2)
    k1, n1, p1 = r.notice(1)
    k2, n2, p2 = r.notice(2)
    assert (k1, n1, k2, n2) == (1, len(one), 1, len(one))
    assert p1 == p2 and p1.startswith(f"/proc/{r.pid}/fd/")
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
    r.primary.close()
    assert r.proc.wait(timeout=10) == 0
    splices = trace.read_text().count("splice(")
    assert (splices > 0) == (splice == "1" and ARCH in ("x86_64", "aarch64")), splices


def test_a_worker_that_cannot_open_its_file_gets_the_message_on_its_socket(
        start, tmp_path: Path) -> None:
    """NAK (21) for a file: its bytes follow on the worker's socket; the other worker
    reads the same file."""
    r = start([str(tmp_path)])
    msg = os.urandom(2 * MB + 5)
    r.frame(1, msg)
    r.frame(-2)
    kind, n, _ = r.notice(1)
    assert (kind, n) == (1, len(msg))
    r.workers[1].sendall(b"\x15")
    assert _read(r.workers[1], len(msg)) == msg
    assert r.message(2) == msg


def test_a_cpu_whose_calls_it_does_not_know_keeps_no_file(start, tmp_path: Path) -> None:
    """No statfs(): the room in a directory cannot be known, so no message is kept in a
    file there (a shared tmpfs is never filled); each follows its notice."""
    r = start([str(tmp_path)], arch="none")
    msg = os.urandom(300_000)
    r.frame(1, msg)
    r.frame(-2)
    for slot in (1, 2):
        assert r.notice(slot)[:2] == (3, len(msg))
        assert _read(r.workers[slot], len(msg)) == msg
    assert not r.files(tmp_path)


def _small_tmpfs(small: Path) -> list[str]:
    """relay.pl run where ``small`` is a tmpfs of 1 MB of its own."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        skip_or_fail("needs root and unshare(1) for a tmpfs of its own")
    small.mkdir()
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tmpfs -o size=1m none "$1" && shift && exec "$@"', "sh", str(small)]


def test_a_message_goes_where_it_takes_at_most_half_the_room(start, tmp_path: Path) -> None:
    """A 1 MB tmpfs first: a 3 MB message goes to the next directory, whole, and the
    tmpfs is left as it was (nothing written there); a 100 KB one stays in the tmpfs; a
    600 KB one (more than half of it) goes on too."""
    small, big = tmp_path / "small", tmp_path / "big"
    wrap = _small_tmpfs(small)
    big.mkdir()
    r = start([str(small), str(big)], wrap=wrap)
    for size, where in ((3 * MB, big), (100_000, small), (600_000, big)):
        msg = os.urandom(size)
        r.frame(1, msg)
        kind, n, path = r.notice(1)
        assert (kind, n) == (1, size)
        assert Path(path).read_bytes() == msg
        r.workers[1].sendall(b"\x06")
        # (the one before let go once its ACK is read)
        def alone(where: Path = where) -> bool:
            return r.files(tmp_path) == r.files(where) and len(r.files(where)) == 1
        _wait(alone, f"{size} bytes alone, in {where}")


def test_a_message_with_no_room_follows_its_notice(start, tmp_path: Path) -> None:
    """No directory with room (a 1 MB tmpfs alone): the message is kept in memory and
    follows its notice on the worker's socket (kind 3), also for a head again. A small
    one is kept in a file again."""
    small = tmp_path / "small"
    r = start([str(small)], wrap=_small_tmpfs(small))
    three = os.urandom(3 * MB)
    r.frame(1, three)
    r.frame(-2)
    for slot in (1, 2):
        kind, n, _ = r.notice(slot)
        assert (kind, n) == (3, len(three))
        assert _read(r.workers[slot], len(three)) == three
    assert not r.files(small)
    tiny = os.urandom(100_000)
    r.frame(1, tiny)
    assert r.message(1) == tiny
    assert len(r.files(small)) == 1


def test_no_directory_at_all(start, tmp_path: Path) -> None:
    r = start([str(tmp_path / "missing")])
    msg = os.urandom(70_000)
    r.frame(1, msg)
    assert r.notice(1)[0] == 3
    assert _read(r.workers[1], len(msg)) == msg


def test_a_gone_worker_is_dropped_and_the_others_go_on(start, tmp_path: Path) -> None:
    """Worker 2's end closed, or its reader gone (a write to it fails): the relay drops
    it (a message for it is read and forgotten) and goes on for worker 1; its parent (the
    host's R) gone, it ends, also in the middle of a message."""
    r = start([str(tmp_path)], slots=(1, 2, 3), wrap=["sh", "-c", '"$@"; :', "sh"])
    r.workers[2].close()
    r.workers[3].shutdown(socket.SHUT_RD)
    r.frame(2, os.urandom(200_000))
    r.frame(-3)
    msg = os.urandom(200_000)
    r.frame(1, msg)
    assert r.message(1) == msg
    r.primary.sendall(struct.pack(">id", 1, 10 * MB) + os.urandom(MB))
    r.proc.kill()  # (the sh, relay.pl's parent)
    r.proc.wait()
    _wait(lambda: not Path(f"/proc/{r.pid}").exists(), "relay.pl ended with its parent")


def test_the_primary_gone_ends_the_relay_mid_message(start, tmp_path: Path) -> None:
    r = start([str(tmp_path)])
    r.primary.sendall(struct.pack(">id", 1, 10 * MB) + os.urandom(MB))
    r.primary.close()
    assert r.proc.wait(timeout=10) == 0


def test_a_descriptor_it_cannot_open_ends_it(tmp_path: Path) -> None:
    """A worker's descriptor that is not open: relay.pl ends (its host is given up, and
    named) rather than leave that worker waiting for word of a message."""
    proc = subprocess.run(["perl", "-e", RELAY_PL, ARCH, "0", str(tmp_path), "--", "1:99"],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    assert proc.returncode == 2 and b"ready" not in proc.stdout
