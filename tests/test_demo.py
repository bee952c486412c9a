"""The demo, run as a user runs it: a real R computation across local SSH hosts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from sshcluster.check.report import STEPS, CheckReport, HostReport, StepResult
from sshcluster.cli import cli
from sshcluster.demo import warning_lines
from sshcluster.inventory import Host
from sshcluster.testing.fixtures import skip_or_fail


def test_demo_runs_across_hosts_and_cleans_up(testbed_env: None) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sshcluster", "demo", "--hosts", "2", "--ncore", "2",
         "--tasks", "200"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert re.search(r"^200 simulated closing prices after 365 days on 4 R workers", out, re.M)
    # parLapply splits 200 tasks evenly over 4 workers, 2 on each host.
    assert re.search(r"^  node1\s+100$", out, re.M), out
    assert re.search(r"^  node2\s+100$", out, re.M), out
    name = re.search(r"testbed (\S+) up in", proc.stderr)
    assert name, proc.stderr
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=True).stdout
    assert f"{name.group(1)}-" not in netns
    assert "tearing the test hosts down" in proc.stderr
    assert "sshcluster check: 2 of 2 hosts ready (4 R workers)" in proc.stderr
    # It says that its files are temporary, and they are.
    wrote = re.search(r"^demo: wrote (\S+)/hosts\.yaml and \1/cluster\.R \(2 hosts x 2 = 4 R "
                      r"workers; temporary, removed at the end; `sshcluster demo --keep DIR` "
                      r"keeps them\)$", proc.stderr, re.M)
    assert wrote, proc.stderr
    assert not Path(wrote.group(1)).exists()


def test_demo_keep_keeps_its_files_and_names_the_warnings(
    testbed_env: None, tmp_path: Path
) -> None:
    # More R workers than cores: the check warns, and the demo must say about what. The
    # demo runs on one CPU (its test hosts' sshd, and so nproc there, inherit that), so
    # two workers per host are more than the cores on any machine.
    cpu = min(os.sched_getaffinity(0))
    cores = 1
    keep = tmp_path / "keep"
    proc = subprocess.run(
        [sys.executable, "-m", "sshcluster", "demo", "--hosts", "2", "--ncore", str(cores + 1),
         "--tasks", "20", "--keep", str(keep)],
        capture_output=True, text=True, timeout=300, check=False,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^demo: sshcluster check: 2 of 2 hosts ready .*, 2 with warnings",
                     proc.stderr, re.M), proc.stderr
    assert re.search(rf"^demo:   warning: cores on node1, node2: ncore: {cores + 1} declared, "
                     r"but the host has \d+ cores$", proc.stderr, re.M), proc.stderr
    assert f"wrote {keep}/hosts.yaml and {keep}/cluster.R" in proc.stderr
    assert "kept after the demo" in proc.stderr
    assert (f"demo: kept {keep}: hosts.yaml, cluster.R, demo.R and testbed/ (keys, sshd logs); "
            "the test hosts they name are gone") in proc.stderr
    for name in ("hosts.yaml", "cluster.R", "demo.R", "testbed/known_hosts"):
        assert (keep / name).is_file(), name
    assert "parallelCluster" in (keep / "cluster.R").read_text()
    name = re.search(r"testbed (\S+) up in", proc.stderr)
    assert name, proc.stderr
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=True).stdout
    assert f"{name.group(1)}-" not in netns


def _host(label: str, warnings: dict[str, str]) -> HostReport:
    checks = {s: StepResult("warning", warnings[s]) if s in warnings else StepResult("ok", "fine")
              for s in STEPS}
    return HostReport(host=Host(label, ncore=4), checks=checks, ncore=2)


def test_warning_lines_say_what_each_warning_is_and_where() -> None:
    cores = "ncore: 4 declared, but the host has 2 cores"
    report = CheckReport(primary="10.0.0.1", port=11000, hosts=(
        _host("10.0.0.2", {"load": "busy: load average 2.5 on 2 cores", "cores": cores}),
        _host("10.0.0.3", {"cores": cores}),
        _host("10.0.0.4", {}),
    ))
    assert warning_lines(report, {"10.0.0.2": "node1", "10.0.0.3": "node2"}) == [
        f"warning: cores on node1, node2: {cores}",
        "warning: load on node1: busy: load average 2.5 on 2 cores",
    ]
    assert warning_lines(report)[0] == f"warning: cores on 10.0.0.2, 10.0.0.3: {cores}"


def test_testbed_up_and_down_from_the_cli(testbed_env: None, tmp_path: Path) -> None:
    runner = CliRunner()
    up = runner.invoke(cli, ["testbed", "up", "2", "--dir", f"{tmp_path}/tb", "--port", "11500"])
    assert up.exit_code == 0, up.output
    name = re.search(r"down --name (\S+)", up.stderr)
    assert name
    try:
        assert len(up.stdout.splitlines()) == 2
        text = (tmp_path / "tb" / "hosts.yaml").read_text()
        assert "port: 11500" in text
    finally:
        down = runner.invoke(cli, ["testbed", "down", "--name", name.group(1)])
    assert down.exit_code == 0, down.output
    assert f"removed 1 testbed: {name.group(1)}" in down.stderr
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=True).stdout
    assert f"{name.group(1)}-" not in netns


@pytest.mark.slow
def test_demo_without_root_falls_back_to_a_local_cluster_and_says_so() -> None:
    # A new user namespace: the same files, but no root and no network namespaces.
    if subprocess.run(["unshare", "--user", "true"], check=False).returncode != 0:
        skip_or_fail("user namespaces are not available here")
    proc = subprocess.run(
        ["unshare", "--user", sys.executable, "-m", "sshcluster", "demo", "--hosts", "2",
         "--ncore", "1", "--tasks", "40"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cannot build SSH test hosts here" in proc.stderr
    assert "running on a local cluster of 2 R workers instead" in proc.stderr
    assert re.search(r"^40 simulated closing prices after 365 days on 2 R workers", proc.stdout,
                     re.M)
