"""The bytes of a push: one tar stream, made once, written to every host that needs it.

:func:`tar_stream` writes the entries to send as a tar archive (modes and modification
times kept, links as links) whose last members, ``.sshcluster-push-b2sums`` (only where
a host needs it) and ``.sshcluster-push-sums``, hold the BLAKE2b and the SHA-256 of
every file, computed while the file is read: each host checks what it
unpacked against one of them (remote.sh: the SHA-256 by ``openssl`` where the host's
CPU has SHA instructions, else ``b2sum``, which is several times faster than coreutils'
``sha256sum``, where the host has it).
:class:`Fanout` runs the archive's writer in a thread and hands each chunk to one
writer thread per ssh: a host that stalls fills only its own queue, and one whose ssh
ends is dropped without stopping the others. A host that takes nothing more for
:data:`~sshcluster.protocol.PUSH_STALL` seconds is given up: its ssh is ended.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import io
import os
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO

from sshcluster.protocol import PUSH_LOCK_WAIT, PUSH_STALL
from sshcluster.push.manifest import Entry, encode_names

__all__ = ["B2SUMS", "SUMS", "Fanout", "tar_stream"]

#: The archive's last members: ``HASH  ./PATH`` lines, as ``b2sum -c`` (BLAKE2b-512)
#: and ``sha256sum -c`` read them.
B2SUMS = ".sshcluster-push-b2sums"
SUMS = ".sshcluster-push-sums"

#: Bytes per chunk handed to the hosts' writers, and bytes a host may fall behind.
CHUNK = 1 << 20
_BACKLOG = 16 << 20
#: A write at least this big is handed on as it is.
_WHOLE = 64 << 10
#: A pipe to ssh this big lets a writer hand over a whole chunk at once.
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031
#: Bytes per write into a host's pipe: a write that returns is progress, so a slow link
#: is never taken for a stuck host (at least this much in PUSH_STALL seconds).
_PIECE = 64 << 10
#: The environment variable that sets another :data:`~sshcluster.protocol.PUSH_STALL`
#: (the tests' few seconds).
STALL_ENV = "SSHCLUSTER_PUSH_STALL"


def stall_seconds() -> int:
    """Seconds without progress after which a host's push is given up."""
    value = os.environ.get(STALL_ENV, "")
    return int(value) if value.isdigit() and int(value) >= 1 else PUSH_STALL


def lock_seconds() -> int:
    """Seconds a host waits for another push into the same DEST there: the same share of
    :func:`stall_seconds` as :data:`~sshcluster.protocol.PUSH_LOCK_WAIT` of
    :data:`~sshcluster.protocol.PUSH_STALL`."""
    return max(1, stall_seconds() * PUSH_LOCK_WAIT // PUSH_STALL)


def tar_stream(entries: Sequence[Entry], dirs: Sequence[Entry], out: IO[bytes],
               b2sums: bool = True) -> None:
    """Write ``dirs`` (all of them: parents must exist, with their modes), then
    ``entries``, then the sums, as a tar archive to ``out``. ``b2sums=False``: no
    BLAKE2b (no host checks with ``b2sum``; it cost the primary 1.4 CPU-seconds per GiB
    here, the SHA-256 0.8).

    The headers are :mod:`tarfile`'s; the content goes to ``out`` in ``CHUNK`` reads,
    each hashed and written as it is (tarfile's own stream copies in 16 KiB pieces
    through a buffer it rebuilds on each one, which costs the primary more CPU than
    the hash)."""
    sums: list[str] = []
    b2lines: list[str] = []
    written = 0

    def put(b: bytes) -> None:
        nonlocal written
        out.write(b)
        written += len(b)

    def header(ti: tarfile.TarInfo) -> None:
        put(ti.tobuf(tarfile.GNU_FORMAT, tarfile.ENCODING, "surrogateescape"))

    for e in [*dirs, *entries]:
        ti = tarfile.TarInfo(e.rel)
        ti.mode, ti.mtime, ti.uname, ti.gname = e.mode, e.mtime, "", ""
        if e.kind == "d":
            ti.type = tarfile.DIRTYPE
            header(ti)
        elif e.kind == "l":
            ti.type, ti.linkname = tarfile.SYMTYPE, e.target
            header(ti)
        else:
            with open(e.source, "rb", buffering=0) as f:
                ti.size = e.size
                header(ti)
                h = hashlib.sha256()
                b2 = hashlib.blake2b() if b2sums else None
                left = e.size
                while left:
                    data = f.read(min(CHUNK, left))
                    if not data:
                        raise OSError(f"{e.source} shrank while it was read")
                    h.update(data)
                    if b2 is not None:
                        b2.update(data)
                    put(data)
                    left -= len(data)
                sums.append(f"{h.hexdigest()}  ./{e.rel}\n")
                if b2 is not None:
                    b2lines.append(f"{b2.hexdigest()}  ./{e.rel}\n")
            _pad(put, e.size)
    for name, lines in ((B2SUMS, b2lines), (SUMS, sums))[0 if b2sums else 1:]:
        data = encode_names("".join(lines))
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode = len(data), 0o600
        header(ti)
        put(data)
        _pad(put, len(data))
    put(tarfile.NUL * (2 * tarfile.BLOCKSIZE))  # the end of the archive
    _pad(put, written, tarfile.RECORDSIZE)


def _pad(put: Callable[[bytes], None], size: int, to: int = tarfile.BLOCKSIZE) -> None:
    if size % to:
        put(tarfile.NUL * (to - size % to))


class _Chunks(io.RawIOBase):
    """What the archive writer writes to: chunks of at least ``CHUNK`` bytes, handed to
    ``put``; a write of ``_WHOLE`` bytes or more goes as it is (after what was
    gathered), not copied into a chunk (a 512 KiB file's content was copied twice)."""

    def __init__(self, put: Callable[[bytes], None]) -> None:
        self.put = put
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        if len(b) >= _WHOLE:
            self.flush()
            self.put(b)
            return len(b)
        self.buf += b
        if len(self.buf) >= CHUNK:
            self.flush()
        return len(b)

    def flush(self) -> None:
        if self.buf:
            self.put(bytes(self.buf))
            self.buf.clear()


class Fanout:
    """Write one archive of ``entries`` to the stdin of each of ``procs`` (ssh processes
    whose remote side reads it after the ``prefix`` bytes), each at its own pace.

    ``sent(i, n)`` is called from host ``i``'s writer after each chunk it wrote (n bytes
    in all so far). :meth:`run` returns once every writer is done; :meth:`cancel` stops
    the archive early (the hosts then see a truncated stream and keep nothing).
    """

    def __init__(self, procs: Sequence[subprocess.Popen[bytes]], prefix: bytes,
                 entries: Sequence[Entry], dirs: Sequence[Entry],
                 sent: Callable[[int, int], None], b2sums: bool = True) -> None:
        self.procs = procs
        self.b2sums = b2sums
        self.prefix = prefix
        self.entries = entries
        self.dirs = dirs
        self.sent = sent
        self.queues = [_Backlog(_BACKLOG) for _ in procs]
        self.dead = [False] * len(procs)
        #: When each writer's write under way began (None: none under way), and the hosts
        #: given up for taking nothing for stall_seconds().
        self.writing: list[float | None] = [None] * len(procs)
        self.stalled = [False] * len(procs)
        self.error: BaseException | None = None
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    def _put(self, chunk: bytes) -> None:
        if self._cancelled.is_set():
            raise _Cancelled
        for q in self.queues:
            q.put(chunk)

    def _produce(self) -> None:
        sink = _Chunks(self._put)
        try:
            sink.put(self.prefix)
            tar_stream(self.entries, self.dirs, sink, self.b2sums)  # type: ignore[arg-type]
            sink.flush()
        except _Cancelled:
            pass
        except BaseException as e:  # reported by run(); the hosts see a cut stream
            self.error = e
        finally:
            for q in self.queues:
                q.put(None)

    def _write(self, i: int) -> None:
        proc, q = self.procs[i], self.queues[i]
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            fcntl.fcntl(proc.stdin.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)
        total = 0
        while (chunk := q.get()) is not None:
            if self.dead[i]:
                continue  # keep taking chunks, so that the others are not held up
            try:
                view = memoryview(chunk)
                for at in range(0, len(view), _PIECE):
                    self.writing[i] = time.monotonic()
                    proc.stdin.write(view[at:at + _PIECE])
                    proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                self.dead[i] = True
                continue
            finally:
                self.writing[i] = None
            total += len(chunk)
            self.sent(i, total)
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.close()

    def run(self) -> None:
        """Make the archive and write it to every host; returns when all are done."""
        threads = [threading.Thread(target=self._write, args=(i,), daemon=True)
                   for i in range(len(self.procs))]
        producer = threading.Thread(target=self._produce, daemon=True)
        for t in [*threads, producer]:
            t.start()
        stall = stall_seconds()
        for t in [producer, *threads]:
            while t.is_alive():  # (a timeout, so that Ctrl-C reaches the main thread)
                t.join(0.2)
                self._give_up_stuck(stall)

    def _give_up_stuck(self, stall: float) -> None:
        # A host whose pipe took nothing for `stall` seconds: its ssh is ended, which
        # ends the write (its writer then drops it, as one whose ssh ended).
        now = time.monotonic()
        for i, since in enumerate(self.writing):
            if since is not None and now - since > stall and not self.stalled[i]:
                self.stalled[i] = True
                with contextlib.suppress(OSError):
                    self.procs[i].kill()


class _Backlog:
    """A queue of chunks for one host's writer that holds at most ``limit`` bytes (and
    always one chunk, however big): a host that stalls holds up the archive, and so
    the others, only once it is that far behind."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self.items: collections.deque[bytes | None] = collections.deque()
        self.cond = threading.Condition()

    def put(self, chunk: bytes | None) -> None:
        size = len(chunk) if chunk is not None else 0
        with self.cond:
            while self.items and self.bytes + size > self.limit:
                self.cond.wait()
            self.items.append(chunk)
            self.bytes += size
            self.cond.notify_all()

    def get(self) -> bytes | None:
        with self.cond:
            while not self.items:
                self.cond.wait()
            chunk = self.items.popleft()
            self.bytes -= len(chunk) if chunk is not None else 0
            self.cond.notify_all()
            return chunk


class _Cancelled(Exception):
    pass
