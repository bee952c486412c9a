"""The running cluster's sockets and size: TCP no-delay on every R socket of the cluster,
as many workers as R's connections allow, and a clear refusal before anything starts
when an inventory needs more.

TCP_NODELAY is read from the real sockets: each socket is duplicated out of the R
process with ``pidfd_getfd`` (root, Linux >= 5.6) and asked with ``getsockopt``.
"""

from __future__ import annotations

import ctypes
import os
import socket
from pathlib import Path

import pytest

from sshcluster.bootstrap import RenderOptions
from sshcluster.testing import Testbed
from sshcluster.testing.cluster import interactive_r, write_cluster
from sshcluster.testing.fixtures import R_TIMEOUT, run_r_in_test
from sshcluster.testing.hosts import host_dir
from sshcluster.testing.leftovers import nothing_left
from sshcluster.testing.modes import FAST_MODES

pytestmark = pytest.mark.slow  # scale

_SYS_PIDFD_GETFD = 438  # the same number on every architecture (the unified table)
_libc = ctypes.CDLL(None, use_errno=True)


def tcp_sockets(pid: int) -> list[dict[str, bool]]:
    """Every connected TCP socket of process ``pid``, with whether TCP_NODELAY is set."""
    pidfd = os.pidfd_open(pid)
    found = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    continue
            except OSError:
                continue
            dup = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(fd), 0)
            if dup < 0:
                raise OSError(ctypes.get_errno(), f"pidfd_getfd {pid} {fd}")
            with socket.socket(fileno=dup) as s:
                if s.family not in (socket.AF_INET, socket.AF_INET6) or \
                        s.type != socket.SOCK_STREAM or \
                        s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    continue
                found.append({"nodelay": bool(s.getsockopt(socket.IPPROTO_TCP,
                                                           socket.TCP_NODELAY))})
    finally:
        os.close(pidfd)
    return found


@pytest.mark.parametrize("options", list(FAST_MODES.values()), ids=list(FAST_MODES))
def test_every_r_socket_of_the_cluster_has_no_delay(testbed: Testbed, tmp_path: Path,
                                                    options: RenderOptions) -> None:
    """On the primary's side and on each worker's, in every launch mode."""
    f = write_cluster(testbed, tmp_path, options=options, ncore=2)
    with interactive_r(f"""
        source({str(f)!r})
        cat(Sys.getpid(), unlist(parallel::clusterEvalQ(parallelCluster, Sys.getpid())), "\\n")
        invisible(readLines(file("stdin"), n = 1))
        sshcluster_stop()
    """, tmp_path, "nodelay.R") as proc:
        assert proc.stdout is not None and proc.stdin is not None
        primary, *workers = (int(p) for p in proc.stdout.readline().split())
        ours = tcp_sockets(primary)
        theirs = [s for w in workers for s in tcp_sockets(w)]
        # (the relays' own sockets, or, where relay.pl took them over, relay.pl's)
        between = [s for r in ({parent_of(w) for w in workers} if options.fork else set())
                   for p in (r, *relay_pl_of(r)) for s in tcp_sockets(p)]
        proc.stdin.write("done\n")
        proc.stdin.flush()
        _, err = proc.communicate(timeout=R_TIMEOUT)
        assert proc.returncode == 0, err
    # forked workers: a lane each and one connection per host through its relay (whose
    # own sockets are asked too: the one to the primary, one to each worker); fresh
    # ones: one each (a forked worker holds its lane and its end from the relay)
    assert len(workers) == 8 and len(theirs) == (16 if options.fork else 8)
    assert len(ours) == (8 + 4 if options.fork else 8)
    assert len(between) == (4 + 8 if options.fork else 0)
    assert all(s["nodelay"] for s in ours + theirs + between)
    assert nothing_left(testbed, marker=tmp_path) == {}


def relay_pl_of(pid: int) -> list[int]:
    """The children of a host's R that are perl (its relay.pl)."""
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(k) for k in kids if Path(f"/proc/{k}/comm").read_text().strip() == "perl"]


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_120_workers_leave_connections_for_the_user(testbed: Testbed, tmp_path: Path) -> None:
    """120 workers on one primary (4 hosts x 30), each with a connection of its own
    (relay: false), start, work, and leave the session two connections for its own
    files."""
    f = write_cluster(testbed, tmp_path, ncore=30, relay=False)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    out = run_r_in_test(f"""
        source({str(f)!r})
        cat("workers", length(parallelCluster), "\\n")
        cat("sum", sum(parallel::parSapply(parallelCluster, 1:240, function(i) i)), "\\n")
        x <- file({str(a)!r}, "w"); y <- file({str(b)!r}, "w")
        writeLines("one", x); writeLines("two", y); close(x); close(y)
        cat("files", readLines({str(a)!r}), readLines({str(b)!r}), "\\n")
        sshcluster_stop()
    """, tmp_path, timeout=180)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines["workers"].split() == ["120"]
    assert lines["sum"].split() == [str(240 * 241 // 2)]
    assert lines["files"].split() == ["one", "two"]
    assert nothing_left(testbed, marker=tmp_path) == {}


@pytest.mark.parametrize("ncore", [31, 50])
def test_too_many_workers_are_refused_before_anything_starts(testbed: Testbed,
                                                            tmp_path: Path, ncore: int
                                                            ) -> None:
    """124 or 200 workers with a connection each (relay: false) do not fit in R 4.2's
    128 connections: source() stops with the numbers and what to do, and no host sees
    even an ssh login."""
    logs = [host_dir(testbed.workdir, h) / "sshd.log" for h in testbed.hosts]
    logins = [log.read_text().count("Accepted ") for log in logs]
    f = write_cluster(testbed, tmp_path, ncore=ncore, relay=False)
    out = run_r_in_test(f"source({str(f)!r})\ncat('UNEXPECTED')\n", tmp_path, timeout=30)
    assert out.returncode != 0 and "UNEXPECTED" not in out.stdout
    workers = 4 * ncore
    assert f"{workers} workers need {workers + 2} R connections" in out.stderr
    assert "Nothing was started" in out.stderr and "--max-connections=" in out.stderr
    assert [log.read_text().count("Accepted ") for log in logs] == logins
