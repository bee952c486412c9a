"""What the workers leave when the cluster ends, on real test hosts: a process a worker
started that shrugs TERM off (stopped all the same, once the cluster stopped in order),
and the files a worker made in its tempdir() when the primary's R is killed outright
(removed: the host asks its R to quit before it stops it)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sshcluster.bootstrap import RenderOptions
from sshcluster.testing import Testbed
from sshcluster.testing.cluster import write_cluster
from sshcluster.testing.fixtures import run_r_in_test
from sshcluster.testing.leftovers import nothing_left

pytestmark = pytest.mark.testbed

#: The test hosts share this machine's process table and files: the stubborn process is
#: found by its command line, one of its own for each test (the suite runs tests side
#: by side: a shared one was counted, and killed, by the other test too).
def _stubborn() -> str:
    return f"sleep {3000 + secrets.randbelow(10**6)}"


def _stubborn_left(stubborn: str) -> list[str]:
    out = subprocess.run(["pgrep", "-afx", stubborn], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "fresh"])
def test_a_process_that_ignores_term_ends_with_the_cluster(testbed: Testbed, tmp_path: Path,
                                                           fork: bool) -> None:
    stubborn = _stubborn()
    f = write_cluster(testbed, tmp_path, options=RenderOptions(fork=fork))
    out = run_r_in_test(f"""
        source({str(f)!r})
        invisible(parallel::clusterEvalQ(parallelCluster, system2(
          "sh", c("-c", shQuote("trap '' TERM; exec {stubborn}")), wait = FALSE)))
        Sys.sleep(0.5)
        cat("RUNNING", length(system("pgrep -fx '{stubborn}'", intern = TRUE)), "\\n")
        sshcluster_stop()
    """, tmp_path)
    try:
        assert out.returncode == 0, out.stderr
        assert "RUNNING 8" in out.stdout, out.stdout
        deadline = time.monotonic() + 15
        while _stubborn_left(stubborn) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert _stubborn_left(stubborn) == []
    finally:
        subprocess.run(["pkill", "-KILL", "-fx", stubborn], capture_output=True)


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "fresh"])
def test_a_killed_primary_leaves_no_worker_tempdir(testbed: Testbed, tmp_path: Path,
                                                   fork: bool) -> None:
    """The primary's R is killed (kill -9) while every worker holds a file in its
    tempdir(): once the hosts have stopped their workers, no such directory is left
    (each lives in the session's own directory, which the host removes whatever ended
    its workers). The workers' global environments changed (as clusterExport() changes
    them), and no workspace is written to the workdir, where it would overwrite the
    user's .RData."""
    work = tmp_path / "work"
    f = write_cluster(testbed, tmp_path, options=RenderOptions(fork=fork), workdir=str(work))
    script = tmp_path / "hold.R"
    script.write_text(f"""
        source({str(f)!r})
        d <- parallel::clusterEvalQ(parallelCluster, {{
          kept <- 1; writeLines("x", file.path(tempdir(), "mark")); tempdir() }})
        cat("DIRS", unlist(d), "\\n")
        invisible(parallel::clusterEvalQ(parallelCluster, {{ Sys.sleep(0) }}))
        Sys.sleep(600)
    """)
    proc = subprocess.Popen(["Rscript", str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("DIRS "), proc.stderr.read() if proc.stderr else ""
        dirs = [Path(d) for d in line.split()[1:]]
        assert len(dirs) == 8 and all((d / "mark").is_file() for d in dirs)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        deadline = time.monotonic() + 20
        while any(d.exists() for d in dirs) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert [d for d in dirs if d.exists()] == []
        assert testbed.leftovers("R", wait=10) == {}
        assert work.is_dir() and not (work / ".RData").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_after_close_all_connections_the_users_files_are_left_alone(testbed: Testbed,
                                                                    tmp_path: Path) -> None:
    """closeAllConnections() closes the cluster's pipe to its ssh sessions (which ends
    them: the hosts stop their workers), and R gives its number to the next file opened.
    A call and sshcluster_repair() say what happened; the next source(), sshcluster_stop()
    and R's exit leave the user's files alone (they wrote "stop" into one and closed it
    before), and stop what the cluster had started."""
    f = write_cluster(testbed, tmp_path, hosts=testbed.hosts[:2])
    out = run_r_in_test(f"""
        say <- function(key, ...) cat(key, "|", ..., "\\n", sep = "")
        mine <- function(tag) lapply(1:6, function(i) {{
          con <- file(file.path({str(tmp_path)!r}, sprintf("%s-%d.txt", tag, i)), "w")
          writeLines(tag, con)
          flush(con)
          con
        }})
        still <- function(cons, tag) all(vapply(cons, function(con) !inherits(try({{
          writeLines(paste(tag, "again"), con)
          flush(con)
        }}, silent = TRUE), "try-error"), NA))
        source({str(f)!r})
        closeAllConnections()
        a <- mine("a")
        say("call", tryCatch(parallel::clusterEvalQ(parallelCluster, 1), error = conditionMessage))
        say("repair", tryCatch(sshcluster_repair(), error = conditionMessage))
        source({str(f)!r})  # (stops the cluster of the first source())
        say("a", still(a, "a"))
        say("workers", sum(unlist(parallel::clusterEvalQ(parallelCluster, 1))))
        closeAllConnections()
        b <- mine("b")
        sshcluster_stop()
        say("b", still(b, "b"))
        source({str(f)!r})
        closeAllConnections()
        c <- mine("c")  # (left open: R's exit ends the cluster)
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    said = dict(line.split("|", 1) for line in out.stdout.splitlines() if "|" in line)
    for key in ("call", "repair"):
        assert "closeAllConnections()" in said[key] and "source() the file again" in said[key]
    assert said["a"] == "TRUE" and said["b"] == "TRUE"
    assert said["workers"] == "4"
    for tag, lines in (("a", ["a", "a again"]), ("b", ["b", "b again"]), ("c", ["c"])):
        for i in range(1, 7):
            assert (tmp_path / f"{tag}-{i}.txt").read_text().splitlines() == lines, (tag, i)
    assert nothing_left(testbed, marker=tmp_path) == {}
