"""End to end on real SSH test hosts: the classic bootstrap gives a working R cluster.

(The launch matrix, test_launch_matrix.py, also runs it without known_hosts: in the
inventory, on a host with its own ssh port.)"""

from __future__ import annotations

from pathlib import Path

from sshcluster.bootstrap import RenderOptions, write_bootstrap
from sshcluster.inventory import load_inventory
from sshcluster.quoting import r_string
from sshcluster.testing import Testbed, free_port
from sshcluster.testing.fixtures import run_r_in_test
from sshcluster.testing.leftovers import nothing_left


def test_classic_bootstrap_runs_r_across_hosts(testbed: Testbed, tmp_path: Path) -> None:
    inv_path = tmp_path / "hosts.yaml"
    testbed.write_inventory(inv_path, ncore=2, port=free_port())
    inventory = load_inventory(inv_path)
    cluster_r = tmp_path / "cluster.R"
    write_bootstrap(inventory, cluster_r, RenderOptions(launch="classic"))
    assert "start_classic(" in cluster_r.read_text()

    proc = run_r_in_test(
        f"source({r_string(str(cluster_r))})\n"
        "cat('workers', length(parallelCluster), '\\n')\n"
        "nodes <- unlist(parallel::clusterEvalQ(parallelCluster, Sys.info()[['nodename']]))\n"
        "for (n in sort(unique(nodes))) cat('node', n, sum(nodes == n), '\\n')\n"
        "sq <- parallel::parSapply(parallelCluster, 1:100, function(i) i * i)\n"
        "cat('sum', sum(sq), '\\n')\n"
        "pids <- unlist(parallel::clusterEvalQ(parallelCluster, Sys.getpid()))\n"
        "cat('distinct', length(unique(paste(nodes, pids))), '\\n')\n"
        "sshcluster_stop()\n"
        "cat('stopped', exists('parallelCluster'), '\\n')\n",
        tmp_path,
        timeout=180,
    )
    assert proc.returncode == 0, f"R failed:\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    n = len(testbed.hosts)
    assert lines[0] == f"workers {2 * n} "
    assert lines[1 : 1 + n] == [f"node {h.hostname} 2 " for h in
                                sorted(testbed.hosts, key=lambda h: h.hostname)]
    assert f"sum {sum(i * i for i in range(1, 101))} " in lines
    assert f"distinct {2 * n} " in lines
    assert lines[-1] == "stopped FALSE "
    # stopCluster leaves nothing behind on any host, nor on the primary.
    assert nothing_left(testbed, marker=tmp_path) == {}


def test_a_classic_launch_that_fails_after_makecluster_stops_its_workers(
        testbed: Testbed, tmp_path: Path) -> None:
    """What the classic launch does on the workers after makeCluster() (the workdir, the
    locale, sync's library, what register: needs) stops the cluster when it fails: here
    a workdir no host can make. R goes on with none of the launch's connections open
    (they were left to R's garbage collector before)."""
    inv_path = tmp_path / "hosts.yaml"
    testbed.write_inventory(inv_path, ncore=1, port=free_port(),
                            extra={"workdir": "/proc/sshcluster-no-such-dir"})
    cluster_r = tmp_path / "cluster.R"
    write_bootstrap(load_inventory(inv_path), cluster_r, RenderOptions(launch="classic"))
    proc = run_r_in_test(
        f"e <- tryCatch(source({r_string(str(cluster_r))}), error = conditionMessage)\n"
        "cat('error', e, '\\n')\n"
        "cat('connections', nrow(showConnections()), '\\n')\n"
        "cat('cluster', exists('parallelCluster'), '\\n')\n",
        tmp_path, timeout=180)
    assert proc.returncode == 0, f"R failed:\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    assert any(ln.startswith("error ") and "working directory" in ln for ln in lines), lines
    assert "connections 0 " in lines and "cluster FALSE " in lines
    # (stopped by the launch, not left to R's garbage collector, which says so)
    assert "closing unused connection" not in proc.stderr, proc.stderr
    assert nothing_left(testbed, marker=tmp_path) == {}
