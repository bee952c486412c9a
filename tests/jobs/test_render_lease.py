"""``lease: true``: the cluster of a rendered file leases its hosts for as long as it
lives (each host's session of the fast launch holds the lease), so ``run`` and a second
cluster refuse them, naming it; when it stops, they are free."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from sshcluster.bootstrap import render, write_bootstrap
from sshcluster.errors import RenderError
from sshcluster.inventory import load_inventory, parse_inventory
from sshcluster.jobs import list_leases
from sshcluster.quoting import r_string
from sshcluster.testing import Testbed
from tests.jobs.helpers import JOB_TIMEOUT, LEFTOVER, inventory, sshcluster


def test_lease_true_is_read_and_needs_the_fast_launch() -> None:
    inv = parse_inventory("primary: 10.0.0.1\nlease: true\nhosts: [{host: 10.0.0.2}]\n")
    assert inv.lease is True
    assert "lease = TRUE" in render(inv)
    with pytest.raises(RenderError, match="lease: true is for the fast launch"):
        render(parse_inventory("primary: 10.0.0.1\nlease: true\nlaunch: classic\n"
                               "hosts: [{host: 10.0.0.2}]\n"))


def test_a_rendered_cluster_holds_its_hosts_leases(testbed: Testbed, tmp_path: Path) -> None:
    inv_path = inventory(testbed, tmp_path / "hosts.yaml", hosts=[0, 1])
    data = yaml.safe_load(inv_path.read_text())
    data["lease"] = True
    inv_path.write_text(yaml.safe_dump(data))
    inv = load_inventory(inv_path)
    write_bootstrap(inv, tmp_path / "cluster.R")
    up, flag = tmp_path / "up", tmp_path / "flag"
    holder = tmp_path / "hold.R"
    holder.write_text(
        f"source({r_string(str(tmp_path / 'cluster.R'))})\n"
        f"file.create({r_string(str(up))})\n"
        f"for (i in 1:600) {{ if (file.exists({r_string(str(flag))})) break; Sys.sleep(0.1) }}\n"
        "sshcluster_stop()\n")
    first = subprocess.Popen(["Rscript", str(holder)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        while not up.exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the cluster did not start"
            time.sleep(0.1)
        leases = list_leases(inv)
        assert all(lease.holder is not None and lease.holder.script == "cluster.R"
                   and lease.holder.job.startswith("R-") for lease in leases), leases
        job = leases[0].holder.job  # type: ignore[union-attr]
        # 'run' refuses them, naming the cluster
        script = tmp_path / "s.R"
        script.write_text("cat('never\\n')\n")
        refused = sshcluster(["run", str(inv_path), str(script)], tmp_path / "state")
        assert refused.returncode == 1 and f"is leased to job {job}" in refused.stderr
        # and so does a second rendered cluster, whose launch fails naming the holder
        second = subprocess.run(
            ["Rscript", "-e", f"source({r_string(str(tmp_path / 'cluster.R'))})"],
            capture_output=True, text=True, timeout=JOB_TIMEOUT, cwd=tmp_path)
        assert second.returncode != 0
        assert f"is leased to job {job}" in second.stderr, second.stderr
        flag.touch()
        _, err = first.communicate(timeout=JOB_TIMEOUT)
        assert first.returncode == 0, err
    finally:
        flag.touch()
        if first.poll() is None:
            first.kill()
            first.wait()
    assert testbed.leftovers(LEFTOVER, wait=15) == {}
    assert all(lease.holder is None for lease in list_leases(inv))
