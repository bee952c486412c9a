"""``sshcluster_repair()`` (repair.R) on real test hosts, in the cases the fault tests
(tests/test_cluster_faults.py, tests/test_launch_matrix.py) leave out: a repair that
goes on without a host for good, behind relays that carry every message; and a repair
interrupted (Ctrl-C) while it waits for the workers it started again, after which a
second repair must still bring the cluster back.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sshcluster.bootstrap import RenderOptions
from sshcluster.testing import Testbed, TestHost
from sshcluster.testing.cluster import write_cluster
from sshcluster.testing.fixtures import MakeTestbed, run_r_in_test
from sshcluster.testing.leftovers import nothing_left

pytestmark = pytest.mark.slow  # faults

#: R code that keeps every message of a host's workers on its relay's connection (no
#: lanes), as a primary whose R connections would not hold a lane per worker does.
RELAY_ONLY = "options(sshcluster.lanes = FALSE)"


def lines_of(stdout: str) -> dict[str, str]:
    return dict(line.split("|", 1) for line in stdout.splitlines() if "|" in line)


def refuse_ssh(tb: Testbed, host: TestHost) -> str:
    """A shell command that ends ``host``'s ssh sessions (the sshd processes serving
    them, not its listener) and refuses new ones from the primary: the host is lost for
    good, until :meth:`Testbed.reconnect`."""
    return (f"ip netns exec {host.netns} iptables -w 5 -I INPUT 1 -s {tb.primary_address}/32"
            f" -p tcp --dport {host.ssh_port} -j REJECT --reject-with tcp-reset; "
            f"for p in $(ip netns pids {host.netns}); do "
            'case "$(tr "\\0" " " 2>/dev/null < /proc/$p/cmdline)" in '
            '"sshd: root@notty"*|"sshd: root [priv]"*) kill -9 "$p";; esac; done')


def test_answers_out_of_order_after_a_repair_without_a_host(make_testbed: MakeTestbed,
                                                            tmp_path: Path) -> None:
    """2 hosts x 2 forked workers behind relays that carry every message; the first host
    is lost for good and the repair goes on without it. A call whose second worker
    answers first has that answer held while the first one's is read; the relay is then
    asked for an echo, found by the worker's rank (a rank is no position in the
    repaired cluster, which holds the second host's nodes only: the call failed with
    "subscript out of bounds" before)."""
    tb = make_testbed(2)
    h1 = tb.hosts[0]
    f = write_cluster(tb, tmp_path)
    try:
        out = run_r_in_test(f"""
            {RELAY_ONLY}
            say <- function(key, ...) cat(key, "|", ..., "\\n", sep = "")
            source({str(f)!r})
            system({refuse_ssh(tb, h1)!r})
            r <- tryCatch(parallel::clusterEvalQ(parallelCluster, Sys.sleep(60)),
                          error = conditionMessage)
            say("lost", gsub("\\n", " ", r))
            parallelCluster <- sshcluster_repair()
            say("size", length(parallelCluster))
            say("print", paste(capture.output(print(parallelCluster)), collapse = "~"))
            for (k in 1:2) {{
              r <- tryCatch(unlist(parallel::clusterApply(parallelCluster, c(1, 0),
                function(s) {{ Sys.sleep(s); s }})), error = conditionMessage)
              say("apply", paste(r, collapse = " "))
            }}
            say("lb", paste(unlist(parallel::clusterApplyLB(parallelCluster, c(1, 0, 0, 0),
              function(s) {{ Sys.sleep(s); s }})), collapse = " "))
            sshcluster_stop()
        """, tmp_path, timeout=180)
    finally:
        tb.reconnect(h1)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    said = lines_of(out.stdout)
    assert f"lost {h1.address}" in said["lost"], said["lost"]
    assert said["size"] == "2"
    # (the whole cluster shows the host it went on without too)
    assert [ln.split()[:4] for ln in said["print"].split("~")[1:]] == [
        [h1.address, "0", "of", "2"], [tb.hosts[1].address, "2", "of", "2"]], said["print"]
    assert [v for k, v in (ln.split("|", 1) for ln in out.stdout.splitlines())
            if k == "apply"] == ["1 0", "1 0"], out.stdout
    assert said["lb"].split() == ["1", "0", "0", "0"]
    assert nothing_left(tb, marker=tmp_path) == {}


def test_a_repair_interrupted_while_workers_start_again(make_testbed: MakeTestbed,
                                                        tmp_path: Path) -> None:
    """An interrupted call leaves every worker busy; the repair restarts both hosts'
    sessions, and is interrupted (Ctrl-C) while it waits for the first host's new
    workers (that host's sshd slow to answer: its SYNs dropped). A call then says that
    the repair did not finish (not that parallel::stopCluster() was called), and a second
    repair, once the host answers again, brings back every worker (it said the cluster
    "was stopped (parallel::stopCluster())" before); nothing is left."""
    tb = make_testbed(2)
    h1 = tb.hosts[0]
    f = write_cluster(tb, tmp_path)
    syn = f"ip netns exec {h1.netns} iptables -w 5 {{}} INPUT -p tcp --dport 22 --syn -j DROP"
    try:
        out = run_r_in_test(f"""
            say <- function(key, ...) cat(key, "|", ..., "\\n", sep = "")
            source({str(f)!r})
            dir <- environment(sshcluster_stop)$S$dir
            system(sprintf("sh -c 'sleep 2; kill -INT %d'", Sys.getpid()), wait = FALSE)
            say("call", tryCatch(parallel::parLapply(parallelCluster, 1:4, function(i)
              Sys.sleep(100)), interrupt = function(e) "interrupted"))
            system({syn.format("-I")!r})
            # (Ctrl-C once the repair has started a host's session again, and a second
            # later: the other host's workers may be back, not the first host's)
            system(sprintf(paste(
              "sh -c 'i=0; while [ $(ls %s | grep -c [.]pid$) -lt 3 ] && [ $i -lt 600 ];",
              "do sleep 0.1; i=$((i + 1)); done; sleep 1; kill -INT %d'"), dir, Sys.getpid()),
              wait = FALSE)
            say("repair", tryCatch(sshcluster_repair(), interrupt = function(e) "interrupted"))
            say("after", gsub("\\n", " ", tryCatch(parallel::clusterEvalQ(parallelCluster, 1),
                                                  error = conditionMessage)))
            system({syn.format("-D")!r})
            said <- character()
            parallelCluster <- withCallingHandlers(sshcluster_repair(), message = function(m) {{
              said <<- c(said, conditionMessage(m))
              invokeRestart("muffleMessage")
            }})
            say("again", gsub("\\n", " ", paste(said, collapse = " ")))
            say("size", length(parallelCluster))
            say("sum", sum(parallel::parSapply(parallelCluster, 1:8, function(i) i)))
            sshcluster_stop()
        """, tmp_path, timeout=180)
    finally:
        tb.reconnect(h1)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    said = lines_of(out.stdout)
    assert said["call"] == "interrupted"
    assert said["repair"] == "interrupted", out.stderr
    assert "stopCluster" not in said["after"], said["after"]
    assert "did not finish" in said["after"] and "sshcluster_repair()" in said["after"]
    assert "4 of 4 workers running" in said["again"], said["again"]
    assert said["size"] == "4"
    assert said["sum"] == "36"
    assert nothing_left(tb, marker=tmp_path) == {}


def test_print_decides_per_node(testbed: Testbed, tmp_path: Path) -> None:
    """print() of a part of the cluster shows its hosts only, with their workers in it
    (it said the cluster "was stopped or replaced" before); of a cluster object from
    before a repair that replaced one worker, how many of its nodes are stale."""
    f = write_cluster(testbed, tmp_path, hosts=testbed.hosts[:2],
                      options=RenderOptions(fork=False))
    h1, h2 = testbed.hosts[0], testbed.hosts[1]
    out = run_r_in_test(f"""
        say <- function(key, cl) cat(key, "|", paste(capture.output(print(cl)),
                                                     collapse = "~"), "\n", sep = "")
        source({str(f)!r})
        say("first", parallelCluster[1:2])
        say("spread", parallelCluster[c(1, 3)])
        say("lb", parallel::parLapply(parallelCluster[1:2], 1:2, function(i) i)[[2]])
        old <- parallelCluster
        try(parallel::clusterCall(parallelCluster[3], function() tools::pskill(Sys.getpid(), 9L)),
            silent = TRUE)
        parallelCluster <- suppressMessages(sshcluster_repair())
        say("old", old)
        say("kept", old[1:2])
        say("new", parallelCluster)
        sshcluster_stop()
        say("stopped", old[1:2])
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    said = {k: v.strip().split("~") for k, v in lines_of(out.stdout).items()}
    assert said["first"][0].startswith("sshcluster: 2 workers on 1 host, "), said["first"]
    assert [ln.split()[:4] for ln in said["first"][1:]] == [[h1.address, "2", "of", "2"]]
    assert said["spread"][0].startswith("sshcluster: 2 workers on 2 hosts, ")
    assert [ln.split()[:4] for ln in said["spread"][1:]] == [
        [h1.address, "1", "of", "2"], [h2.address, "1", "of", "2"]], said["spread"]
    assert said["lb"] == ["[1] 2"]
    assert said["old"] == ["sshcluster: a cluster of 4 workers of which 1 was stopped or "
                           "replaced; source() the file again (or use sshcluster_repair()'s)"]
    assert said["kept"][0].startswith("sshcluster: 2 workers on 1 host, ")
    assert said["new"][0].startswith("sshcluster: 4 workers on 2 hosts, ")
    assert said["stopped"][0].startswith("sshcluster: a cluster of 2 workers that was stopped")
    assert nothing_left(testbed, marker=tmp_path) == {}
