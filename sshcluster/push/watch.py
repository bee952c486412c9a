"""A push's small sessions (remote.sh's scan, sums and touch), watched for progress
rather than timed.

Hashing what a host holds takes as long as its disk needs: a user who re-timestamps a
large dataset (``touch``, a ``git checkout``) makes every host hash all of it. So no
session has a deadline for the whole; instead the host reports its progress
(:data:`~sshcluster.protocol.PUSH_PROGRESS` lines on stderr: a value that changes as
the work moves, such as the bytes its hash has read) and a session whose progress has
not moved for :func:`~sshcluster.push.stream.stall_seconds` is ended: a stopped
process, a hung disk or mount. Until the host's first word only
:data:`~sshcluster.protocol.PUSH_FIRST_ANSWER` seconds are allowed (the login).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sshcluster.protocol import PUSH_FIRST_ANSWER, PUSH_PROGRESS, PUSH_REPORTS_PER_STALL
from sshcluster.push.stream import stall_seconds

__all__ = ["Answer", "Stalled", "progress_every", "run_watched"]

_PREFIX = PUSH_PROGRESS.encode() + b" "


def progress_every() -> int:
    """Seconds between a host's progress reports: a fraction of the stall limit, so that
    a report or two late (a loaded host) never looks like a stall."""
    return max(1, stall_seconds() // PUSH_REPORTS_PER_STALL)


@dataclass(frozen=True)
class Answer:
    """What a watched session ended with; ``stderr`` without the progress lines."""

    returncode: int
    stdout: bytes
    stderr: bytes


class Stalled(Exception):
    """The session was ended: no first word within ``seconds`` (``answered`` False),
    or no progress for ``seconds``."""

    def __init__(self, seconds: int, answered: bool) -> None:
        super().__init__(seconds, answered)
        self.seconds = seconds
        self.answered = answered


class _Watch:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.last = time.monotonic()
        self.answered = False
        self.value: bytes | None = None

    def moved(self) -> None:
        with self.lock:
            self.last, self.answered = time.monotonic(), True

    def report(self, value: bytes) -> None:
        with self.lock:
            if value != self.value:
                self.value = value
                self.last, self.answered = time.monotonic(), True


def run_watched(argv: Sequence[str], stdin: bytes) -> Answer:
    """Run ``argv`` (an ssh to a host running remote.sh) with ``stdin``; end it and raise
    :class:`Stalled` once it shows no progress for the stall limit. Any output counts as
    progress; a progress line only when its value changed."""
    stall, first = stall_seconds(), PUSH_FIRST_ANSWER
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    watch = _Watch()
    out: list[bytes] = []
    err: list[bytes] = []

    def feed() -> None:
        assert proc.stdin is not None
        with contextlib.suppress(OSError, ValueError):  # (the host gone: it says why)
            proc.stdin.write(stdin)
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.close()

    # (the readers end at the pipes' end; one a ProxyCommand still holds open is closed
    # under them at the end, hence the suppress)
    def read_out() -> None:
        assert proc.stdout is not None
        with contextlib.suppress(OSError, ValueError):
            while chunk := os.read(proc.stdout.fileno(), 1 << 16):
                out.append(chunk)
                watch.moved()

    def read_err() -> None:
        assert proc.stderr is not None
        with contextlib.suppress(OSError, ValueError):
            for line in iter(proc.stderr.readline, b""):
                if line.startswith(_PREFIX):
                    watch.report(line[len(_PREFIX):].strip())
                else:
                    err.append(line)

    threads = [threading.Thread(target=f, daemon=True) for f in (feed, read_out, read_err)]
    for t in threads:
        t.start()
    try:
        while proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.2)
            with watch.lock:
                limit = stall if watch.answered else first
                quiet = time.monotonic() - watch.last
                answered = watch.answered
            if proc.poll() is None and quiet > limit:
                raise Stalled(limit, answered)
        for t in threads:
            t.join(10)  # (ssh has ended: its pipes are at their end)
        return Answer(proc.returncode, b"".join(out), b"".join(err))
    finally:
        if proc.poll() is None:  # (given up, or Ctrl-C)
            proc.kill()
            proc.wait()
            for t in threads:
                t.join(5)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            with contextlib.suppress(OSError, ValueError):
                f.close()
