"""The generated bootstrap, sourced in real R against real sshd test hosts.

Fast launch: a standard SOCKcluster that parallel, foreach/doParallel and future use as
they are; failures stop within seconds, name the host, show ssh's own words and leave no
R process on any host; the reverse tunnel works where the primary's port is blocked.
The classic launch still works. Every R run is bounded by a subprocess timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sshcluster
from sshcluster.bootstrap import (
    END_OF_SCRIPT,
    READ_SCRIPT,
    REMOTE_SCRIPT,
    WORKER_CODE,
    RenderOptions,
)
from sshcluster.protocol import PROOF_MAGIC
from sshcluster.testing import Testbed, TestHost, free_port
from sshcluster.testing.cluster import interactive_r, write_cluster
from sshcluster.testing.fixtures import R_TIMEOUT, run_r_in_test, skip_or_fail, squatter
from sshcluster.testing.hosts import host_dir
from sshcluster.testing.leftovers import nothing_left
from sshcluster.testing.netns import descendants, parent_pid, process_name

#: ssh sends the primary's locale, as Debian's ssh_config makes it (the test hosts' sshd
#: takes it, as Debian's does).
SEND_LOCALE = ("SendEnv=LANG LC_*",)


@pytest.fixture
def clean(testbed: Testbed, tmp_path: Path) -> Iterator[Testbed]:
    """The session's test hosts, checked to have nothing of a launch running before and
    after the test (on the hosts, and on the primary: R runs with its TMPDIR in the
    test's directory, see :func:`nothing_left`)."""
    assert nothing_left(testbed, wait=10) == {}, "an earlier test left processes behind"
    yield testbed
    assert nothing_left(testbed, marker=tmp_path, wait=5) == {}


# --------------------------------------------------------------------------- it works


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "fresh"])
def test_fast_launch_is_a_standard_cluster(clean: Testbed, tmp_path: Path, fork: bool
                                           ) -> None:
    """parallel's API, foreach/doParallel and future all work on parallelCluster."""
    tb = clean
    f = write_cluster(tb, tmp_path, options=RenderOptions(register=("future", "doparallel"),
                                                       fork=fork))
    out = run_r_in_test(f"""
        source({str(f)!r})
        cl <- parallelCluster
        cat("class", class(cl), "\\n")
        cat("n", length(cl), "\\n")
        cat("hosts", vapply(cl, `[[`, "", "host"), "\\n")
        cat("nodes", unlist(parallel::clusterEvalQ(cl, Sys.info()[["nodename"]])), "\\n")
        cat("sapply", parallel::parSapply(cl, 1:16, function(i) i^2), "\\n")
        big <- 7
        parallel::clusterExport(cl, "big")
        cat("export", unlist(parallel::parLapply(cl, 1:8, function(i) i + big)), "\\n")
        parallel::clusterSetRNGStream(cl, 42)
        a <- parallel::parSapply(cl, 1:8, function(i) runif(1))
        parallel::clusterSetRNGStream(cl, 42)
        b <- parallel::parSapply(cl, 1:8, function(i) runif(1))
        cat("rng", identical(a, b), length(unique(a)), "\\n")
        cat("lb", unlist(parallel::parLapplyLB(cl, 1:10, function(i) i * 2)), "\\n")
        suppressPackageStartupMessages(library(foreach))
        cat("foreach", foreach(i = 1:6, .combine = c) %dopar% Sys.info()[["nodename"]], "\\n")
        cat("future", future::value(future::future(Sys.info()[["nodename"]])), "\\n")
        # many futures at once: future must see one cluster, whose nodes it can tell apart
        cat("futures", unlist(future.apply::future_lapply(1:20, function(i) i * 3)), "\\n")
        cat("spread", length(unique(unlist(future.apply::future_lapply(1:16,
          function(i) {{ Sys.sleep(0.2); Sys.getpid() }})))), "\\n")
        sshcluster_stop()
        cat("stopped", exists("parallelCluster"), "\\n")
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    names = [h.hostname for h in tb.hosts]
    assert lines["class"].split() == ["sshcluster", "SOCKcluster", "cluster"]
    assert lines["n"].strip() == str(2 * len(tb.hosts))
    assert lines["hosts"].split() == [h.address for h in tb.hosts for _ in range(2)]
    # In spec order: each host's two workers next to each other, hosts in inventory order.
    assert lines["nodes"].split() == [n for n in names for _ in range(2)]
    assert lines["sapply"].split() == [str(i * i) for i in range(1, 17)]
    assert lines["export"].split() == [str(i + 7) for i in range(1, 9)]
    assert lines["rng"].split() == ["TRUE", "8"]
    assert lines["lb"].split() == [str(2 * i) for i in range(1, 11)]
    assert set(lines["foreach"].split()) <= set(names)
    assert lines["future"].strip() in names
    assert lines["futures"].split() == [str(3 * i) for i in range(1, 21)]
    assert int(lines["spread"]) > 1
    assert lines["stopped"].strip() == "FALSE"


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "fresh"])
def test_workers_are_separate_fresh_sessions(clean: Testbed, tmp_path: Path, fork: bool
                                             ) -> None:
    """Forked or not, each worker has its own pid, its own tempdir() (removed when it
    stops), its own random stream without any seeding, and a fresh R's search path."""
    f = write_cluster(clean, tmp_path, options=RenderOptions(fork=fork))
    out = run_r_in_test(f"""
        source({str(f)!r})
        x <- parallel::clusterEvalQ(parallelCluster, local({{
          ppid <- strsplit(sub(".*[)] ", "", readLines("/proc/self/stat")), " ")[[1]][2]
          list(pid = Sys.getpid(), tmp = tempdir(), session = Sys.getenv("R_SESSION_TMPDIR"),
               objects = ls(globalenv(), all.names = TRUE), r = runif(1), search = search(),
               parent = readLines(sprintf("/proc/%s/comm", ppid)))
        }}))
        tmp <- vapply(x, `[[`, "", "tmp")
        cat("pids", length(unique(vapply(x, `[[`, 1L, "pid"))), "\n")
        cat("tmp", length(unique(tmp)), all(dir.exists(tmp)),
            identical(tmp, vapply(x, `[[`, "", "session")), "\n")
        cat("runif", length(unique(vapply(x, `[[`, 1, "r"))), "\n")
        cat("search", all(vapply(x, function(w) identical(w$search, search()), TRUE)), "\n")
        cat("globalenv", length(unlist(lapply(x, `[[`, "objects"))), "\n")
        cat("parents", unique(vapply(x, `[[`, "", "parent")), "\n")
        sshcluster_stop()
        cat("after", any(dir.exists(tmp)), "\n")
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    n = 2 * len(clean.hosts)
    assert lines["pids"].split() == [str(n)]
    assert lines["tmp"].split() == [str(n), "TRUE", "TRUE"]
    assert lines["runif"].split() == [str(n)]
    assert lines["search"].split() == ["TRUE"]
    assert lines["globalenv"].split() == ["0"]
    # Forked workers are children of their host's one R; fresh ones of the shell.
    assert lines["parents"].split() == (["R"] if fork else ["sh"])
    assert lines["after"].split() == ["FALSE"]


def test_stop_cluster_alone_leaves_no_process_on_the_hosts(clean: Testbed, tmp_path: Path
                                                          ) -> None:
    """stopCluster() ends the workers, and with them each host's ssh session, while the
    R session goes on; then sshcluster_stop() is a no-op."""
    f = write_cluster(clean, tmp_path)
    with interactive_r(f"""
        source({str(f)!r})
        cat("workers", length(parallelCluster), "\\n")
        parallel::stopCluster(parallelCluster)
        cat("STOPPED\\n")
        invisible(readLines(file("stdin"), n = 1))
        sshcluster_stop()
        sshcluster_stop()
        cat("DONE\\n")
    """, tmp_path, "stop.R") as proc:
        assert proc.stdout is not None and proc.stdin is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert lines == ["workers 8 \n", "STOPPED\n"], proc.stderr
        # (on the primary the supervisor lives on with R, until sshcluster_stop())
        assert nothing_left(clean, wait=5) == {}
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=R_TIMEOUT)
        assert proc.returncode == 0, err
        assert out == "DONE\n"


def test_stopping_also_stops_what_the_workers_started(clean: Testbed, tmp_path: Path
                                                     ) -> None:
    """A process a worker leaves in the background belongs to the host's session: it stops
    with the cluster."""
    f = write_cluster(clean, tmp_path)
    out = run_r_in_test(f"""
        source({str(f)!r})
        invisible(parallel::clusterEvalQ(parallelCluster, system("sleep 300", wait = FALSE)))
        Sys.sleep(0.5)
        cat("sleeping", length(system("pgrep -x sleep", intern = TRUE)), "\n")
        sshcluster_stop()
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[1]) >= 2 * len(clean.hosts)
    # Nor is anything of the cluster left on this machine: the supervisor, and what
    # feeds each session its heartbeat, end with the stop (within a second or two).
    assert nothing_left(clean, marker=tmp_path, wait=5) == {}


def test_sourcing_twice_stops_the_first_cluster(clean: Testbed, tmp_path: Path) -> None:
    """The second source() stops the first cluster: only the second one's workers run."""
    f = write_cluster(clean, tmp_path)
    with interactive_r(f"""
        pids <- function() unlist(parallel::clusterEvalQ(parallelCluster, Sys.getpid()))
        source({str(f)!r}); cat("first", pids(), "\\n")
        source({str(f)!r}); cat("second", pids(), "\\n")
        invisible(readLines(file("stdin"), n = 1))
        sshcluster_stop()
    """, tmp_path, "twice.R") as proc:
        assert proc.stdout is not None and proc.stdin is not None
        first = {int(p) for p in proc.stdout.readline().split()[1:]}
        second = {int(p) for p in proc.stdout.readline().split()[1:]}
        assert len(first) == len(second) == 8 and not first & second
        running = {p for h in clean.hosts for p in clean.processes(h, "R")}
        # With fork (the default), each host's workers come from one R of their own.
        parents = {parent_pid(p) for p in second}
        assert {process_name(p) for p in parents} == {"R"}
        assert len(parents) == len(clean.hosts)
        assert running == second | parents
        proc.stdin.write("go\n")
        proc.stdin.flush()
        _, err = proc.communicate(timeout=R_TIMEOUT)
        assert proc.returncode == 0, err
        assert "stopping the cluster that an earlier source() of this file started" in err


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "fresh"])
def test_master_killed_leaves_no_worker(clean: Testbed, tmp_path: Path, fork: bool) -> None:
    """The ssh connections are a dead man's switch: kill -9 the R session, the workers go."""
    f = write_cluster(clean, tmp_path, options=RenderOptions(fork=fork))
    with interactive_r(f'source({str(f)!r}); cat("READY\\n"); Sys.sleep(120)\n', tmp_path,
                       "killed.R", stdin=False) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "READY\n"
        assert all(clean.processes(h, "R") for h in clean.hosts)
    assert nothing_left(clean, marker=tmp_path, wait=5) == {}


def test_master_killed_while_its_child_lives_leaves_no_worker(clean: Testbed, tmp_path: Path
                                                              ) -> None:
    """A process the R session started keeps a copy of its pipe to the supervisor (and of
    the workers' sockets) after R is killed: the supervisor watches R itself, so the
    workers still go, and so does everything on the primary but that child."""
    f = write_cluster(clean, tmp_path)
    with interactive_r(f'source({str(f)!r}); system("sleep 121", wait = FALSE)\n'
                      'cat("READY", Sys.getpid(), "\\n"); Sys.sleep(120)\n', tmp_path,
                       "killed.R", stdin=False) as proc:
        assert proc.stdout is not None
        ready, r_pid = proc.stdout.readline().split()
        assert ready == "READY"
        time.sleep(0.5)
        child = [p for p in _all_pids() if _cmdline(p) == b"sleep\x00121\x00"]
        supervisor = [p for p in descendants(int(r_pid)) if b"supervisor.sh" in _cmdline(p)]
        assert child and supervisor
    try:
        assert nothing_left(clean, marker=tmp_path, wait=20) == {}
        assert _gone(set(supervisor))
    finally:
        for p in child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, 9)


def test_stop_after_stop_cluster_leaves_the_users_files_alone(clean: Testbed, tmp_path: Path
                                                              ) -> None:
    """After parallel::stopCluster(), R gives the workers' connection numbers to the next
    connections opened; sshcluster_stop(), a repair or a new source() must not write to
    or close those."""
    f = write_cluster(clean, tmp_path, hosts=clean.hosts[:2])
    data = tmp_path / "mine.txt"
    out = run_r_in_test(f"""
        source({str(f)!r})
        parallel::stopCluster(parallelCluster)
        files <- lapply(1:6, function(i) file({str(data)!r}, "w"))
        cat("repair", tryCatch(sshcluster_repair(), error = conditionMessage), "\\n")
        sshcluster_stop()
        writeLines("still mine", files[[1]])
        for (con in files) close(con)
        cat("file", readLines({str(data)!r}), "\\n")
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines["file"].strip() == "still mine"
    assert nothing_left(clean, marker=tmp_path, wait=5) == {}


def test_a_cluster_whose_names_were_removed_is_stopped_by_the_next_source(
        clean: Testbed, tmp_path: Path) -> None:
    """rm(list = ls()) loses the handles, not the cluster: the next source() stops it."""
    f = write_cluster(clean, tmp_path, hosts=clean.hosts[:2])
    out = run_r_in_test(f"""
        source({str(f)!r})
        rm(list = ls())
        source({str(f)!r})
        cat("workers", length(parallelCluster), "\\n")
        cat("running", length(system("pgrep -x R", intern = TRUE)), "\\n")
        sshcluster_stop()
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "stopping the cluster that an earlier source() of this file started" in out.stderr
    assert nothing_left(clean, marker=tmp_path, wait=5) == {}


# --------------------------------------------------------------------------- fail fast


def _launch_fails(testbed: Testbed, f: Path, tmp_path: Path, within: float = 15.0) -> str:
    t0 = time.monotonic()
    out = run_r_in_test(f'source({str(f)!r})\ncat("UNEXPECTED\\n")\n', tmp_path)
    elapsed = time.monotonic() - t0
    assert out.returncode != 0 and "UNEXPECTED" not in out.stdout, out.stdout
    assert elapsed < within, f"the launch took {elapsed:.1f} s to fail:\n{out.stderr}"
    assert nothing_left(testbed, marker=tmp_path, wait=5) == {}, out.stderr
    return out.stderr


def _line_for(stderr: str, host: TestHost) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip().startswith(f"{host.address}:")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "fresh"])
def test_refused_ssh_fails_fast_and_names_the_host(clean: Testbed, tmp_path: Path, fork: bool
                                                   ) -> None:
    """One host refuses; the workers the other hosts started are all stopped."""
    bad = clean.hosts[1]
    f = write_cluster(clean, tmp_path, options=RenderOptions(fork=fork))
    clean.stop_sshd(bad)
    try:
        err = _launch_fails(clean, f, tmp_path)
    finally:
        clean.start_sshd(bad)
    assert "sshcluster: could not start the cluster" in err
    line = _line_for(err, bad)
    assert "ssh exited with status 255" in line and "Connection refused" in line


def test_unknown_host_key_fails_fast(clean: Testbed, tmp_path: Path) -> None:
    bad = clean.hosts[2]
    known = tmp_path / "known_hosts"
    lines = clean.known_hosts.read_text().splitlines()
    known.write_text("".join(f"{ln}\n" for ln in lines if not ln.startswith(bad.address + " ")))
    f = write_cluster(clean, tmp_path, known_hosts=str(known))
    err = _launch_fails(clean, f, tmp_path)
    assert "Host key verification failed" in _line_for(err, bad)


def test_wrong_key_fails_fast(clean: Testbed, tmp_path: Path) -> None:
    bad = clean.hosts[0]
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True,
                   timeout=30)
    f = write_cluster(clean, tmp_path, host_fields={bad.address: {"identity_file": str(key)}})
    err = _launch_fails(clean, f, tmp_path)
    assert "Permission denied" in _line_for(err, bad)


def test_missing_rscript_fails_fast(clean: Testbed, tmp_path: Path) -> None:
    bad = clean.hosts[3]
    f = write_cluster(clean, tmp_path, host_fields={bad.address: {"rscript": "/opt/no R/Rscript"}})
    err = _launch_fails(clean, f, tmp_path)
    line = _line_for(err, bad)
    assert "status 127" in line and "/opt/no R/Rscript not found on node4" in line


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "fresh"])
def test_r_that_cannot_start_fails_fast(clean: Testbed, tmp_path: Path, fork: bool) -> None:
    """An R that exits at once (a broken install): the host's script fails with R's
    status, and the error shows R's message once, not once per worker."""
    bad = clean.hosts[2]
    broken = tmp_path / "broken-Rscript"
    broken.write_text("#!/bin/sh\necho 'Error: libR.so: cannot open shared object' >&2\n"
                      "exit 2\n")
    broken.chmod(0o755)
    f = write_cluster(clean, tmp_path, options=RenderOptions(fork=fork),
                   host_fields={bad.address: {"rscript": str(broken)}})
    err = _launch_fails(clean, f, tmp_path)
    assert _line_for(err, bad).endswith(
        "ssh exited with status 2: Error: libR.so: cannot open shared object")


def test_workers_that_never_connect_hit_the_setup_timeout(clean: Testbed, tmp_path: Path
                                                         ) -> None:
    """An Rscript that starts but never connects: the setup deadline names the host."""
    bad = clean.hosts[0]
    fake = tmp_path / "fake-Rscript"
    fake.write_text("#!/bin/sh\nexec sleep 300\n")
    fake.chmod(0o755)
    # Long enough for the good hosts' workers to connect on a busy machine (3 s was not,
    # under load, and they were named too).
    f = write_cluster(clean, tmp_path, setup_timeout=10,
                   host_fields={bad.address: {"rscript": str(fake)}})
    err = _launch_fails(clean, f, tmp_path)
    assert "workers did not connect within 10 s" in err
    assert "0 of 2 workers connected when the launch stopped" in _line_for(err, bad)
    assert all(h.address + ":" not in err for h in clean.hosts[1:])
    # on the way, after 5 s, the launch said which host it was waiting for
    assert f"sshcluster: still waiting for workers from {bad.address} (2 of 2); " \
           "setup_timeout in " in err, err


# --------------------------------------------------------------------------- NAT


def test_blocked_port_fails_fast_and_the_reverse_tunnel_works(clean: Testbed, tmp_path: Path
                                                             ) -> None:
    bad = clean.hosts[1]
    port = free_port()
    plain = write_cluster(clean, tmp_path, "plain.R", port=port, tunnel="none")
    tunnel = write_cluster(clean, tmp_path, "tunnel.R", port=port)  # the default
    clean.reject(bad, port)
    try:
        err = _launch_fails(clean, plain, tmp_path)
        line = _line_for(err, bad)
        assert f"cannot connect to the primary at {clean.primary_address} port {port}" in line
        assert "refused" in line and "tunnel: reverse" in line
        # the host's last words are the workers' own (R's warnings at its exit would push
        # them out of the line)
        assert "Warning" not in line and line.count("sshcluster:") == 1, line
        out = run_r_in_test(f"""
            source({str(tunnel)!r})
            cat(unlist(parallel::clusterEvalQ(parallelCluster, Sys.info()[["nodename"]])), "\\n")
            sshcluster_stop()
        """, tmp_path)
    finally:
        clean.allow(bad, port)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [h.hostname for h in clean.hosts for _ in range(2)]


def test_dropped_packets_fail_within_seconds(clean: Testbed, tmp_path: Path) -> None:
    """A black hole (DROP) to the primary's port: the reachability check times out."""
    bad = clean.hosts[0]
    port = free_port()
    f = write_cluster(clean, tmp_path, port=port, tunnel="none")
    clean.reject(bad, port, action="DROP")
    try:
        # (three connect attempts of 5 s; the bound only tells it from the setup deadline)
        err = _launch_fails(clean, f, tmp_path, within=45)
    finally:
        clean.allow(bad, port)
    assert "the connection timed out after 5 s, three times" in _line_for(err, bad)


def _remote_argv(rscript: str, port: int, start: str = "fork", silence: int = 40
                 ) -> list[str]:
    """The command ssh runs on each host (``sh -c READ_SCRIPT ...``): it reads the host's
    script from stdin (:func:`_stdin`) and runs it with these arguments."""
    return ["/bin/sh", "-c", READ_SCRIPT, "sshcluster", rscript, "127.0.0.1", str(port), "1",
            "30", "direct", start, str(silence)]


def _script() -> bytes:
    """What the supervisor sends a host first: its script (the workers' R code in $code,
    then remote.sh after the shell functions it shares with the check) and the
    end-of-script line, as the R file writes it."""
    return ("code=" + shlex.quote(WORKER_CODE) + "\n" + REMOTE_SCRIPT + END_OF_SCRIPT
            + "\n").encode()


@contextlib.contextmanager
def _heartbeat(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Feeds the host's script its heartbeat (a line a second) for as long as the block
    runs: its watchdog stops the workers after SILENCE seconds without one, which on a
    loaded machine may come before a worker has even started."""
    stop = threading.Event()

    def beat() -> None:
        assert proc.stdin is not None
        while not stop.wait(1):
            try:
                proc.stdin.write(b"\n")
                proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                return  # (the script has ended: the test says whether it should have)

    beats = threading.Thread(target=beat, daemon=True)
    beats.start()
    try:
        yield
    finally:
        stop.set()
        beats.join()


def _all_pids() -> list[int]:
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _gone(pids: set[int], within: float = 10) -> bool:
    """Whether every process of ``pids`` has ended (killed processes take a moment)."""
    deadline = time.monotonic() + within
    while any(Path(f"/proc/{p}").exists() for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _files_left(tmp: Path, within: float = 10) -> list[str]:
    """What is still in a host's TMPDIR (the reaper removes it a moment after the end)."""
    deadline = time.monotonic() + within
    while (left := sorted(p.name for p in tmp.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _tokens(n: int) -> bytes:
    """The host's script, then its line of worker tokens: a session's stdin."""
    line = ",".join(f"{i}:{'0' * 32}:{'1' * 32}" for i in range(1, n + 1)) + "\n"
    return _script() + line.encode()


def test_the_script_markers_stay_out_of_the_script() -> None:
    """The end-of-script line never occurs inside what it ends."""
    r_dir = Path(sshcluster.__file__).parent / "R"
    for name in ("worker.R", "remote.sh"):
        assert END_OF_SCRIPT not in (r_dir / name).read_text().splitlines()
    assert END_OF_SCRIPT in READ_SCRIPT and "\n" not in READ_SCRIPT


@pytest.mark.parametrize("cut", [0, 100, 3000, -1], ids=["none", "100", "3000", "no-marker"])
def test_a_script_that_did_not_arrive_whole_runs_nothing(tmp_path: Path, cut: int) -> None:
    """ssh ending part-way through the script (or before its last line): nothing of it
    runs, and the host says why."""
    marker = tmp_path / "ran"
    script = _script().replace(b"\nr=\"$1\";", f"\ntouch {marker}\nr=\"$1\";".encode(), 1)
    assert str(marker).encode() in script
    sent = script[:cut] if cut >= 0 else script[:-len(END_OF_SCRIPT) - 1]
    out = subprocess.run(_remote_argv("Rscript", free_port()), input=sent,
                         capture_output=True, timeout=30)
    assert out.returncode == 1
    assert b"did not arrive whole" in out.stderr
    assert not marker.exists()


@pytest.mark.parametrize("shell", ["sh", "busybox"])
@pytest.mark.parametrize("leader", [True, False], ids=["group-leader", "not-leader"])
def test_remote_script_forks_only_where_it_can_stop_the_forks(tmp_path: Path, leader: bool,
                                                              shell: str) -> None:
    """Run the per-host script directly. As the leader of its process group (what sshd
    gives it) it forks the workers from one R; otherwise it starts one Rscript per worker,
    since only a group kill reaches forks it does not know. Either way, the EOF of its
    stdin (the dead man's switch) stops every process it started. Also where sh is
    BusyBox's ash (Alpine), whose kill wants no "--" before a process group."""
    argv, env = _remote_argv("Rscript", free_port()), None
    if shell == "busybox":
        busybox = shutil.which("busybox")
        if busybox is None:
            skip_or_fail("busybox is not installed (scripts/setup.sh installs it)")
        tools = tmp_path / "bin"
        tools.mkdir()
        (tools / "sh").symlink_to(busybox)  # (BusyBox runs as the name it is called by)
        argv[0] = str(tools / "sh")
        env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}
    with socket.create_server(("127.0.0.1", 0)) as server:
        argv[argv.index("127.0.0.1") + 1] = str(server.getsockname()[1])
        with subprocess.Popen(argv, stdin=subprocess.PIPE, env=env,
                              stderr=subprocess.PIPE, start_new_session=leader) as proc:
            try:
                assert proc.stdin is not None
                proc.stdin.write(_tokens(3))
                proc.stdin.flush()
                # Workers connect, say hello and wait for the primary's answer.
                server.settimeout(30)
                held = [server.accept()[0] for _ in range(3)]
                hellos = [c.recv(48) for c in held]
                assert all(h.startswith(PROOF_MAGIC) and len(h) == 48 for h in hellos)
                tree = descendants(proc.pid)
                r = {p for p in tree if process_name(p) == "R"}
                parents = {parent_pid(p) for p in r}
                if leader:  # one R, and three forks of it
                    assert len(r) == 4 and parents == {proc.pid} | (r & parents)
                    assert len(r & parents) == 1
                else:  # three Rscripts, children of the script's shell
                    assert len(r) == 3 and parents == {proc.pid}
                proc.stdin.close()  # ssh ended
                proc.wait(timeout=30)
                assert _gone(tree)
                for c in held:
                    c.close()
            finally:
                proc.kill()


@pytest.mark.slow
def test_a_silent_primary_stops_the_workers(tmp_path: Path) -> None:
    """The dead man's switch fires on silence too, not only on EOF: a host cut off from
    the primary (its stdin neither ends nor says anything) stops its workers by itself.
    Without bash the watchdog times its reads with timeout(1)."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("Rscript", "uname", "timeout", "sleep", "cat", "sh", "mktemp", "rm"):
        (tools / tool).symlink_to(shutil.which(tool) or tool)
    tmp = tmp_path / "tmp"  # (the host's TMPDIR: the workers' files go with them)
    tmp.mkdir()
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with subprocess.Popen(_remote_argv("Rscript", port, silence=3),
                              stdin=subprocess.PIPE, start_new_session=True,
                              env={"PATH": str(tools), "TMPDIR": str(tmp)}) as proc:
            try:
                assert proc.stdin is not None
                proc.stdin.write(_tokens(2))
                proc.stdin.flush()
                # heartbeats until both workers are in (on a loaded machine their start
                # may take longer than the silence) ...
                server.settimeout(60)
                with _heartbeat(proc):
                    held = [server.accept()[0] for _ in range(2)]
                # ... and then nothing, but no EOF either
                tree = descendants(proc.pid)
                assert len([p for p in tree if process_name(p) == "R"]) == 3
                proc.wait(timeout=30)
                assert _gone(tree)
                # (R leaves its temporary directory behind when it is killed: the
                # host's session directory holds them, and goes)
                assert _files_left(tmp) == []
                for c in held:
                    c.close()
            finally:
                proc.kill()


@pytest.mark.parametrize(("workers", "started"), [(256, 1), (257, 257)])
def test_more_than_256_workers_on_a_machine_are_not_forked(tmp_path: Path, workers: int,
                                                           started: int) -> None:
    """R tracks forks with select(), limited to descriptor 1024: a machine with more than
    256 workers starts them fresh. (A stand-in Rscript that only sleeps counts the starts.)"""
    fake = tmp_path / "Rscript"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    with subprocess.Popen(_remote_argv(str(fake), free_port()), stdin=subprocess.PIPE,
                          start_new_session=True) as proc:
        try:
            assert proc.stdin is not None
            proc.stdin.write(_tokens(workers))
            proc.stdin.flush()
            deadline = time.monotonic() + 30
            while True:
                sleeping = {p for p in descendants(proc.pid) if process_name(p) == "sleep"}
                if len(sleeping) >= started or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            time.sleep(0.3)  # no more than that
            sleeping = {p for p in descendants(proc.pid) if process_name(p) == "sleep"}
            assert len(sleeping) == started
            proc.stdin.close()
            proc.wait(timeout=30)
            assert _gone(sleeping)
        finally:
            proc.kill()


def test_tunnel_with_a_login_shell_that_talks(clean: Testbed, tmp_path: Path) -> None:
    """A host whose shell start-up files print something (a banner, a greeting) before
    the script's "ready": the tunnelled launch still starts there."""
    host = clean.hosts[0]
    bashrc = host_dir(clean.workdir, host) / "bashrc"
    saved = bashrc.read_text()
    bashrc.write_text("echo 'Welcome to node1'\n" + saved)
    try:
        f = write_cluster(clean, tmp_path, hosts=clean.hosts[:2], tunnel="reverse")
        out = run_r_in_test(f"""
            source({str(f)!r})
            cat(unlist(parallel::clusterEvalQ(parallelCluster, Sys.info()[["nodename"]])), "\\n")
            sshcluster_stop()
        """, tmp_path, timeout=60)
    finally:
        bashrc.write_text(saved)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [h.hostname for h in clean.hosts[:2] for _ in range(2)]


def test_taken_tunnel_port_is_an_error_not_a_hijack(clean: Testbed, tmp_path: Path) -> None:
    """Someone listens on 127.0.0.1:PORT on a host: the forward fails and ssh says so."""
    bad = clean.hosts[2]
    port = free_port()
    f = write_cluster(clean, tmp_path, port=port, tunnel="reverse")
    with squatter(bad, port):
        err = _launch_fails(clean, f, tmp_path)
    assert f"remote port forwarding failed for listen port {port}" in _line_for(err, bad)


# --------------------------------------------------------------------------- classic


def test_classic_launch_still_works(clean: Testbed, tmp_path: Path) -> None:
    f = write_cluster(clean, tmp_path, hosts=clean.hosts[:2],
                   options=RenderOptions(launch="classic"))
    assert "parallel::makeCluster(" in f.read_text()
    out = run_r_in_test(f"""
        source({str(f)!r})
        cat(unlist(parallel::clusterEvalQ(parallelCluster, Sys.info()[["nodename"]])), "\\n")
        sshcluster_stop()
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [h.hostname for h in clean.hosts[:2] for _ in range(2)]


def test_error_is_a_classed_condition(clean: Testbed, tmp_path: Path) -> None:
    """Code can catch the launch error by class and see which hosts failed."""
    bad = clean.hosts[3]
    f = write_cluster(clean, tmp_path, host_fields={bad.address: {"rscript": "/nope/Rscript"}})
    out = run_r_in_test(f"""
        e <- tryCatch(source({str(f)!r}), sshcluster_error = function(e) e)
        cat(class(e)[1], e$hosts, "\\n")
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(rf"sshcluster_error {re.escape(bad.address)} \n", out.stdout)
    assert nothing_left(clean, marker=tmp_path, wait=5) == {}


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize("launch", ["fast", "classic"])
def test_source_defines_only_the_documented_names(clean: Testbed, tmp_path: Path, launch: str
                                                  ) -> None:
    """The file runs in an environment of its own: the user's global environment gets the
    seed's names and the documented functions, nothing else; the user's own variables,
    options and random seed are left alone."""
    f = write_cluster(clean, tmp_path, hosts=clean.hosts[:2],
                   options=RenderOptions(launch="classic" if launch == "classic" else "fast"))
    out = run_r_in_test(f"""
        start <- launch <- rshcmd <- config <- S <- listen <- register <- "mine"
        set.seed(7); seed <- .Random.seed
        opts <- getOption("socketOptions")
        before <- c(ls(all.names = TRUE), "before")
        source({str(f)!r})
        cat("new", sort(setdiff(ls(all.names = TRUE), before)), "\\n")
        cat("kept", start, launch, rshcmd, config, S, listen, register, "\\n")
        cat("options", identical(opts, getOption("socketOptions")), "\\n")
        cat("seed", identical(seed, .Random.seed), "\\n")
        sshcluster_stop()
        cat("after", sort(setdiff(ls(all.names = TRUE), before)), "\\n")
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    seed_names = ["machineAddresses", "parallelCluster", "primary", "spec"]
    functions = ["sshcluster_repair", "sshcluster_stop"] if launch == "fast" else \
        ["sshcluster_stop"]
    assert lines["new"].split() == sorted(seed_names + functions)
    assert lines["kept"].split() == ["mine"] * 7
    assert lines["options"].split() == ["TRUE"]
    if launch == "fast":  # the secrets come from /dev/urandom, not R's generator
        assert lines["seed"].split() == ["TRUE"]
    assert "parallelCluster" not in lines["after"].split()


@pytest.mark.parametrize("options", [
    RenderOptions(fork=True, extra_ssh_options=SEND_LOCALE),
    RenderOptions(fork=False, extra_ssh_options=SEND_LOCALE),
    RenderOptions(launch="classic", extra_ssh_options=SEND_LOCALE)],
    ids=["fork", "fresh", "classic"])
def test_workers_read_end_of_file_and_get_the_primary_locale(clean: Testbed, tmp_path: Path,
                                                            options: RenderOptions) -> None:
    """A worker's stdin is at its end, forked or not (system("cat") returns); workers run
    in the primary's locale, or the inventory's, whatever the launch (the classic one's
    workers take it once started: its ssh passes the primary's LANG only where the
    host's sshd accepts it, and never the inventory's)."""
    own = write_cluster(clean, tmp_path, "own.R", hosts=clean.hosts[:2], options=options)
    named = write_cluster(clean, tmp_path, "named.R", hosts=clean.hosts[:2],
                          options=options, locale="C")
    code = f"""
        for (f in c({str(own)!r}, {str(named)!r})) {{
          source(f)
          x <- parallel::clusterEvalQ(parallelCluster, c(
            length(system("cat", intern = TRUE)), Sys.getenv("LANG"),
            Sys.getlocale("LC_CTYPE")))
          cat(basename(f), unique(unlist(x)), "\\n")
          sshcluster_stop()
        }}
    """
    script = tmp_path / "locale.R"
    script.write_text(code)
    # (LC_CTYPE too, which ssh sends (Debian's SendEnv LC_*) and the test hosts' sshd
    # takes, as Debian's does: the inventory's locale must win over it)
    env = {**os.environ, "LANG": "C.UTF-8", "LC_CTYPE": "C.UTF-8"}
    env.pop("LC_ALL", None)
    out = subprocess.run(["Rscript", str(script)], capture_output=True, text=True, env=env,
                         timeout=R_TIMEOUT)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines["own.R"].split() == ["0", "C.UTF-8"]
    assert lines["named.R"].split() == ["0", "C"]


@pytest.mark.parametrize("launch", ["fast", "classic"])
def test_an_openssh_before_8_5_gets_the_known_hosts_file_another_way(
        clean: Testbed, tmp_path: Path, launch: str) -> None:
    """KnownHostsCommand came with OpenSSH 8.5. On a primary whose ssh is older (Debian
    11, Ubuntu 20.04, RHEL 8; here a stand-in that says 8.4 and refuses that option as
    8.4 does) the file adds the inventory's known_hosts as a global file instead, and the
    launch still verifies every host key."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    old_ssh = bin_dir / "ssh"
    old_ssh.write_text(
        "#!/bin/sh\n"
        'case "$*" in -V) echo "OpenSSH_8.4p1 Debian-5+deb11u1, OpenSSL 1.1.1n" >&2; exit 0;;\n'
        '  *KnownHostsCommand*) echo "command-line line 0: Bad configuration option: '
        'knownhostscommand" >&2; exit 255;; esac\n'
        f'exec {shutil.which("ssh")} "$@"\n')
    old_ssh.chmod(0o755)
    f = write_cluster(clean, tmp_path, hosts=clean.hosts[:2],
                   options=RenderOptions(launch="classic" if launch == "classic" else "fast"))
    script = tmp_path / "old.R"
    script.write_text(f"""
        source({str(f)!r})
        cat(unlist(parallel::clusterEvalQ(parallelCluster, Sys.info()[["nodename"]])), "\\n")
        sshcluster_stop()
    """)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = subprocess.run(["Rscript", str(script)], capture_output=True, text=True, env=env,
                         timeout=R_TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [h.hostname for h in clean.hosts[:2] for _ in range(2)]


def _hmac_md5(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.md5).digest()


@pytest.mark.parametrize("primary", ["fake", "genuine"])
def test_a_fake_primary_learns_nothing_it_can_replay(tmp_path: Path, primary: str) -> None:
    """A worker meets whoever answers its connection. A fake primary (without the slot's
    key) answers with bytes of its own: the worker sends nothing more and gives up, and
    what the fake saw (the hellos) holds no byte of the key and a fresh nonce each time.
    A genuine primary (the proof computed here, independently of the R code) gets the
    worker's proof, which is tied to that connection's nonces; a worker that is not told
    ADMITTED after its proof (its primary gave up on a late proof) connects and proves
    itself again, and once admitted connects no more."""
    worker, primary_token = secrets.token_bytes(16), secrets.token_bytes(16)
    key = worker + primary_token
    stdin = _script() + f"1:{worker.hex()}:{primary_token.hex()}\n".encode()
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        # (silence 3: the host's script ends 3 s after its worker gave up, not 40)
        with subprocess.Popen(_remote_argv("Rscript", port, start="fresh", silence=3),
                              stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True) as proc:
            beating = contextlib.ExitStack()
            try:
                assert proc.stdin is not None
                proc.stdin.write(stdin)
                proc.stdin.flush()
                server.settimeout(60)  # a hang guard
                seen = []
                # (the heartbeat until the worker is done with the primary: with silence 3
                # alone, a worker slow to start on a loaded machine was stopped before it
                # connected)
                beating.enter_context(_heartbeat(proc))
                for attempt in range(2):
                    conn = server.accept()[0]
                    conn.settimeout(60)
                    hello = b""
                    while len(hello) < 48:
                        hello += conn.recv(48 - len(hello))
                    # (its last 16 bytes: the MAC of the rest, which only the key gives)
                    assert hello[32:] == _hmac_md5(key, b"hello" + hello[:32])
                    seen.append(hello)
                    nonce = secrets.token_bytes(16)
                    if primary == "fake":
                        conn.sendall(nonce + secrets.token_bytes(16))
                        rest = conn.recv(1024)
                        assert rest == b""  # the worker closed, and sent nothing more
                    else:
                        conn.sendall(nonce + _hmac_md5(key, b"primary" + hello + nonce))
                        proof = conn.recv(16)
                        assert proof == _hmac_md5(key, b"worker" + hello + nonce)
                        if attempt == 1:
                            conn.sendall(b"\x06")  # ADMITTED
                            admitted = conn
                            break
                    conn.close()
                    if primary == "fake":
                        break
                if primary == "genuine":
                    assert len(seen) == 2 and seen[0][16:32] != seen[1][16:32]
                    server.settimeout(3)
                    with pytest.raises(TimeoutError):
                        server.accept()  # (admitted: it connects no more)
                    admitted.close()
                for hello in seen:
                    assert hello[:4] == PROOF_MAGIC
                    for secret in (worker, primary_token):
                        assert not any(secret[i:i + 4] in hello for i in range(13))
                if primary == "fake":
                    assert proc.stderr is not None
                    beating.close()
                    proc.wait(timeout=60)  # (the worker gives up by itself)
                    assert b"did not accept this worker" in proc.stderr.read()
            finally:
                beating.close()
                proc.kill()


def test_the_port_listens_only_while_workers_are_accepted(clean: Testbed, tmp_path: Path
                                                         ) -> None:
    """After the launch nothing accepts on R's port (no queue can be filled before a
    repair); a repair that relaunches listens afresh, and stops again."""
    port = free_port()
    f = write_cluster(clean, tmp_path, port=port, ncore=1)
    out = run_r_in_test(f"""
        probe <- function() tryCatch({{
          con <- suppressWarnings(socketConnection("127.0.0.1", {port}, timeout = 5))
          close(con); "accepted" }}, error = function(e) "refused")
        source({str(f)!r})
        cat("after-launch|", probe(), "\\n", sep = "")
        pids <- unlist(parallel::clusterEvalQ(parallelCluster, Sys.getpid()))
        system(sprintf("kill -9 %d", pids[1]))
        Sys.sleep(1)
        parallelCluster <- sshcluster_repair()
        cat("repaired|", length(parallelCluster), "|",
            sum(unlist(parallel::clusterEvalQ(parallelCluster, 1))), "\\n", sep = "")
        cat("after-repair|", probe(), "\\n", sep = "")
        sshcluster_stop()
    """, tmp_path)
    assert out.returncode == 0, out.stderr
    lines = dict(ln.split("|", 1) for ln in out.stdout.splitlines() if "|" in ln)
    n = len(clean.hosts)
    assert lines["after-launch"] == "refused"
    assert lines["repaired"] == f"{n}|{n}"
    assert lines["after-repair"] == "refused"
