"""R users' everyday tools on the fast launch's cluster, on real test hosts.

What parallel, foreach, future, parallelly and progressr do when a user just uses
them: no warnings from the cluster's own waits (also under ``options(warn = 2)``),
progress updates through futures, registrations that follow a repair, two clusters
in one session, and the workers' output where the user asked for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sshcluster.bootstrap import RenderOptions
from sshcluster.testing import Testbed
from sshcluster.testing.cluster import write_cluster
from sshcluster.testing.fixtures import run_r_in_test

pytestmark = pytest.mark.testbed

#: What a launch may leave on a host: R, its shells, what workers started (a sleep).
LEFTOVER = "R|sh|sleep"

#: The launch modes whose workers run parallel's worker loop in a different way.
MODES = {
    "tunnel": RenderOptions(tunnel="reverse"),
    "direct": RenderOptions(tunnel="none"),
    "fresh": RenderOptions(fork=False),
}


def _lines(stdout: str) -> dict[str, str]:
    """``key value...`` lines of R's output, by key."""
    return dict((line + " ").split(" ", 1) for line in stdout.splitlines() if line)


@pytest.fixture
def clean(testbed: Testbed) -> Iterator[Testbed]:
    """The session's test hosts, checked to be free of R before and after the test."""
    assert testbed.leftovers(LEFTOVER, wait=10) == {}, "an earlier test left processes behind"
    yield testbed
    assert testbed.leftovers(LEFTOVER, wait=5) == {}


def test_waits_warn_nothing_with_parallelly_loaded(clean: Testbed, tmp_path: Path) -> None:
    """Waits of several seconds in foreach, parLapplyLB and clusterApplyLB, with
    parallelly loaded and ``options(warn = 2)``: no warning, every result, and the
    cluster in step for the next call."""
    f = write_cluster(clean, tmp_path, options=RenderOptions(register=("doparallel",)))
    out = run_r_in_test(f"""
        source({str(f)!r})
        suppressPackageStartupMessages({{ library(parallelly); library(foreach) }})
        options(warn = 2)
        warned <- 0L
        count <- function(expr) withCallingHandlers(expr, warning = function(w) {{
          warned <<- warned + 1L
          cat("warning", conditionMessage(w), "\\n")
        }})
        slow <- function(i) {{ Sys.sleep(if (i %% 8 == 0) 5 else 0.1); i }}
        cl <- parallelCluster
        cat("foreach", count(foreach(i = 1:16, .combine = c) %dopar% slow(i)), "\\n")
        cat("lb", unlist(count(parallel::parLapplyLB(cl, 1:16, slow))), "\\n")
        cat("apply", unlist(count(parallel::clusterApplyLB(cl, 1:16, slow))), "\\n")
        cat("after", unlist(parallel::clusterEvalQ(cl, 1L)), "\\n")
        cat("warned", warned, "\\n")
        sshcluster_stop()
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = _lines(out.stdout)
    assert "warning" not in lines, out.stdout
    assert lines["warned"].split() == ["0"]
    every = [str(i) for i in range(1, 17)]
    for key in ("foreach", "lb", "apply"):
        assert lines[key].split() == every, key
    assert lines["after"].split() == ["1"] * 8


@pytest.mark.parametrize("mode", list(MODES))
def test_progressr_gets_every_update_through_futures(clean: Testbed, tmp_path: Path,
                                                     mode: str) -> None:
    """progressr's updates are immediate conditions that future relays from the
    worker as they happen: a handler that counts them gets all 20, as on a local
    cluster; and an immediate condition of the user's own arrives too."""
    f = write_cluster(clean, tmp_path, options=MODES[mode])
    out = run_r_in_test(f"""
        source({str(f)!r})
        suppressPackageStartupMessages(library(progressr))
        options(progressr.enable = TRUE)  # (off where R is not interactive)
        count <- function(cl) {{
          future::plan(future::cluster, workers = cl)
          n <- 0L
          h <- make_progression_handler("count", reporter = list(
            update = function(config, state, progression, ...) n <<- n + 1L))
          with_progress({{
            p <- progressor(20)
            future.apply::future_lapply(1:20, function(i) {{ p(); i }})
          }}, handlers = h)
          n
        }}
        local_cl <- parallel::makeCluster(2)
        cat("local", count(local_cl), "\\n")
        parallel::stopCluster(local_cl)
        cat("ours", count(parallelCluster), "\\n")
        mine <- 0L
        withCallingHandlers(future::value(future::future({{
          signalCondition(structure(class = c("immediateCondition", "condition"),
                                    list(message = "now", call = NULL)))
          1L
        }})), immediateCondition = function(c) mine <<- mine + 1L)
        cat("immediate", mine, "\\n")
        future::plan(future::sequential)
        sshcluster_stop()
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = _lines(out.stdout)
    assert lines["local"].split() == ["20"]
    assert lines["ours"].split() == ["20"]
    assert lines["immediate"].split() == ["1"]


def test_registrations_follow_a_repair_and_a_new_source(clean: Testbed, tmp_path: Path
                                                        ) -> None:
    """foreach (doParallel) and future registered by the user with parallelCluster go
    on working after a repair replaced a worker, and after the file is sourced again;
    a cluster object kept from before the repair says to register again. (Direct: through
    the tunnel, a worker relaunched on a host whose session lives on cannot forward
    the port again, and the repair goes on without it.)"""
    f = write_cluster(clean, tmp_path, options=RenderOptions(tunnel="none"))
    out = run_r_in_test(f"""
        source({str(f)!r})
        suppressPackageStartupMessages({{ library(foreach); library(doParallel) }})
        registerDoParallel(parallelCluster)
        future::plan(future::cluster, workers = parallelCluster)
        old <- parallelCluster
        cat("before", foreach(i = 1:8, .combine = c) %dopar% i, "\\n")
        try(parallel::clusterCall(parallelCluster[1], function() tools::pskill(Sys.getpid(), 9L)),
            silent = TRUE)
        parallelCluster <- sshcluster_repair()
        cat("replaced", !identical(old[[1]]$con, parallelCluster[[1]]$con), "\\n")
        cat("foreach", foreach(i = 1:16, .combine = c) %dopar% i, "\\n")
        cat("future", unlist(future.apply::future_lapply(1:16, function(i) i)), "\\n")
        e <- tryCatch(parallel::clusterEvalQ(old, 1), error = conditionMessage)
        cat("old", grepl("sshcluster_repair", e), grepl("register it again", e), "\\n")
        source({str(f)!r})
        cat("foreach2", foreach(i = 1:16, .combine = c) %dopar% i, "\\n")
        cat("future2", unlist(future.apply::future_lapply(1:16, function(i) i)), "\\n")
        future::plan(future::sequential)
        sshcluster_stop()
        e <- tryCatch(parallel::clusterEvalQ(old, 1), error = conditionMessage)
        cat("stopped", grepl("source[(][)] the file again", e), grepl("register", e), "\\n")
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "sshcluster_repair: 8 of 8 workers running" in out.stderr
    lines = _lines(out.stdout)
    every = [str(i) for i in range(1, 17)]
    assert lines["before"].split() == every[:8]
    assert lines["replaced"].split() == ["TRUE"]
    for key in ("foreach", "future", "foreach2", "future2"):
        assert lines[key].split() == every, key
    assert lines["old"].split() == ["TRUE", "TRUE"]
    assert lines["stopped"].split() == ["TRUE", "TRUE"]


def test_two_files_two_clusters(clean: Testbed, tmp_path: Path) -> None:
    """Two files with different hosts in one session: both clusters compute; each stop
    stops only its own; sourcing one file again replaces only its own cluster; and
    nothing says it stops an earlier cluster when that one was stopped already."""
    a = write_cluster(clean, tmp_path, "a.R", hosts=clean.hosts[:2])
    b = write_cluster(clean, tmp_path, "b.R", hosts=clean.hosts[2:])
    names = {h.hostname for h in clean.hosts}
    out = run_r_in_test(f"""
        node <- function(cl) unique(unlist(parallel::clusterEvalQ(cl, Sys.info()[["nodename"]])))
        works <- function(cl) !inherits(try(parallel::clusterEvalQ(cl, 1), silent = TRUE),
                                        "try-error")
        message("STEP source-a")
        source({str(a)!r}); A <- parallelCluster; stop_a <- sshcluster_stop
        message("STEP source-b")
        source({str(b)!r}); B <- parallelCluster; stop_b <- sshcluster_stop
        cat("a", sort(node(A)), "\\n")
        cat("b", sort(node(B)), "\\n")
        stop_a()
        cat("after_stop_a", works(A), works(B), exists("parallelCluster"), "\\n")
        message("STEP source-a-again")
        source({str(a)!r}); A <- parallelCluster; stop_a <- sshcluster_stop
        message("STEP source-b-again")
        source({str(b)!r})
        cat("after_b_again", works(A), works(B), works(parallelCluster), "\\n")
        sshcluster_stop()
        cat("after_stop_b", works(A), exists("parallelCluster"), "\\n")
        stop_a()
        cat("after_all", works(A), "\\n")
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = _lines(out.stdout)
    assert set(lines["a"].split()) | set(lines["b"].split()) == names
    assert not set(lines["a"].split()) & set(lines["b"].split())
    assert lines["after_stop_a"].split() == ["FALSE", "TRUE", "TRUE"]
    assert lines["after_b_again"].split() == ["TRUE", "FALSE", "TRUE"]
    assert lines["after_stop_b"].split() == ["TRUE", "FALSE"]
    assert lines["after_all"].split() == ["FALSE"]
    # Only sourcing b again stops a cluster (b's own, still running).
    said = [line for line in out.stderr.splitlines() if "STEP" in line or "stopping" in line]
    assert said == ["STEP source-a", "STEP source-b", "STEP source-a-again",
                    "STEP source-b-again",
                    "sshcluster: stopping the cluster that an earlier source() of this "
                    "file started"], out.stderr


def test_worker_output_reaches_the_console_after_its_host(clean: Testbed, tmp_path: Path
                                                          ) -> None:
    """worker_output: console prints what the workers print (output, messages) on the
    primary's stdout, each line after its host; a task's error in parallel's own call
    names the worker and its host, and keeps its class."""
    f = write_cluster(clean, tmp_path, options=RenderOptions(worker_output="console"))
    out = run_r_in_test(f"""
        source({str(f)!r})
        cl <- parallelCluster
        invisible(parallel::clusterEvalQ(cl, {{
          cat(sprintf("said %s\\n", Sys.info()[["nodename"]]))
          message("noted ", Sys.info()[["nodename"]])
        }}))
        e <- tryCatch(parallel::parLapply(cl, 1:8, function(i) if (i == 3) stop("boom") else i),
                      error = identity)
        cat("CLASS", class(e), "\\n")
        cat("MESSAGE", conditionMessage(e), "\\n")
        sshcluster_stop()
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    for h in clean.hosts:
        assert out.stdout.count(f"[{h.address}] said {h.hostname}\n") == 2, out.stdout
        assert out.stdout.count(f"[{h.address}] noted {h.hostname}\n") == 2, out.stdout
    lines = _lines(out.stdout)
    assert lines["CLASS"].split() == ["simpleError", "error", "condition"]
    assert f"boom [worker 1 on {clean.hosts[1].address}]" in lines["MESSAGE"]


def test_worker_output_to_a_file_per_host(clean: Testbed, tmp_path: Path) -> None:
    """worker_output: DIR writes each host's workers' output to DIR/NODENAME.log on
    that host (the test hosts share this machine's files)."""
    where = tmp_path / "out"
    f = write_cluster(clean, tmp_path, worker_output=str(where),
                   options=RenderOptions(fork=False))
    out = run_r_in_test(f"""
        source({str(f)!r})
        invisible(parallel::clusterEvalQ(parallelCluster, {{
          cat(sprintf("said %s\\n", Sys.info()[["nodename"]]))
          message("noted")
        }}))
        sshcluster_stop()
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "said" not in out.stdout
    for h in clean.hosts:
        text = (where / f"{h.hostname}.log").read_text()
        assert text.count(f"said {h.hostname}\n") == 2, text
        assert text.count("noted\n") == 2, text


def test_worker_output_that_is_not_utf8_loses_no_line(clean: Testbed, tmp_path: Path) -> None:
    """A worker prints bytes that are not UTF-8 (Latin-1 text, say) in a UTF-8 session:
    that line and every other line read with it are printed (they were all lost, as
    one NA, and with them the host's reports of workers that ended)."""
    f = write_cluster(clean, tmp_path, options=RenderOptions(worker_output="console"))
    out = run_r_in_test(f"""
        source({str(f)!r})
        invisible(parallel::clusterEvalQ(parallelCluster, {{
          cat("before\\n")
          cat(rawToChar(as.raw(c(0x63, 0x61, 0x66, 0xe9, 0x0a))))
          cat("after\\n")
        }}))
        Sys.sleep(1)
        invisible(parallel::clusterEvalQ(parallelCluster, 1))
        sshcluster_stop()
    """, tmp_path, env={"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"})
    assert out.returncode == 0, out.stderr
    raw = out.stdout
    for h in clean.hosts:
        assert raw.count(f"[{h.address}] before\n") == 2, raw
        assert raw.count(f"[{h.address}] after\n") == 2, raw
        assert raw.count(f"[{h.address}] caf\\xe9\n") == 2, raw
    assert "] NA\n" not in raw


@pytest.mark.parametrize("plant", ["a directory anyone may write", "a link in its place",
                                   "a file of another user's"])
def test_worker_output_never_goes_where_another_user_chose(clean: Testbed, tmp_path: Path,
                                                           plant: str) -> None:
    """worker_output: DIR where another user could have chosen where the output goes (a
    directory anyone may write, a link or another user's file in the log's place): the
    launch fails on that host, naming the file and why, and writes nothing through."""
    where = tmp_path / "out"
    where.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("mine\n")
    if plant == "a directory anyone may write":
        where.chmod(0o777)
        why = "others may write that directory"
    elif plant == "a link in its place":
        for h in clean.hosts:
            (where / f"{h.hostname}.log").symlink_to(victim)
        why = "is a symbolic link"
    else:
        for h in clean.hosts:
            (where / f"{h.hostname}.log").write_text("")
            os.chown(where / f"{h.hostname}.log", 65534, 65534)
        why = "belongs to nobody"
    f = write_cluster(clean, tmp_path, worker_output=str(where))
    out = run_r_in_test(f"""
        r <- tryCatch(source({str(f)!r}), error = function(e) conditionMessage(e))
        cat("RESULT", if (is.character(r)) "failed" else "started", "\\n")
        cat(if (is.character(r)) r, "\\n")
    """, tmp_path)
    assert "RESULT failed" in out.stdout, out.stdout + out.stderr
    said = out.stdout + out.stderr
    assert "will not write the workers' output" in said and why in said, said
    assert victim.read_text() == "mine\n"
