"""A running cluster meets real faults: each is named, nothing is left behind, and
``sshcluster_repair()`` goes on without what was lost.

In every launch mode (forked workers, fresh workers, the reverse tunnel), one R session
meets in turn:

* a worker killed with SIGKILL on a live host;
* the host's sshd session killed;
* a call interrupted by SIGINT (the next call must not return that call's results), and
  a Ctrl-C sent to the whole process group, as a terminal sends it;
* a host cut off from the network (all its packets dropped) during a long parLapply.

The tasks sleep far longer than the test lets R run, so an answer can only come from the
fault being noticed. After the cut, sshcluster_stop() must return, the other hosts must
be empty, and the cut-off host must stop its own workers while it is still cut off.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sshcluster.bootstrap import RenderOptions, write_bootstrap
from sshcluster.inventory import load_inventory
from sshcluster.testing import Testbed, TestHost
from sshcluster.testing.fixtures import MakeTestbed, run_r_in_test

pytestmark = pytest.mark.slow  # faults

LEFTOVER = "R|sh|sleep|bash"
#: direct connections with forked or fresh workers, and the default: the tunnel (forked).
MODES = {"fork": RenderOptions(fork=True, tunnel="none"),
         "fresh": RenderOptions(fork=False, tunnel="none"),
         "tunnel": RenderOptions(tunnel="reverse")}


def _cluster_r(tb: Testbed, tmp_path: Path, options: RenderOptions) -> Path:
    inv = tb.write_inventory(tmp_path / "hosts.yaml", ncore=2)
    out = tmp_path / "cluster.R"
    write_bootstrap(load_inventory(inv), out, options)
    return out


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
    f = _cluster_r(tb, tmp_path, MODES[mode])
    h3, h4 = tb.hosts[2], tb.hosts[3]
    cut = tmp_path / "cut.sh"
    cut.write_text(f"sleep 2\nip netns exec {h4.netns} iptables -w 5 -I INPUT 1 ! -i lo -j DROP\n"
                   f"ip netns exec {h4.netns} iptables -w 5 -I OUTPUT 1 ! -o lo -j DROP\n")
    code = f"""
        say <- function(key, ...) cat(key, ..., "\\n", sep = "|")
        try_msg <- function(expr) tryCatch(expr, error = conditionMessage,
                                           interrupt = function(e) "INTERRUPTED")
        source({str(f)!r})
        later <- function(what) system(sprintf("sh -c 'sleep 1; %s'", what), wait = FALSE)
        # 1. a worker killed on a live host, while R waits for another (busy) worker
        pids <- unlist(parallel::clusterEvalQ(parallelCluster, Sys.getpid()))
        later(sprintf("kill -9 %d", pids[3]))
        say("kill9", try_msg(parallel::parLapply(parallelCluster, 1:8, function(i) {{
          Sys.sleep(300); i }})))
        parallelCluster <- sshcluster_repair()
        say("after-kill9", parallel::parSapply(parallelCluster, 1:8, function(i) i * 3))
        # 2. the host's sshd session killed (in a long call: with direct connections its
        # workers could otherwise answer a short one before anything noticed the kill)
        system({f"sh {_kill_session_script(tmp_path, h3)}"!r})
        say("sshd", try_msg(parallel::parSapply(parallelCluster, 1:8, function(i) {{
          Sys.sleep(300); i }})))
        parallelCluster <- sshcluster_repair()
        say("after-sshd", parallel::parSapply(parallelCluster, 1:8, function(i) i * 4))
        # 3. an interrupted call; then Ctrl-C to the whole process group
        later(sprintf("kill -INT %d", Sys.getpid()))
        say("interrupt", try_msg(parallel::parLapply(parallelCluster, 1:8, function(i) {{
          Sys.sleep(30); i }})))
        say("next", try_msg(parallel::parSapply(parallelCluster, 1:8, function(i) -i)))
        parallelCluster <- sshcluster_repair()
        say("after-interrupt", parallel::parSapply(parallelCluster, 1:8, function(i) i * 5))
        later(sprintf("kill -s INT -- -%d", Sys.getpid()))
        say("ctrl-c", try_msg(parallel::parLapply(parallelCluster, 1:8, function(i) {{
          Sys.sleep(3); i }})))
        parallelCluster <- sshcluster_repair()
        say("after-ctrl-c", parallel::parSapply(parallelCluster, 1:8, function(i) i * 6))
        # 4. a host cut off in the middle of a long call
        system({f"sh {cut}"!r}, wait = FALSE)
        t0 <- Sys.time()
        say("cut", try_msg(parallel::parLapply(parallelCluster, 1:8, function(i) {{
          Sys.sleep(300); i }})))
        say("noticed-after", as.numeric(Sys.time() - t0, units = "secs"))
        t0 <- Sys.time()
        sshcluster_stop()
        say("stop-took", as.numeric(Sys.time() - t0, units = "secs"))
    """
    return subprocess.Popen(["setsid", "-w", "Rscript", "-e", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_faults_are_named_and_repaired(make_testbed: MakeTestbed, tmp_path: Path) -> None:
    """Every launch mode at once, each on test hosts of its own (the faults are slow to
    play out, so the modes wait side by side)."""
    beds = {mode: make_testbed(4) for mode in sorted(MODES)}
    procs = {}
    for mode, tb in beds.items():
        (tmp_path / mode).mkdir()
        procs[mode] = _start_scenario(tb, tmp_path / mode, mode)
    results = {}
    try:
        for mode, proc in procs.items():
            out, err = proc.communicate(timeout=200)
            results[mode] = (proc.returncode, out, err)
        for mode, tb in beds.items():
            h4 = tb.hosts[3]
            assert {k: v for k, v in tb.leftovers(LEFTOVER, wait=10).items()
                    if k != h4.hostname} == {}, f"{mode}: workers left on hosts not cut off"
        for mode, tb in beds.items():
            # The cut-off host stops its own workers, while it is still cut off.
            h4 = tb.hosts[3]
            left = tb.leftovers(LEFTOVER, wait=90)
            assert h4.hostname not in left, f"{mode}: {h4.hostname} kept {left} while cut off"
    finally:
        for proc in procs.values():
            proc.kill()
        for tb in beds.values():
            tb.reconnect(tb.hosts[3])
    for mode, (status, out, err) in results.items():
        assert status == 0, f"{mode}:\n{out}\n{err}"
        _check_lines(beds[mode], {ln.split("|")[0]: ln.split("|")[1:-1]
                                  for ln in out.splitlines()})


def _check_lines(tb: Testbed, lines: dict[str, list[str]]) -> None:
    h2, h3, h4 = tb.hosts[1], tb.hosts[2], tb.hosts[3]
    # 1. named, then replaced
    assert f"worker 1 on {h2.address}" in lines["kill9"][0] and "stopped" in lines["kill9"][0]
    assert lines["after-kill9"] == [str(3 * i) for i in range(1, 9)]
    # 2. named with ssh's words, then relaunched
    assert f"lost {h3.address}: ssh exited with status 255" in lines["sshd"][0]
    assert lines["after-sshd"] == [str(4 * i) for i in range(1, 9)]
    # 3. the next call is refused instead of returning the interrupted call's results
    assert lines["interrupt"] == ["INTERRUPTED"]
    assert "has not answered an earlier call" in lines["next"][0]
    assert lines["after-interrupt"] == [str(5 * i) for i in range(1, 9)]
    assert lines["after-ctrl-c"] == [str(6 * i) for i in range(1, 9)]
    # 4. the lost host is named with ssh's reason (the tasks would sleep for 300 s)
    assert f"lost {h4.address}: ssh exited with status 255" in lines["cut"][0]
    assert "not responding" in lines["cut"][0] or "closed" in lines["cut"][0]
    assert float(lines["noticed-after"][0]) < 45
    assert float(lines["stop-took"][0]) < 10


@pytest.mark.parametrize(("mode", "times"), [("fork", 20), ("fresh", 5), ("tunnel", 5)])
def test_a_failed_launch_leaves_nothing_every_time(testbed: Testbed, tmp_path: Path,
                                                   mode: str, times: int) -> None:
    """One host refuses ssh: the launch fails fast, and a few seconds after each try no R
    (nor its shell) is left in any host's namespace: whatever ends a host's script, at
    whatever moment, nothing it started survives."""
    tb = testbed
    bad = tb.hosts[2]
    f = _cluster_r(tb, tmp_path, MODES[mode])
    tb.stop_sshd(bad)
    try:
        for attempt in range(times):
            out = run_r_in_test(f"source({str(f)!r})\ncat('UNEXPECTED')\n", tmp_path)
            assert out.returncode != 0 and "UNEXPECTED" not in out.stdout
            assert f"{bad.address}: ssh exited with status 255" in out.stderr
            assert tb.leftovers(LEFTOVER, wait=5) == {}, f"attempt {attempt + 1}"
    finally:
        tb.start_sshd(bad)


def test_a_big_send_to_a_cut_off_host_names_it(make_testbed: MakeTestbed, tmp_path: Path
                                               ) -> None:
    """clusterExport() of 50 MB right after a host vanished: the write into the full send
    buffer gives up and names the host (not a bare 'error writing to connection'), and
    sshcluster_stop() does not wait for that buffer."""
    tb = make_testbed(2)
    f = _cluster_r(tb, tmp_path, MODES["fork"])
    h2 = tb.hosts[1]
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
        assert float(lines["after"]) < 45 and float(lines["stop"]) < 10
        assert tb.leftovers(LEFTOVER, wait=10).keys() <= {h2.hostname}
    finally:
        tb.reconnect(h2)


def test_future_sees_a_lost_host_through_the_tunnel(make_testbed: MakeTestbed, tmp_path: Path
                                                    ) -> None:
    """future waits on the workers' sockets itself, not through the cluster's methods:
    through the tunnel (the default) the end of a lost host's ssh session closes its
    workers' connections, so future_lapply() fails naming the host instead of waiting for
    tasks that would sleep for five minutes."""
    tb = make_testbed(2)
    f = _cluster_r(tb, tmp_path, RenderOptions())
    h2 = tb.hosts[1]
    cut = tmp_path / "cut.sh"
    cut.write_text(f"sleep 3\nip netns exec {h2.netns} iptables -w 5 -I INPUT 1 ! -i lo -j DROP\n"
                   f"ip netns exec {h2.netns} iptables -w 5 -I OUTPUT 1 ! -o lo -j DROP\n")
    out = run_r_in_test(f"""
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
        assert float(lines["after"]) < 45
    finally:
        tb.reconnect(h2)
