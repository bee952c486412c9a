"""lease.sh run here by sh, as a host's session runs it (its stdin the session's): the
line of waiters (tickets) with a waiter that is stopped, one killed outright, and a
home directory on NFS, where an exclusive lock needs a file open for writing; a holder
that falls silent (its stdin neither ends nor says anything) loses its lease, or its
place in line, after the silence (with bash, and with timeout(1) where there is no bash)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from sshcluster.bootstrap import END_OF_SCRIPT, READ_SCRIPT
from sshcluster.jobs.leases import LEASE_SCRIPT
from sshcluster.quoting import shell_quote
from tests.test_remote_lease import no_locks_path

#: flock(1) as an NFS mount makes it: flock(2) becomes a POSIX lock there, and an
#: exclusive one on a descriptor open only for reading fails with EBADF (flock(2),
#: "NFS details"); util-linux's flock then exits 65. (No NFS server here: this
#: stands in for one, with the one rule that matters, and hands every other call on.)
NFS_FLOCK = """#!/bin/sh
shared=''
for a; do case $a in -s|--shared) shared=1;; esac; done
for a; do case $a in [0-9]|[0-9][0-9]) fd=$a;; esac; done
if [ -z "$shared" ] && [ -n "${fd:-}" ]; then
  flags=$(sed -n 's/^flags:[[:space:]]*//p' /proc/$$/fdinfo/$fd 2>/dev/null)
  if [ -n "$flags" ] && [ $(( 0$flags & 3 )) -eq 0 ]; then
    echo "flock: $fd: Bad file descriptor" >&2
    exit 65
  fi
fi
exec REAL "$@"
"""


class Session:
    """One lease session: sh reading lease.sh from its stdin, which stays open."""

    def __init__(self, home: Path, mode: str, job: str, path: str,
                 silence: int = 600) -> None:
        env = {"HOME": str(home), "PATH": path, "LC_ALL": "C"}
        self.proc = subprocess.Popen(["sh", "-c", READ_SCRIPT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, text=True, start_new_session=True)
        assert self.proc.stdin is not None
        settings = "".join(f"{k}={shell_quote(v)}\n" for k, v in (
            ("MODE", mode), ("JOB", job), ("WHO", "me@here"), ("SINCE", "now"),
            ("SCRIPT", "x.R"), ("SILENCE", str(silence))))
        self.proc.stdin.write(settings + LEASE_SCRIPT + END_OF_SCRIPT + "\n")
        self.proc.stdin.flush()
        self.quiet = threading.Event()

    def beat(self, every: float) -> None:
        """Write a line every ``every`` seconds, as a holder does, until :attr:`quiet`."""
        def run() -> None:
            while not self.quiet.wait(every):
                assert self.proc.stdin is not None
                self.proc.stdin.write("\n")
                self.proc.stdin.flush()

        threading.Thread(target=run, daemon=True).start()

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def until(self, word: str, limit: int = 60) -> str:
        for _ in range(limit):
            got = self.line()
            if got.split(" ", 1)[0] == word or not got:
                return got
        return got

    def end(self) -> None:
        self.quiet.set()
        if self.proc.poll() is None:
            with_stdin = self.proc.stdin
            if with_stdin is not None:
                with_stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _tickets(home: Path) -> list[str]:
    d = home / ".cache" / "sshcluster" / "leases"
    return sorted(p.name for p in d.glob("*.q.*")) if d.is_dir() else []


def _path(tmp_path: Path, nfs: bool) -> str:
    path = os.environ["PATH"]
    if not nfs:
        return path
    real = subprocess.run(["sh", "-c", "command -v flock"], capture_output=True, text=True,
                          check=True).stdout.strip()
    bin_dir = tmp_path / "nfs-bin"
    bin_dir.mkdir()
    (bin_dir / "flock").write_text(NFS_FLOCK.replace("REAL", real))
    (bin_dir / "flock").chmod(0o755)
    return f"{bin_dir}:{path}"


@pytest.mark.parametrize("nfs", [False, True], ids=["local", "nfs"])
def test_waiters_that_left_do_not_keep_the_line(tmp_path: Path, nfs: bool) -> None:
    """A waiter stopped by a signal takes its ticket with it; one killed outright leaves
    its ticket, which the next waiter clears (on NFS too): once the holder is gone,
    the next waiter takes the host at once."""
    home = tmp_path / "home"
    home.mkdir()
    path = _path(tmp_path, nfs)
    sessions: list[Session] = []
    try:
        holder = Session(home, "try", "job-a", path)
        sessions.append(holder)
        assert holder.line() == "leased"
        stopped = Session(home, "wait", "job-b", path)
        sessions.append(stopped)
        assert stopped.line().startswith("wait 1 job-a")
        assert len(_tickets(home)) == 1
        os.killpg(stopped.proc.pid, signal.SIGTERM)
        stopped.proc.wait(10)
        assert _tickets(home) == []  # (the trap took it)
        killed = Session(home, "wait", "job-c", path)
        sessions.append(killed)
        assert killed.line().startswith("wait 1 job-a")
        os.killpg(killed.proc.pid, signal.SIGKILL)
        killed.proc.wait(10)
        assert len(_tickets(home)) == 1  # (nothing runs in a process killed so)
        waiter = Session(home, "wait", "job-d", path)
        sessions.append(waiter)
        # its place: first in line, the dead ticket cleared
        assert waiter.line().startswith("wait 1 job-a")
        holder.end()
        assert waiter.until("leased") == "leased"
        assert _tickets(home) == []
    finally:
        for s in sessions:
            s.end()


#: What lease.sh runs besides sh's builtins: a PATH of only these has no bash.
TOOLS = ("sh", "mkdir", "flock", "readlink", "tr", "uname", "head", "sleep", "date", "expr",
         "rm", "timeout")


def _reader_path(tmp_path: Path, reader: str) -> str:
    """The PATH for a session whose dead man's switch reads with ``reader``: bash's
    read -t (this machine's PATH), or timeout(1) (a PATH without bash)."""
    if reader == "bash":
        return os.environ["PATH"]
    tools = tmp_path / "no-bash"
    tools.mkdir()
    for tool in TOOLS:
        (tools / tool).symlink_to(shutil.which(tool) or tool)
    return str(tools)


def _lease_free(home: Path, path: str) -> bool:
    look = Session(home, "list", "", path)
    try:
        return look.line() == "free"
    finally:
        look.end()


def _ends_within(session: Session, seconds: float) -> bool:
    try:
        session.proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


@pytest.mark.parametrize("reader", ["bash", "timeout"])
def test_a_holder_that_falls_silent_loses_its_lease(tmp_path: Path, reader: str) -> None:
    """A holder that writes a line every half second keeps its lease past the silence
    (4 s); once it stops writing, without ending its session (a network that drops
    every packet), the session ends by itself and the host is free."""
    home = tmp_path / "home"
    home.mkdir()
    path = _reader_path(tmp_path, reader)
    holder = Session(home, "try", "job-a", path, silence=4)
    try:
        holder.beat(0.5)
        assert holder.line() == "leased"
        time.sleep(9)  # (more than twice the silence)
        assert holder.proc.poll() is None and not _lease_free(home, path)
        holder.quiet.set()
        assert _ends_within(holder, 60), "the silent holder kept its lease"
        assert _lease_free(home, path)
    finally:
        holder.end()


@pytest.mark.parametrize("reader", ["bash", "timeout"])
def test_a_waiter_whose_holder_falls_silent_leaves_the_line(tmp_path: Path,
                                                            reader: str) -> None:
    """A job waiting in line whose own holder falls silent (it never writes, never ends
    its session) leaves the line after the silence, taking its ticket with it."""
    home = tmp_path / "home"
    home.mkdir()
    path = _reader_path(tmp_path, reader)
    holder = Session(home, "try", "job-a", path)
    waiter = None
    try:
        assert holder.line() == "leased"
        # (started once the holder has the lease: else the waiter may take it first)
        waiter = Session(home, "wait", "job-b", path, silence=3)
        assert waiter.line().startswith("wait 1 job-a")
        assert len(_tickets(home)) == 1
        assert _ends_within(waiter, 60), "the silent waiter stayed in line"
        assert _tickets(home) == []
        assert holder.proc.poll() is None  # (the holder's lease is its own)
    finally:
        if waiter is not None:
            waiter.end()
        holder.end()


def test_a_timeout_that_wants_t_leaves_the_lease_to_the_session_s_end(tmp_path: Path
                                                                       ) -> None:
    """No bash, and a timeout(1) that takes only "timeout -t SECONDS" (BusyBox before
    1.30): the switch cannot time a read, so the lease lasts until the session ends, as
    without timeout(1); it must not end at once (its timeout failing at once ended it)."""
    home = tmp_path / "home"
    home.mkdir()
    path = _reader_path(tmp_path, "timeout")
    old = Path(path) / "timeout"
    old.unlink()
    old.write_text('#!/bin/sh\n[ "$1" = -t ] || { echo "timeout: invalid option" >&2; '
                   'exit 1; }\nshift 2\nexec "$@"\n')
    old.chmod(0o755)
    holder = Session(home, "try", "job-a", path, silence=2)
    try:
        holder.beat(0.5)
        assert holder.line() == "leased"
        time.sleep(5)
        assert holder.proc.poll() is None and not _lease_free(home, path)
    finally:
        holder.end()
    assert _ends_within(holder, 60) and _lease_free(home, path)


@pytest.mark.parametrize("mode", ["try", "wait", "list"])
def test_a_home_without_file_locks_is_an_error_not_a_holder(tmp_path: Path, mode: str) -> None:
    """Where file locks cannot be had at all (ENOLCK: a home on NFS without a lock
    service), each mode says so as an error naming why: not "held" by some unknown job,
    and no wait in line for a lease nobody holds."""
    home = tmp_path / "home"
    home.mkdir()
    path = no_locks_path(tmp_path)
    if mode == "list":  # (with no lease file yet, "free" is true without a lock)
        Session(home, "try", "job-0", path).end()
        assert list((home / ".cache/sshcluster/leases").glob("*.lock"))
    session = Session(home, mode, "job-a", path)
    try:
        said = session.line()
        assert said.startswith("error cannot lock "), said
        assert "file locks do not work there" in said
        assert _ends_within(session, 10)
    finally:
        session.end()
