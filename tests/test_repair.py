"""``sshcluster_repair()`` (repair.R) on real test hosts, in the cases the fault tests
(tests/test_cluster_faults.py, tests/test_launch_matrix.py) leave out: a repair that
goes on without a host for good, behind relays that carry every message; and a repair
interrupted (Ctrl-C) while it waits for the workers it started again, after which a
second repair must still bring the cluster back.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
    assert [v for k, v in (ln.split("|", 1) for ln in out.stdout.splitlines())
            if k == "apply"] == ["1 0", "1 0"], out.stdout
    assert said["lb"].split() == ["1", "0", "0", "0"]
    assert nothing_left(tb, marker=tmp_path) == {}
