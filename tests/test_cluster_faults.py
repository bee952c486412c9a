"""A running cluster meets real faults: each is named, nothing is left behind, and
``sshcluster_repair()`` brings the cluster back to full size.

In every fast launch mode (:data:`FAST_MODES`: through the tunnel or straight, forked or
fresh workers), one R session on three hosts meets in turn:

* a worker killed with SIGKILL on a live host (its sibling on that host still running);
* that host's sshd sessions killed;
* a call interrupted by SIGINT (the next call must not return that call's results), and
  a Ctrl-C sent to the whole process group, as a terminal sends it: it interrupts R, not
  the cluster, whose workers all answer the repair that follows;
* a host cut off from the network (all its packets dropped) during a long parLapply; it
  stops its own workers while still cut off, and once it is back, a repair starts them
  again (its old sshd session may still hold the old forwarded port).

After each fault the repair must bring back every worker (asserted). The tasks sleep far
longer than the test lets R run, so an answer can only come from the fault being noticed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sshcluster.bootstrap import RenderOptions
from sshcluster.testing import Testbed, TestHost
from sshcluster.testing.cluster import write_cluster
from sshcluster.testing.faults import QUICK_NOTICE_R
from sshcluster.testing.fixtures import MakeTestbed, run_r_in_test
from sshcluster.testing.leftovers import launch_env, nothing_left
from sshcluster.testing.modes import FAST_MODES

pytestmark = pytest.mark.slow  # faults

#: Each mode's testbed: three hosts of two workers.
HOSTS = 3
NCORE = 2
#: How long a cut is noticed in with the shipped timings: ssh's keepalive
#: (ServerAliveInterval 5, CountMax 3) and the next look at the hosts (about 20 s). A test
#: waits 3 times that, as a hang guard. test_future_sees_a_lost_host_through_the_tunnel
#: shortens the timings (QUICK_NOTICE_R); the others keep the shipped ones.
NOTICED = 60


def _kill_session_script(tmp_path: Path, host: TestHost) -> Path:
    """A script that kills the sshd processes serving sessions on ``host`` (not its
    listener): the primary's ssh to that host then ends."""
    script = tmp_path / f"kill-sshd-{host.hostname}.sh"
    script.write_text(
        f'for p in $(ip netns pids {host.netns}); do\n'
        '  case "$(tr "\\0" " " < /proc/$p/cmdline 2>/dev/null)" in\n'
        '    "sshd: root@notty"*|"sshd: root [priv]"*) kill -9 "$p";;\n'
        '  esac\n'
        'done\n')
    return script


def _start_scenario(tb: Testbed, tmp_path: Path, mode: str) -> subprocess.Popen[str]:
    """Start, in its own process group, an R session that meets every fault in turn on
    ``tb`` (see the module's docstring); it prints ``key|value|...`` lines."""
    f = write_cluster(tb, tmp_path, options=FAST_MODES[mode])
    h2, h3 = tb.hosts[1], tb.hosts[2]
    iptables = f"ip netns exec {h3.netns} iptables -w 5"
    cut = tmp_path / "cut.sh"
    cut.write_text(f"sleep 2\n{iptables} -I INPUT 1 ! -i lo -j DROP\n"
                   f"{iptables} -I OUTPUT 1 ! -o lo -j DROP\n")
    back = f"{iptables} -D INPUT ! -i lo -j DROP; {iptables} -D OUTPUT ! -o lo -j DROP"
    r_on_h3 = (f"for p in $(ip netns pids {h3.netns}); do cat /proc/$p/comm; done "
               "2>/dev/null | grep -cx R")
    code = f"""
        say <- function(key, ...) cat(key, ..., "\\n", sep = "|")
        try_msg <- function(expr) tryCatch(expr, error = conditionMessage,
                                           interrupt = function(e) "INTERRUPTED")
        # the repair, its size and what it said
        repair <- function(key) {{
          said <- character()
          parallelCluster <<- withCallingHandlers(sshcluster_repair(), message = function(m) {{
            said <<- c(said, conditionMessage(m)); invokeRestart("muffleMessage") }})
          say(key, length(parallelCluster), gsub("\\n", " ", paste(said, collapse = " ")))
        }}
        source({str(f)!r})
        later <- function(what) system(sprintf("sh -c 'sleep 1; %s'", what), wait = FALSE)
        # 1. a worker killed on a live host, while R waits for another (busy) worker
        pids <- unlist(parallel::clusterEvalQ(parallelCluster, Sys.getpid()))
        later(sprintf("kill -9 %d", pids[{NCORE + 1}]))
        say("kill9", try_msg(parallel::parLapply(parallelCluster, 1:8, function(i) {{
          Sys.sleep(300); i }})))
        repair("repair-kill9")
        say("after-kill9", parallel::parSapply(parallelCluster, 1:8, function(i) i * 3))
        # 2. the host's sshd sessions killed (in a long call: with direct connections its
        # workers could otherwise answer a short one before anything noticed the kill)
        system({f"sh {_kill_session_script(tmp_path, h2)}"!r})
        say("sshd", try_msg(parallel::parSapply(parallelCluster, 1:8, function(i) {{
          Sys.sleep(300); i }})))
        repair("repair-sshd")
        say("after-sshd", parallel::parSapply(parallelCluster, 1:8, function(i) i * 4))
        # 3. an interrupted call; then Ctrl-C to the whole process group
        later(sprintf("kill -INT %d", Sys.getpid()))
        say("interrupt", try_msg(parallel::parLapply(parallelCluster, 1:8, function(i) {{
          Sys.sleep(30); i }})))
        say("next", try_msg(parallel::parSapply(parallelCluster, 1:8, function(i) -i)))
        repair("repair-interrupt")
        say("after-interrupt", parallel::parSapply(parallelCluster, 1:8, function(i) i * 5))
        later(sprintf("kill -s INT -- -%d", Sys.getpid()))
        say("ctrl-c", try_msg(parallel::parLapply(parallelCluster, 1:8, function(i) {{
          Sys.sleep(3); i }})))
        repair("repair-ctrl-c")
        say("after-ctrl-c", parallel::parSapply(parallelCluster, 1:8, function(i) i * 6))
        # 4. a host cut off in the middle of a long call; it stops its own workers while
        # cut off (the primary's heartbeat falls silent), then comes back
        system({f"sh {cut}"!r}, wait = FALSE)
        say("cut", try_msg(parallel::parLapply(parallelCluster, 1:8, function(i) {{
          Sys.sleep(300); i }})))
        for (i in 1:120) {{
          left <- as.integer(system({r_on_h3!r}, intern = TRUE))
          if (!left) break
          Sys.sleep(1)
        }}
        say("cut-host-r", left)
        system({back!r})
        repair("repair-cut")
        say("after-cut", parallel::parSapply(parallelCluster, 1:8, function(i) i * 7))
        sshcluster_stop()
        say("stopped", exists("parallelCluster"))
    """
    return subprocess.Popen(["setsid", "-w", "Rscript", "-e", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=launch_env(tmp_path))


def test_faults_are_named_and_repaired(make_testbed: MakeTestbed, tmp_path: Path) -> None:
    """Every fast mode at once, each on test hosts of its own (the faults are slow to
    play out, so the modes wait side by side)."""
    beds = {mode: make_testbed(HOSTS) for mode in FAST_MODES}
    procs = {}
    for mode, tb in beds.items():
        (tmp_path / mode).mkdir()
        procs[mode] = _start_scenario(tb, tmp_path / mode, mode)
    results = {}
    try:
        for mode, proc in procs.items():
            # (a hang guard: the scenario takes about 70 s)
            out, err = proc.communicate(timeout=300)
            results[mode] = (proc.returncode, out, err)
    finally:
        for proc in procs.values():
            proc.kill()
        for tb in beds.values():
            tb.reconnect(tb.hosts[2])
    failed = {}  # (every mode's verdict, not only the first one's)
    for mode, (status, out, err) in results.items():
        try:
            assert status == 0, f"{out}\n{err}"
            _check_lines(beds[mode], {ln.split("|")[0]: ln.split("|")[1:-1]
                                      for ln in out.splitlines()})
            assert nothing_left(beds[mode], marker=tmp_path / mode) == {}
        except AssertionError as e:
            failed[mode] = str(e)
    assert failed == {}


def _check_lines(tb: Testbed, lines: dict[str, list[str]]) -> None:
    h2, h3 = tb.hosts[1], tb.hosts[2]
    full = str(HOSTS * NCORE)
    # 1. named, then replaced beside its live sibling
    assert f"worker 1 on {h2.address}" in lines["kill9"][0] and "stopped" in lines["kill9"][0]
    assert lines["repair-kill9"][0] == full, lines["repair-kill9"]
    assert lines["after-kill9"] == [str(3 * i) for i in range(1, 9)]
    # 2. named with ssh's words, then relaunched
    assert f"lost {h2.address}: ssh exited with status 255" in lines["sshd"][0]
    assert lines["repair-sshd"][0] == full, lines["repair-sshd"]
    assert lines["after-sshd"] == [str(4 * i) for i in range(1, 9)]
    # 3. the next call is refused instead of returning the interrupted call's results
    assert lines["interrupt"] == ["INTERRUPTED"]
    assert "has not answered an earlier call" in lines["next"][0]
    assert lines["repair-interrupt"][0] == full, lines["repair-interrupt"]
    assert lines["after-interrupt"] == [str(5 * i) for i in range(1, 9)]
    # Ctrl-C interrupts R, not the cluster: no host's session or worker was lost (a
    # worker still busy with the interrupted call may be restarted on a slow machine)
    assert lines["ctrl-c"] == ["INTERRUPTED"]
    assert lines["repair-ctrl-c"][0] == full
    assert " lost (" not in lines["repair-ctrl-c"][1], lines["repair-ctrl-c"]
    assert lines["after-ctrl-c"] == [str(6 * i) for i in range(1, 9)]
    # 4. the lost host is named with ssh's reason (the tasks would sleep for 300 s); it
    # stopped its own workers while cut off; once back, it has all its workers again
    assert f"lost {h3.address}: ssh exited with status 255" in lines["cut"][0]
    assert "not responding" in lines["cut"][0] or "closed" in lines["cut"][0]
    assert lines["cut-host-r"] == ["0"]
    assert lines["repair-cut"][0] == full, lines["repair-cut"]
    assert lines["after-cut"] == [str(7 * i) for i in range(1, 9)]
    assert lines["stopped"] == ["FALSE"]


#: Tries of a failed launch per mode; SSHCLUSTER_FAILED_LAUNCH_TRIES=20 for the loop that
#: process code gets (scripts/loop.sh runs it so).
TRIES = int(os.environ.get("SSHCLUSTER_FAILED_LAUNCH_TRIES", "4"))


@pytest.mark.parametrize("mode", ["direct-fork", "direct-fresh", "tunnel-fork", "tunnel-fresh"])
def test_a_failed_launch_leaves_nothing_every_time(testbed: Testbed, tmp_path: Path,
                                                   mode: str) -> None:
    """One host refuses ssh: the launch fails fast, and a few seconds after each try no R
    (nor its shell) is left in any host's namespace: whatever ends a host's script, at
    whatever moment, nothing it started survives."""
    tb = testbed
    bad = tb.hosts[2]
    f = write_cluster(tb, tmp_path, options=FAST_MODES[mode])
    tb.stop_sshd(bad)
    try:
        for attempt in range(TRIES):
            out = run_r_in_test(f"source({str(f)!r})\ncat('UNEXPECTED')\n", tmp_path)
            assert out.returncode != 0 and "UNEXPECTED" not in out.stdout
            assert f"{bad.address}: ssh exited with status 255" in out.stderr
            assert nothing_left(tb, marker=tmp_path, wait=5) == {}, f"attempt {attempt + 1}"
    finally:
        tb.start_sshd(bad)


def test_a_big_send_to_a_cut_off_host_names_it(make_testbed: MakeTestbed, tmp_path: Path
                                               ) -> None:
    """clusterExport() of 50 MB right after a host vanished: the write into the full send
    buffer gives up and names the host (not a bare 'error writing to connection'), and
    sshcluster_stop() does not wait for that buffer."""
    tb = make_testbed(2)
    f = write_cluster(tb, tmp_path, options=FAST_MODES["direct-fork"])
    h2 = tb.hosts[1]
    # (the shipped timings: this is the test of a send stalled by a lost host)
    out = run_r_in_test(f"""
        source({str(f)!r})
        big <- as.raw(seq_len(50e6) %% 256)
        system(paste("ip netns exec {h2.netns} iptables -w 5 -I INPUT 1 ! -i lo -j DROP;",
                     "ip netns exec {h2.netns} iptables -w 5 -I OUTPUT 1 ! -o lo -j DROP"))
        t0 <- Sys.time()
        r <- tryCatch(parallel::clusterExport(parallelCluster, "big"), error = conditionMessage)
        cat("export|", r, "\\n", sep = "")
        cat("after|", as.numeric(Sys.time() - t0, units = "secs"), "\\n", sep = "")
        t0 <- Sys.time(); sshcluster_stop()
        cat("stop|", as.numeric(Sys.time() - t0, units = "secs"), "\\n", sep = "")
    """, tmp_path, timeout=120)
    try:
        assert out.returncode == 0, out.stderr
        lines = dict(ln.split("|", 1) for ln in out.stdout.splitlines())
        assert f"lost {h2.address}: ssh exited with status 255" in lines["export"]
        # (hang guards: noticed in about 30 s, stopped in a fraction of a second)
        assert float(lines["after"]) < NOTICED and float(lines["stop"]) < 10
        # (the cut-off host stops its own workers later, when the heartbeat falls silent)
        assert nothing_left(tb, marker=tmp_path).keys() <= {h2.hostname}
    finally:
        tb.reconnect(h2)


def test_future_sees_a_lost_host_through_the_tunnel(make_testbed: MakeTestbed, tmp_path: Path
                                                    ) -> None:
    """future waits on the workers' sockets itself, not through the cluster's methods:
    through the tunnel (the default) the end of a lost host's ssh session closes its
    workers' connections, so future_lapply() fails naming the host instead of waiting for
    tasks that would sleep for five minutes."""
    tb = make_testbed(2)
    f = write_cluster(tb, tmp_path, options=RenderOptions())
    h2 = tb.hosts[1]
    cut = tmp_path / "cut.sh"
    cut.write_text(f"sleep 3\nip netns exec {h2.netns} iptables -w 5 -I INPUT 1 ! -i lo -j DROP\n"
                   f"ip netns exec {h2.netns} iptables -w 5 -I OUTPUT 1 ! -o lo -j DROP\n")
    out = run_r_in_test(QUICK_NOTICE_R + f"""
        source({str(f)!r})
        future::plan(future::cluster, workers = parallelCluster)
        system({f"sh {cut}"!r}, wait = FALSE)
        t0 <- Sys.time()
        r <- tryCatch(future.apply::future_lapply(1:4, function(i) {{ Sys.sleep(300); i }}),
                      error = conditionMessage)
        cat("future|", gsub("\\n", " ", r), "\\n", sep = "")
        cat("after|", as.numeric(Sys.time() - t0, units = "secs"), "\\n", sep = "")
        sshcluster_stop()
    """, tmp_path, timeout=120)
    try:
        assert out.returncode == 0, out.stderr
        lines = dict(ln.split("|", 1) for ln in out.stdout.splitlines())
        assert f"lost {h2.address}" in lines["future"]
        assert float(lines["after"]) < NOTICED  # (a hang guard)
    finally:
        tb.reconnect(h2)
