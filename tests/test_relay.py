"""The hosts' relays, on real sshd test hosts and real R: a host's forked workers share
one connection to the primary through that host's R; a value sent to several of them in
one call crosses to each host once (counted on the testbed's bridge, what left the
primary); a primary on R 4.2 holds more workers than its 128 connections would; future's
polling sees an answer that arrived while another worker's was awaited; a host lost
among many is named; ``relay: false`` gives each worker its own connection again.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from sshcluster.testing import Testbed
from sshcluster.testing.cluster import interactive_r, write_cluster
from sshcluster.testing.fixtures import R_TIMEOUT, MakeTestbed, run_r_in_test
from sshcluster.testing.hosts import host_dir
from sshcluster.testing.leftovers import nothing_left

MB = 1 << 20


def bridge_tx(tb: Testbed) -> int:
    """The bytes the primary has sent into the testbed's bridge: to its hosts."""
    return int(Path(f"/sys/class/net/{tb.name}-br/statistics/tx_bytes").read_text())


def lines_of(stdout: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in stdout.splitlines() if " " in line)


def first_in_bashrc(tb: Testbed, line: str) -> None:
    """Put ``line`` first in the (first) test host's ~/.bashrc, which its ssh sessions'
    shell reads (written in place: the host sees it through a bind mount)."""
    bashrc = host_dir(tb.workdir, tb.hosts[0]) / "bashrc"
    with bashrc.open("r+") as rc:
        rest = rc.read()
        rc.seek(0)
        rc.write(f"{line}\n{rest}")


#: R code that keeps every message of a host's workers on its relay's connection (no
#: lanes), as a primary whose R connections would not hold a lane per worker does.
RELAY_ONLY = "options(sshcluster.lanes = FALSE)"


@pytest.mark.parametrize("mode", ["lanes", "relay", "no-relay"])
def test_a_broadcast_crosses_to_each_host_once(testbed: Testbed, tmp_path: Path,
                                               mode: str) -> None:
    """4 hosts x 3 forked workers: a 16 MB clusterExport() sends about 4 copies (at most
    1.3 x 4) through the hosts' relays, and so does a parallel::clusterCall() with that
    value (12 before, where the call was made by its full name), with a lane per worker
    (12 workers' connections, and 4 relays') as without (4 connections in all); with
    relay: false, 12 connections and 12 copies. Every worker has the value, parallel's
    calls, foreach and a load-balanced apply give the same answers each way, and stop
    leaves nothing."""
    f = write_cluster(testbed, tmp_path, ncore=3,
                      **({"relay": False} if mode == "no-relay" else {}))
    with interactive_r(f"""
        {RELAY_ONLY if mode == "relay" else ""}
        source({str(f)!r})
        cons <- vapply(parallelCluster, function(n) as.integer(n$con), 1L)
        cat("links", length(unique(cons)), "\\n")
        cat("bulk", length(environment(sshcluster_stop)$S$bulk), "\\n")
        x <- as.raw(sample(0:255, 16 * 2^20, replace = TRUE))
        cat("go\\n")
        invisible(readLines(file("stdin"), n = 1))
        parallel::clusterExport(parallelCluster, "x")
        cat("sent\\n")
        invisible(readLines(file("stdin"), n = 1))
        cat("called", unique(unlist(parallel::clusterCall(parallelCluster, length, x))), "\\n")
        cat("has", unique(unlist(parallel::clusterCall(parallelCluster,
          function(s) sum(as.integer(x)) == s, sum(as.integer(x))))), "\\n")
        cat("pids", length(unique(unlist(parallel::clusterEvalQ(parallelCluster,
                                                                Sys.getpid())))), "\\n")
        cat("lb", unlist(parallel::clusterApplyLB(parallelCluster, 1:30, function(i) i)), "\\n")
        cat("static", unlist(parallel::clusterApply(parallelCluster, rep(7, 24),
                                                    function(i) i + 1)), "\\n")
        library(foreach)
        doParallel::registerDoParallel(parallelCluster)
        cat("foreach", foreach(i = 1:40, .combine = `+`) %dopar% i, "\\n")
        sshcluster_stop()
        cat("end ok\\n")
    """, tmp_path, "broadcast.R") as proc:
        assert proc.stdout is not None and proc.stdin is not None
        links = proc.stdout.readline().split()
        bulk = proc.stdout.readline().split()
        assert proc.stdout.readline().strip() == "go", proc.stderr.read() if proc.stderr else ""
        before = bridge_tx(testbed)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "sent"
        sent = bridge_tx(testbed) - before
        before = bridge_tx(testbed)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().split() == ["called", str(16 * MB)]
        called = bridge_tx(testbed) - before
        out, err = proc.communicate(timeout=R_TIMEOUT)
        assert proc.returncode == 0, err
    lines = lines_of(out)
    assert links == ["links", "4" if mode == "relay" else "12"]
    assert bulk == ["bulk", "4" if mode == "lanes" else "0"]
    copies, called_copies = sent / (16 * MB), called / (16 * MB)
    if mode != "no-relay":
        assert 4 <= copies <= 4 * 1.3, copies
        # (the same through parallel::clusterCall() called by its full name)
        assert 4 <= called_copies <= 4 * 1.3, called_copies
    else:
        assert copies >= 12 and called_copies >= 12, (copies, called_copies)
    assert lines["has"].split() == ["TRUE"]
    assert lines["pids"].split() == ["12"]
    assert lines["lb"].split() == [str(i) for i in range(1, 31)]
    assert lines["static"].split() == ["8"] * 24
    assert lines["foreach"].split() == [str(40 * 41 // 2)]
    assert lines["end"].split() == ["ok"]
    assert nothing_left(testbed, marker=tmp_path) == {}


def test_future_sees_an_answer_that_came_while_another_was_awaited(
        testbed: Testbed, tmp_path: Path) -> None:
    """Two futures on one host's two workers: the second answers while value() of the
    first waits on the host's shared connection, so its answer is held on the primary;
    polling resolved() on the second still ends (the relay is asked for an echo, so its
    connection has something to read). It would poll forever otherwise. (Every message
    on the relay's connection, as where lanes would not fit.)"""
    f = write_cluster(testbed, tmp_path, hosts=testbed.hosts[:1], ncore=2)
    out = run_r_in_test(f"""
        {RELAY_ONLY}
        source({str(f)!r})
        library(future)
        plan(cluster, workers = parallelCluster)
        f1 <- future({{ Sys.sleep(1); "one" }})
        f2 <- future("two")
        cat("first", value(f1), "\\n")
        polls <- 0
        while (!resolved(f2) && polls < 500) {{ polls <- polls + 1; Sys.sleep(0.01) }}
        cat("resolved", resolved(f2), "\\n")
        cat("second", value(f2), "\\n")
        sshcluster_stop()
    """, tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = lines_of(out.stdout)
    assert lines["first"].split() == ["one"]
    assert lines["resolved"].split() == ["TRUE"]
    assert lines["second"].split() == ["two"]
    assert nothing_left(testbed, marker=tmp_path) == {}


@pytest.mark.parametrize("mode", ["lanes", "relay"])
def test_future_resolved_does_not_wait_for_its_worker_behind_a_relay(
        testbed: Testbed, tmp_path: Path, mode: str) -> None:
    """Two futures on one host's two workers, the second's answer there first: resolved()
    on the first says FALSE at once (it read the second's answer off the host's shared
    connection, and would then wait for its own worker's, and say TRUE 3 s later), and a
    third future, which needs a free worker, goes to the second's (future asks resolved()
    of each running future to find one; it took the first's, after waiting for it).
    With future's own tests' negative timeout, resolved() waits for the answer. Each
    way: every message on the relay's connection (as where lanes would not fit), where
    the bug was; and with lanes, where each worker answers on its own connection, so
    that the same must hold as with relay: false."""
    f = write_cluster(testbed, tmp_path, hosts=testbed.hosts[:1], ncore=2)
    out = run_r_in_test(f"""
        {RELAY_ONLY if mode == "relay" else ""}
        source({str(f)!r})
        library(future)
        plan(cluster, workers = parallelCluster)
        f1 <- future({{ Sys.sleep(4); Sys.getpid() }})
        f2 <- future(Sys.getpid())
        Sys.sleep(1)
        cat("first", resolved(f1), "\n")
        f3 <- future(Sys.getpid())
        cat("still", resolved(f1), "\n")
        cat("third", if (value(f3) == value(f2)) "second's" else "other", "\n")
        options(future.resolved.timeout = -1)  # (future's tests' way to wait for it)
        cat("waited", suppressWarnings(resolved(f1)), "\n")
        options(future.resolved.timeout = NULL)
        cat("values", value(f1) != value(f2), "\n")
        sshcluster_stop()
    """, tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = lines_of(out.stdout)
    assert lines["first"].split() == ["FALSE"]
    assert lines["still"].split() == ["FALSE"]
    assert lines["third"].strip() == "second's"
    assert lines["waited"].split() == ["TRUE"]
    assert lines["values"].split() == ["TRUE"]
    assert nothing_left(testbed, marker=tmp_path) == {}


@pytest.mark.slow
def test_160_workers_on_r_4_2_and_a_lost_host_among_them(testbed: Testbed,
                                                         tmp_path: Path) -> None:
    """4 hosts x 40 forked workers need 160 connections one each, past R 4.2's 128: behind
    the relays the primary holds 4. parLapply() reaches every worker; when one host's
    relay is killed, the next call names that host; stop leaves nothing."""
    f = write_cluster(testbed, tmp_path, ncore=40)
    with interactive_r(f"""
        source({str(f)!r})
        cat("version", as.character(getRversion()), "\\n")
        cat("workers", length(parallelCluster), "\\n")
        pids <- unlist(parallel::parLapply(parallelCluster, 1:320, function(i) Sys.getpid()))
        cat("used", length(unique(pids)), "\\n")
        cat("relay", parallel::clusterCall(parallelCluster[81], function()
          as.integer(strsplit(readLines("/proc/self/stat"), " ")[[1]][4]))[[1]], "\\n")
        invisible(readLines(file("stdin"), n = 1))
        r <- tryCatch(parallel::parLapply(parallelCluster, 1:160, function(i) i),
                      error = function(e) conditionMessage(e))
        cat("lost", gsub("\\n", " ", r), "\\n")
        sshcluster_stop()
        cat("end ok\\n")
    """, tmp_path, "many.R") as proc:
        assert proc.stdout is not None and proc.stdin is not None
        head = [proc.stdout.readline() for _ in range(4)]
        lines = lines_of("".join(head))
        assert lines.get("relay"), head
        os.kill(int(lines["relay"]), signal.SIGKILL)  # (the third host's relay)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=R_TIMEOUT)
        assert proc.returncode == 0, err
    lines.update(lines_of(out))
    assert lines["version"].startswith("4.2")
    assert lines["workers"].split() == ["160"]
    assert lines["used"].split() == ["160"]
    third = testbed.hosts[2].address
    assert third in lines["lost"] and "sshcluster_repair()" in lines["lost"], lines["lost"]
    assert not any(h.address in lines["lost"] for h in testbed.hosts if h.address != third)
    assert lines["end"].split() == ["ok"]
    assert nothing_left(testbed, marker=tmp_path) == {}


@pytest.mark.parametrize("mode", ["lanes", "relay"])
def test_an_export_interrupted_mid_message_loses_its_host_not_the_session(
        testbed: Testbed, tmp_path: Path, mode: str) -> None:
    """Ctrl-C (SIGINT) while a 300 MB clusterExport is on its way to the first host (once
    50 MB have left; the primary's link capped, so that the message takes seconds): that
    host's connection holds part of a message, and everything after it would be read as
    the rest of it. A call to that host's other worker names the host as lost (it waited
    for good before: its frame went into the cut-off message), and sshcluster_repair()
    brings back every worker. Each way: with lanes (the big message goes through the
    relay, the next call on the worker's lane) and every message on the relay's."""
    f = write_cluster(testbed, tmp_path, hosts=testbed.hosts[:2], ncore=2)
    bridge = f"{testbed.name}-br"
    tx = Path(f"/sys/class/net/{bridge}/statistics/tx_bytes")
    subprocess.run(["tc", "qdisc", "add", "dev", bridge, "root", "tbf", "rate", "800mbit",
                    "burst", "128kb", "latency", "50ms"], check=True)
    try:
        out = run_r_in_test(f"""
            {RELAY_ONLY if mode == "relay" else ""}
            source({str(f)!r})
            big <- runif(37.5e6)  # (300 MB: about 3 s a host at the cap)
            # (the interrupt once 50 MB of it have left for the first host)
            system(sprintf(paste(
                "(tx=%s; b=$(cat $tx); i=0; while [ $(($(cat $tx) - b)) -lt 50000000 ]",
                "&& [ $i -lt 1200 ]; do sleep 0.05; i=$((i + 1)); done; kill -INT %d)"),
              {str(tx)!r}, Sys.getpid()), wait = FALSE)
            r <- tryCatch({{ parallel::clusterExport(parallelCluster, "big"); "whole" }},
                          interrupt = function(e) "interrupted")
            cat("export", r, "\n")
            # (the host's second worker: nothing was sent to it yet, no call is waiting)
            r <- tryCatch(parallel::clusterEvalQ(parallelCluster[2], length(big)),
                          error = function(e) conditionMessage(e))
            cat("next", gsub("\n", " ", r), "\n")
            parallelCluster <- sshcluster_repair()
            small <- 1:10
            parallel::clusterExport(parallelCluster, "small")
            cat("after", unlist(parallel::clusterEvalQ(parallelCluster, sum(small))), "\n")
            sshcluster_stop()
        """, tmp_path, timeout=120)
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", bridge, "root"], check=False)
    assert out.returncode == 0, out.stderr
    lines = lines_of(out.stdout)
    assert lines["export"].split() == ["interrupted"]
    first = testbed.hosts[0].address
    assert f"lost {first}" in lines["next"] and "sshcluster_repair()" in lines["next"], \
        lines["next"]
    assert lines["after"].split() == ["55"] * 4
    assert nothing_left(testbed, marker=tmp_path) == {}


def test_big_messages_both_ways_at_once(testbed: Testbed, tmp_path: Path) -> None:
    """Each host's first worker answers a tiny call at once with 60 MB it holds, while
    the primary writes a 60 MB message for the host's second worker on the same
    connection: the host writes to the primary while the primary writes to the host.
    Neither waits on the other for good (the relay reads and hands on what the primary
    writes without ever waiting for a worker; with relays that forwarded answers and a
    primary that only wrote, both sides blocked for good, shown by this test). (Every
    message on the relay's connection: with lanes, the answers take the workers' own.)"""
    f = write_cluster(testbed, tmp_path, hosts=testbed.hosts[:2], ncore=2)
    out = run_r_in_test(f"""
        {RELAY_ONLY}
        source({str(f)!r})
        invisible(parallel::clusterEvalQ(parallelCluster,
                                         ans <- as.raw(seq_len(60 * 2^20) %% 251)))
        big <- as.raw(seq_len(60 * 2^20) %% 256)
        back <- parallel::clusterApply(parallelCluster, list(0, big, 0, big),
          function(x) if (identical(x, 0)) ans else length(x))
        cat("sizes", vapply(back, length, 1), "\n")
        cat("same", identical(back[[1]], as.raw(seq_len(60 * 2^20) %% 251)), back[[2]], "\n")
        cat("again", unlist(parallel::clusterEvalQ(parallelCluster, 1L)), "\n")
        sshcluster_stop()
    """, tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = lines_of(out.stdout)
    n = str(60 * 2**20)
    assert lines["sizes"].split() == [n, "1", n, "1"]
    assert lines["same"].split() == ["TRUE", n]
    assert lines["again"].split() == ["1"] * 4
    assert nothing_left(testbed, marker=tmp_path) == {}


@pytest.mark.slow
def test_a_host_of_101_workers_has_a_relay_and_a_worker_alone(testbed: Testbed,
                                                             tmp_path: Path) -> None:
    """A relay carries at most 100 workers: a host of 101 gets a relay for 100 of them
    and a connection for the last one, in two sessions that the launch tells apart
    (each relay proves its own key); all 101 work and stop leaves nothing."""
    f = write_cluster(testbed, tmp_path, hosts=testbed.hosts[:1], ncore=101)
    out = run_r_in_test(f"""
        source({str(f)!r})
        cons <- vapply(parallelCluster, function(n) as.integer(n$con), 1L)
        cat("links", length(unique(cons)), "\\n")
        cat("used", length(unique(unlist(parallel::parLapply(parallelCluster, 1:404,
          function(i) Sys.getpid())))), "\\n")
        sshcluster_stop()
    """, tmp_path, timeout=180)
    assert out.returncode == 0, out.stderr
    lines = lines_of(out.stdout)
    assert lines["links"].split() == ["2"]
    assert lines["used"].split() == ["101"]
    assert nothing_left(testbed, marker=tmp_path) == {}


def test_a_worker_that_dies_holding_the_hosts_lock_loses_the_host(
        testbed: Testbed, tmp_path: Path) -> None:
    """A host's workers write their answers under one lock: a worker killed while it
    holds it would leave the others unable to answer for good. The relay notices that
    the lock cannot be taken after a worker ended, and ends the host: the next call
    names it within seconds instead of waiting for ever, and a repair brings it back.
    (Every message on the relay's connection: with lanes, the workers hold no lock.)"""
    f = write_cluster(testbed, tmp_path, hosts=testbed.hosts[:1], ncore=2)
    out = run_r_in_test(f"""
        {RELAY_ONLY}
        source({str(f)!r})
        # worker 1 takes the lock (the one fifo it holds) and dies with it
        invisible(tryCatch(parallel::clusterEvalQ(parallelCluster[1], {{
          for (i in getAllConnections()) if (summary(getConnection(i))$class == "fifo") {{
            invisible(readBin(getConnection(i), "raw", 1L)); break }}
          tools::pskill(Sys.getpid(), tools::SIGKILL)
        }}), error = function(e) NULL))
        t0 <- Sys.time()
        # (one worker's call, as future makes it: parallel's own calls stop at once on
        # the lost worker 1, which they see busy)
        r <- tryCatch({{
          parallel:::sendCall(parallelCluster[[2]], identity, list("answer"))
          parallel:::recvResult(parallelCluster[[2]])
        }}, error = function(e) conditionMessage(e))
        cat("second", gsub("\\n", " ", unlist(r)), "\\n")
        cat("within", as.numeric(Sys.time() - t0, units = "secs") < 30, "\\n")
        cl <- sshcluster_repair()
        cat("repaired", unlist(parallel::clusterEvalQ(cl, 7L)), "\\n")
        sshcluster_stop()
    """, tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = lines_of(out.stdout)
    host = testbed.hosts[0].address
    # (with the relay's own words when ssh has ended by then, else "its relay closed
    # the connection")
    assert f"sshcluster: lost {host}: " in lines["second"], lines["second"]
    assert lines["within"].split() == ["TRUE"]
    assert lines["repaired"].split() == ["7", "7"]
    assert nothing_left(testbed, marker=tmp_path) == {}


def test_lanes_a_worker_or_a_relay_lost(testbed: Testbed, tmp_path: Path) -> None:
    """With lanes (each worker's own connection for its calls, the host's relay for big
    messages): a killed worker is named and its host's other worker goes on answering on
    its lane; the repair starts it again (alone, on a lane: its host's relay goes on
    serving the other one), and a big export then reaches every worker. On the other
    host, whose two workers share a relay, big broadcasts and small calls arrive in the
    order sent (a big value, a small one, a big one; a clusterApply whose big arguments
    repeat; parLapply's big chunks, which take the lanes). A killed relay: the next big
    message names its host, and the repair brings the host back."""
    f = write_cluster(testbed, tmp_path, hosts=testbed.hosts[:2], ncore=2)
    out = run_r_in_test(f"""
        source({str(f)!r})
        cl <- parallelCluster
        S <- environment(sshcluster_stop)$S
        cat("lanes", S$lanes, length(S$bulk), length(unique(vapply(cl, function(n)
          as.integer(n$con), 1L))), "\\n")
        ppid <- function() as.integer(strsplit(readLines("/proc/self/stat"), " ")[[1]][4])
        invisible(tryCatch(parallel::clusterEvalQ(cl[1],
          tools::pskill(Sys.getpid(), tools::SIGKILL)), error = function(e) NULL))
        cat("other", unlist(parallel::clusterEvalQ(cl[2], 2L)), "\\n")
        r <- tryCatch(parallel::clusterEvalQ(cl[1], 1L), error = function(e) conditionMessage(e))
        cat("named", gsub("\\n", " ", r), "\\n")
        cl <- sshcluster_repair()
        big <- as.raw(seq_len(4 * 2^20) %% 253)
        parallel::clusterExport(cl, "big")
        cat("export", unlist(parallel::clusterEvalQ(cl, sum(as.integer(big)))) ==
          sum(as.integer(big)), "\\n")
        one <- runif(2e5)
        two <- one[1:1e5]
        cat("order", unlist(parallel::clusterCall(cl[3:4], function(x) length(x), one)),
          unlist(parallel::clusterCall(cl[3:4], function(x) x, 5L)),
          unlist(parallel::clusterCall(cl[3:4], function(x) sum(x), two)) == sum(two), "\\n")
        # (what goes through a relay: each frame's slot and length, counted here)
        at <- environment(get("lane_send", envir = environment(sshcluster_stop)))
        bulk_to <- get("bulk_to", envir = at)
        frames <- character()
        assign("bulk_to", function(S, via, node, head, m = raw(0)) {{
          frames <<- c(frames, paste0(node$rank, if (length(m)) "+" else "-"))
          bulk_to(S, via, node, head, m)
        }}, envir = at)
        args <- list(one, 1, two, two)
        cat("apply", unlist(parallel::clusterApply(cl, args, length)), "\\n")
        cat("relayed", frames, "\\n")
        frames <- character()
        chunks <- parallel::parLapply(cl, 1:8, function(i, v) sum(v) + i, v = one)
        cat("chunks", unlist(chunks) == sum(one) + 1:8, "\\n")
        pieces <- lapply(1:4, function(i) runif(2e4))  # (160 KB each, all different)
        cat("parts", unlist(parallel::parLapply(cl, pieces, length)), "\\n")
        cat("after", length(frames), "record", is.null(S$sent), "\\n")
        assign("bulk_to", bulk_to, envir = at)
        relay <- parallel::clusterCall(cl[3], ppid)[[1]]
        tools::pskill(relay, tools::SIGKILL)
        r <- tryCatch(parallel::clusterExport(cl, "big"), error = function(e) conditionMessage(e))
        cat("relay", gsub("\\n", " ", r), "\\n")
        cl <- sshcluster_repair()
        parallel::clusterExport(cl, "big")
        cat("again", length(S$bulk), unlist(parallel::clusterEvalQ(cl, length(big))), "\\n")
        sshcluster_stop()
        cat("left", length(S$bulk), "\\n")
    """, tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = lines_of(out.stdout)
    assert lines["lanes"].split() == ["TRUE", "2", "4"]
    assert lines["other"].split() == ["2"]
    first = testbed.hosts[0].address
    assert f"worker 1 on {first}" in lines["named"] and "sshcluster_repair()" in lines["named"], \
        lines["named"]
    assert lines["export"].split() == ["TRUE"] * 4
    assert lines["order"].split() == ["200000", "200000", "5", "5", "TRUE", "TRUE"]
    assert lines["apply"].split() == ["200000", "1", "100000", "100000"]
    # (only the repeated argument, on the host whose two workers share a relay: once
    # whole for worker 3, then its head again for worker 4)
    assert lines["relayed"].split() == ["3+", "4-"], lines["relayed"]
    assert lines["chunks"].split() == ["TRUE"] * 8
    assert lines["parts"].split() == ["20000"] * 4
    # (parLapply's chunks, all different, took the lanes; the broadcast's record is not
    # kept once a call has read its answers)
    assert lines["after"].split() == ["0", "record", "TRUE"], lines["after"]
    second = testbed.hosts[1].address
    # (the host, or one of its workers on it, whichever the primary notices first: the
    # relay's end takes its workers with it, and the call may read their lanes' end
    # before its write to the relay fails)
    assert (f"lost {second}" in lines["relay"] or f"on {second} " in lines["relay"]) and \
        "sshcluster_repair()" in lines["relay"] and first not in lines["relay"], lines["relay"]
    assert lines["again"].split() == ["2"] + [str(4 * 2**20)] * 4
    assert lines["left"].split() == ["0"]
    assert nothing_left(testbed, marker=tmp_path) == {}


@pytest.mark.parametrize("relay_files", [True, False], ids=["files", "stream"])
def test_lanes_a_big_message_waits_for_a_slow_relay(testbed: Testbed, tmp_path: Path,
                                                    relay_files: bool) -> None:
    """With lanes, a worker reads a big message's word on its lane at once, then waits on
    its relay's socket for the message itself (or, from relay.pl, for word of the file it
    is in), which the relay hands to the host's workers one by one. A relay held up for
    7 s (SIGSTOP, then SIGCONT: the host's R, or its relay.pl) only delays the call.
    (Before, the workers waited 5 s, their socket's timeout from the pairing, and then
    failed, and were named as lost.)"""
    f = write_cluster(testbed, tmp_path, hosts=testbed.hosts[:1], ncore=2)
    out = run_r_in_test(f"""
        {"" if relay_files else "options(sshcluster.relay_files = FALSE)"}
        source({str(f)!r})
        cl <- parallelCluster
        ppid <- function() as.integer(strsplit(readLines("/proc/self/stat"), " ")[[1]][4])
        cat("lanes", environment(sshcluster_stop)$S$lanes, "\\n")
        relay <- parallel::clusterCall(cl[1], ppid)[[1]]
        # (relay.pl: the host's R's child that is not one of its workers)
        if ({"TRUE" if relay_files else "FALSE"})
          relay <- as.integer(system(sprintf("pgrep -P %d -x perl", relay), intern = TRUE))
        cat("relays", length(relay), "\\n")
        x <- runif(3e4)  # (240 KB: through the relay)
        system(sprintf("(kill -STOP %d; sleep 7; kill -CONT %d)", relay, relay), wait = FALSE)
        Sys.sleep(1)
        t0 <- Sys.time()
        r <- tryCatch(parallel::clusterCall(cl, function(v) length(v), x),
                      error = function(e) conditionMessage(e))
        cat("got", gsub("\\n", " ", unlist(r)), "\\n")
        cat("waited", as.numeric(Sys.time() - t0, units = "secs") > 4, "\\n")
        cat("again", unlist(parallel::clusterEvalQ(cl, 1L)), "\\n")
        sshcluster_stop()
    """, tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = lines_of(out.stdout)
    assert lines["lanes"].split() == ["TRUE"]
    assert lines["relays"].split() == ["1"]
    assert lines["got"].split() == ["30000", "30000"], lines["got"]
    assert lines["waited"].split() == ["TRUE"]
    assert lines["again"].split() == ["1", "1"]
    assert nothing_left(testbed, marker=tmp_path) == {}


def test_lanes_big_messages_are_kept_in_a_file_on_the_host(make_testbed: MakeTestbed,
                                                           tmp_path: Path) -> None:
    """With lanes, the host's relay (relay.pl) keeps a big message once, in a file without
    a name that its workers read: in /dev/shm (here a tmpfs of 4 MB of the host's own)
    where it takes at most half the room left, else in the directory of R's temporary
    files (the session's own in TMPDIR, here a tmpfs of 48 MB); once its workers have
    read it, only the newest is kept. A message neither has
    room for is kept in relay.pl's memory and handed to each worker on its socket. Stop
    leaves nothing."""
    tb = make_testbed(1, private_dirs={"/dev/shm": "4m", "/srv/rtmp": "48m"})
    # (the host's shell gives its R that TMPDIR)
    first_in_bashrc(tb, "export TMPDIR=/srv/rtmp")
    f = write_cluster(tb, tmp_path, ncore=2)
    out = run_r_in_test(f"""
        source({str(f)!r})
        cl <- parallelCluster
        ppid <- function() as.integer(strsplit(readLines("/proc/self/stat"), " ")[[1]][4])
        relay <- parallel::clusterCall(cl[1], ppid)[[1]]
        perl <- as.integer(system(sprintf("pgrep -P %d -x perl", relay), intern = TRUE))
        cat("perl", length(perl), "\\n")
        # (the files relay.pl holds: no name, in /dev/shm or /tmp as the host sees them)
        kept <- function() {{
          links <- Sys.readlink(list.files(sprintf("/proc/%d/fd", perl), full.names = TRUE))
          # (in TMPDIR: in the session's own directory there, sshcluster-workers.*)
          sort(sub("(/sshcluster-workers[.][^/]+)?/#.*", "", grep(
            "^/(dev/shm|srv/rtmp(/sshcluster-workers[.][^/]+)?)/#[0-9]+ [(]deleted[)]$",
            links, value = TRUE)))
        }}
        sums <- function(name) unlist(parallel::clusterCall(cl, function(n)
          sum(as.numeric(get(n, envir = globalenv()))), name))
        a <- as.raw(seq_len(2e6) %% 251)
        parallel::clusterExport(cl, "a")
        cat("small", sums("a") == sum(as.numeric(a)), kept(), "\\n")
        b <- as.raw(seq_len(12e6) %% 241)
        parallel::clusterExport(cl, "b")
        cat("bigger", sums("b") == sum(as.numeric(b)), kept(), "\\n")
        huge <- as.raw(seq_len(30e6) %% 239)
        parallel::clusterExport(cl, "huge")
        cat("huge", sums("huge") == sum(as.numeric(huge)), length(kept()), "\\n")
        parallel::clusterExport(cl, "a")
        cat("after", sums("a") == sum(as.numeric(a)), kept(), "\\n")
        sshcluster_stop()
        Sys.sleep(1)
        cat("left", length(system(sprintf("ps -o pid= -p %d", perl), intern = TRUE)), "\\n")
    """, tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = lines_of(out.stdout)
    assert lines["perl"].split() == ["1"]
    assert lines["small"].split() == ["TRUE", "TRUE", "/dev/shm"]
    assert lines["bigger"].split() == ["TRUE", "TRUE", "/srv/rtmp"]
    assert lines["huge"].split() == ["TRUE", "TRUE", "0"]
    assert lines["after"].split() == ["TRUE", "TRUE", "/dev/shm"]
    assert lines["left"].split() == ["0"]
    assert nothing_left(tb, marker=tmp_path) == {}


def test_lanes_where_perl_cannot_run_the_relay(make_testbed: MakeTestbed,
                                               tmp_path: Path) -> None:
    """A host whose perl fails (here one that exits at once: first on its PATH): its R
    relays big messages itself, and each worker learns so from the first byte on its
    socket from the relay; a big export and a 1 MB call to both reach them whole."""
    tb = make_testbed(1)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "perl").write_text("#!/bin/sh\nexit 2\n")
    (fake / "perl").chmod(0o755)
    first_in_bashrc(tb, f'export PATH="{fake}:$PATH"')
    f = write_cluster(tb, tmp_path, ncore=2)
    out = run_r_in_test(f"""
        source({str(f)!r})
        cl <- parallelCluster
        cat("which", unlist(parallel::clusterEvalQ(cl, Sys.which("perl"))) ==
          {str(fake / "perl")!r}, "\\n")
        ppid <- function() as.integer(strsplit(readLines("/proc/self/stat"), " ")[[1]][4])
        relay <- parallel::clusterCall(cl[1], ppid)[[1]]
        kids <- suppressWarnings(system(sprintf("pgrep -P %d -x perl", relay), intern = TRUE))
        cat("perl", length(kids), "\\n")
        x <- as.raw(seq_len(20e6) %% 251)
        parallel::clusterExport(cl, "x")
        cat("export", unlist(parallel::clusterEvalQ(cl, sum(as.numeric(x)))) ==
          sum(as.numeric(x)), "\\n")
        y <- runif(131072)
        cat("call", unlist(parallel::clusterCall(cl, function(v) sum(v), y)) == sum(y), "\\n")
        sshcluster_stop()
    """, tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = lines_of(out.stdout)
    assert lines["which"].split() == ["TRUE", "TRUE"]
    assert lines["perl"].split() == ["0"]
    assert lines["export"].split() == ["TRUE", "TRUE"]
    assert lines["call"].split() == ["TRUE", "TRUE"]
    assert nothing_left(tb, marker=tmp_path) == {}
