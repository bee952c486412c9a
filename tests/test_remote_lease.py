"""The host's script (R/remote.sh) run here, as sshd runs it (its own session, its stdin
the session's), with a stand-in Rscript: with ``lease: true`` its workers and what they
start hold no lease (a program a worker starts with setsid outlives the cluster, not the
lease); behind a tunnel the lease is taken only past "go" (the last read before the
watchdog), and without bash the watchdog's timeout(1) stays in the session's process
group, so that nothing of the session outlives it."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sshcluster.bootstrap import READ_SCRIPT
from tests.test_launch import _tokens

#: A hang guard: the script starts, and ends, in seconds.
DEADLINE = 30.0
#: The lease's line, as the primary's R passes it (job, who, since, script).
LEASE = "R-test\tme@here\tnow\tcluster.R"


def _argv(rscript: Path, mode: str = "direct", silence: int = 40) -> list[str]:
    """remote.sh's command line, as ssh runs it (:func:`tests.test_launch._remote_argv`),
    with ``lease: true``'s variable."""
    return ["sh", "-c", READ_SCRIPT, "sshcluster", str(rscript), "127.0.0.1", "1", "1",
            "30", mode, "fork", str(silence), f"SSHCLUSTER_LEASE={LEASE}"]


def _stand_in(tmp_path: Path, body: str) -> Path:
    rscript = tmp_path / "Rscript"
    rscript.write_text("#!/bin/sh\n" + body)
    rscript.chmod(0o755)
    return rscript


@contextlib.contextmanager
def _session(argv: list[str], home: Path, path: str | None = None
             ) -> Iterator[subprocess.Popen[bytes]]:
    # (TMPDIR: the session's own directory goes there, not in this machine's /tmp,
    # should the group kill below take the reaper that removes it)
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(home),
           **({"PATH": path} if path else {})}
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=env, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _held(home: Path) -> bool:
    """Whether the host's lease is held (flock(1) exits 1 when it cannot lock)."""
    locks = list((home / ".cache/sshcluster/leases").glob("*.lock"))
    if not locks:
        return False
    return subprocess.run(["flock", "-n", str(locks[0]), "true"], timeout=30).returncode == 1


def _until(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"waited in vain for {what}"
        time.sleep(0.1)


def _of_session(sid: int) -> list[str]:
    """The processes of session ``sid`` (what setsid did not take out of it)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
                out.append(entry.name + " " + (entry / "cmdline").read_bytes()
                           .replace(b"\0", b" ").decode(errors="replace"))
    return out


def test_what_a_worker_starts_holds_no_lease(tmp_path: Path) -> None:
    """A worker starts a program with setsid (it outlives the cluster, as it should);
    the session ends: the host's lease ends with it, not with that program."""
    home = tmp_path / "home"
    home.mkdir()
    mark = f"sleep {random.randint(3000, 3999)}.5"
    rscript = _stand_in(tmp_path, f"setsid {mark} </dev/null >/dev/null 2>&1 &\n"
                                  "exec sleep 300\n")
    left: list[int] = []
    try:
        with _session(_argv(rscript), home) as proc:
            assert proc.stdin is not None
            proc.stdin.write(_tokens(1))
            proc.stdin.flush()
            _until(lambda: _pids(mark), "the worker's program")
            left = _pids(mark)
            assert _held(home)
            proc.stdin.close()  # ssh ended
            proc.wait(DEADLINE)
        _until(lambda: not _held(home), "the lease to end with the session")
        assert _pids(mark) == left  # (still running, by design)
    finally:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _pids(command: str) -> list[int]:
    out = subprocess.run(["pgrep", "-x", "-f", command], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_behind_a_tunnel_the_lease_is_taken_after_go(tmp_path: Path) -> None:
    """The host says "ready" and waits for "go" before its watchdog runs: a primary cut
    off then must not leave the host leased, so the lease is taken only after "go"."""
    home = tmp_path / "home"
    home.mkdir()
    rscript = _stand_in(tmp_path, "exec sleep 300\n")
    with _session(_argv(rscript, mode="tunnel"), home) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(_tokens(1))
        proc.stdin.flush()
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(0.5)  # (what the old script did at once, it has done by now)
        assert not _held(home)
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        _until(lambda: _held(home), "the lease after go")
        proc.stdin.close()
        proc.wait(DEADLINE)
    _until(lambda: not _held(home), "the lease to end with the session")


def test_without_bash_the_watchdog_s_reader_ends_with_the_session(tmp_path: Path) -> None:
    """No bash on the host: the watchdog reads with timeout(1). The workers end by
    themselves while the session's stdin stays open (sshd closes it only once the
    session's output has ended): nothing of the session is left within seconds, not
    timeout and its reader waiting out the silence in a process group of their own."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("uname", "timeout", "sleep", "cat", "sh", "flock", "mkdir", "readlink",
                 "tr", "head", "mktemp", "rm"):
        (tools / tool).symlink_to(shutil.which(tool) or tool)
    home = tmp_path / "home"
    home.mkdir()
    rscript = _stand_in(tmp_path, "sleep 1\nexit 0\n")
    with _session(_argv(rscript, silence=600), home, str(tools)) as proc:
        assert proc.stdin is not None
        proc.stdin.write(_tokens(1))
        proc.stdin.flush()
        assert proc.wait(DEADLINE) == 0
        _until(lambda: not _of_session(proc.pid), "the session's processes to end")
        assert not _held(home)



#: flock(1) where file locks cannot be had at all (a home on NFS without a lock
#: service: flock(2) fails with ENOLCK, and util-linux's flock exits 71). No NFS server
#: here: this stands in for that one answer.
NO_LOCKS_FLOCK = '#!/bin/sh\necho "flock: 9: No locks available" >&2\nexit 71\n'


def no_locks_path(tmp_path: Path) -> str:
    """A PATH whose flock(1) always fails as on such a home."""
    bin_dir = tmp_path / "no-locks"
    bin_dir.mkdir()
    (bin_dir / "flock").write_text(NO_LOCKS_FLOCK)
    (bin_dir / "flock").chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def test_a_home_without_file_locks_is_no_lease_of_another_job(tmp_path: Path) -> None:
    """A lock that cannot be taken at all fails the host as that, naming why, and starts
    no worker: it is not a host "leased to another job" (which it was called before)."""
    home = tmp_path / "home"
    home.mkdir()
    rscript = _stand_in(tmp_path, f"touch {home}/started\nexec sleep 300\n")
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(home),
           "PATH": no_locks_path(tmp_path)}
    done = subprocess.run(_argv(rscript), input=_tokens(1), capture_output=True, env=env,
                          timeout=DEADLINE, start_new_session=True)
    assert done.returncode == 125, done
    said = done.stderr.decode()
    assert "cannot lock" in said and "file locks do not work there" in said, said
    assert "leased to" not in said
    assert not (home / "started").exists()
