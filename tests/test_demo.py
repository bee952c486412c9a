"""The demo, run as a user runs it: a real R computation across local SSH hosts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from conftest import skip_or_fail

from sshcluster.cli import cli


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
