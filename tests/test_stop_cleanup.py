"""What the workers leave when the cluster ends, on real test hosts: a process a worker
started that shrugs TERM off (stopped all the same, once the cluster stopped in order),
and the files a worker made in its tempdir() when the primary's R is killed outright
(removed: the host asks its R to quit before it stops it)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sshcluster.bootstrap import RenderOptions
from sshcluster.testing import Testbed
from sshcluster.testing.cluster import write_cluster
from sshcluster.testing.fixtures import run_r_in_test

pytestmark = pytest.mark.testbed

#: The test hosts share this machine's process table and files: the stubborn process is
#: found by its command line.
STUBBORN = "sleep 3333"


def _stubborn_left() -> list[str]:
    out = subprocess.run(["pgrep", "-afx", STUBBORN], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "fresh"])
def test_a_process_that_ignores_term_ends_with_the_cluster(testbed: Testbed, tmp_path: Path,
                                                           fork: bool) -> None:
    f = write_cluster(testbed, tmp_path, options=RenderOptions(fork=fork))
    out = run_r_in_test(f"""
        source({str(f)!r})
        invisible(parallel::clusterEvalQ(parallelCluster, system2(
          "sh", c("-c", shQuote("trap '' TERM; exec {STUBBORN}")), wait = FALSE)))
        Sys.sleep(0.5)
        cat("RUNNING", length(system("pgrep -fx '{STUBBORN}'", intern = TRUE)), "\\n")
        sshcluster_stop()
    """, tmp_path)
    try:
        assert out.returncode == 0, out.stderr
        assert "RUNNING 8" in out.stdout, out.stdout
        deadline = time.monotonic() + 15
        while _stubborn_left() and time.monotonic() < deadline:
            time.sleep(0.25)
        assert _stubborn_left() == []
    finally:
        subprocess.run(["pkill", "-KILL", "-f", STUBBORN], capture_output=True)


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "fresh"])
def test_a_killed_primary_leaves_no_worker_tempdir(testbed: Testbed, tmp_path: Path,
                                                   fork: bool) -> None:
    """The primary's R is killed (kill -9) while every worker holds a file in its
    tempdir(): once the hosts have stopped their workers, no such directory is left
    (each lives in the session's own directory, which the host removes whatever ended
    its workers; this does not tell R's own removal, on the watchdog's USR2, from it)."""
    f = write_cluster(testbed, tmp_path, options=RenderOptions(fork=fork))
    script = tmp_path / "hold.R"
    script.write_text(f"""
        source({str(f)!r})
        d <- parallel::clusterEvalQ(parallelCluster, {{
          writeLines("x", file.path(tempdir(), "mark")); tempdir() }})
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
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
