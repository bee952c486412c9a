"""workdir: on real SSH test hosts, each with a disk of its own there, the workers start
in the inventory's workdir, so a relative read.csv inside parLapply reads each host's
own copy of the file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sshcluster.bootstrap import write_bootstrap
from sshcluster.inventory import load_inventory
from sshcluster.quoting import r_string
from sshcluster.testing import Testbed
from sshcluster.testing.fixtures import MakeTestbed, run_r_in_test

WORKDIR = "/srv/sshcluster-test-work"


@pytest.mark.parametrize("launch", ["fast", "classic"])
def test_relative_read_csv_in_parlapply_reads_the_hosts_own_file(
    make_testbed: MakeTestbed, tmp_path: Path, launch: str
) -> None:
    tb: Testbed = make_testbed(2, private_dirs={"/srv": "16m"})
    for h in tb.hosts:
        # Each host gets its own file, made over ssh (so, in the host's own /srv): a
        # worker that reads another host's file, or none, shows in the answer.
        subprocess.run(tb.ssh_argv(h, f"mkdir -p {WORKDIR}/data && printf 'x\\n{h.index}\\n'"
                                   f" > {WORKDIR}/data/x.csv"), check=True, timeout=30)
    inv = tb.write_inventory(tmp_path / "hosts.yaml", ncore=2, port=11000 + (tmp_path.stat(
        ).st_ino % 900), extra={"workdir": WORKDIR, "launch": launch})
    cluster_r = tmp_path / "cluster.R"
    write_bootstrap(load_inventory(inv), cluster_r)
    proc = run_r_in_test(
        f"source({r_string(str(cluster_r))})\n"
        "cat('told', workdir, '\\n')\n"
        "got <- parallel::parLapply(parallelCluster, seq_along(parallelCluster), function(i)\n"
        "  paste(Sys.info()[['nodename']], getwd(), read.csv('data/x.csv')$x))\n"
        "for (g in sort(unlist(got))) cat(g, '\\n')\n"
        "sshcluster_stop()\n",
        tmp_path,
        timeout=180,
    )
    assert proc.returncode == 0, f"R failed:\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    assert lines[0] == f"told {WORKDIR} "
    assert lines[1:] == [f"{h.hostname} {WORKDIR} {h.index} " for h in tb.hosts for _ in (1, 2)]


def test_a_missing_workdir_is_made(make_testbed: MakeTestbed, tmp_path: Path) -> None:
    tb: Testbed = make_testbed(1, private_dirs={"/srv": "16m"})
    inv = tb.write_inventory(tmp_path / "hosts.yaml", ncore=1,
                             extra={"workdir": f"{WORKDIR}/new/deeper"})
    cluster_r = tmp_path / "cluster.R"
    write_bootstrap(load_inventory(inv), cluster_r)
    proc = run_r_in_test(
        f"source({r_string(str(cluster_r))})\n"
        "cat(unlist(parallel::clusterEvalQ(parallelCluster, getwd())), '\\n')\n"
        "sshcluster_stop()\n",
        tmp_path,
    )
    assert proc.returncode == 0, f"R failed:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.splitlines() == [f"{WORKDIR}/new/deeper "]
    # made on the host only, not on this machine's disk
    assert not Path(f"{WORKDIR}/new").exists()
