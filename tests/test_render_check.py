"""``sshcluster render --check``: render what the preflight check verified."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from sshcluster.cli import cli
from sshcluster.inventory import load_inventory
from sshcluster.quoting import r_string
from sshcluster.testing import free_port
from sshcluster.testing.leftovers import launch_env, nothing_left


def _auto_inventory(testbed: Any, path: Path) -> Path:
    testbed.write_inventory(path, port=free_port())  # (not one in R's range: taken at times)
    data = yaml.safe_load(path.read_text())
    data["primary"]["host"] = "auto"
    data["defaults"]["ncore"] = "auto"
    path.write_text(yaml.safe_dump(data))
    return path


def test_check_fills_in_auto_values_and_the_file_works(testbed: Any, tmp_path: Path) -> None:
    inv_path = _auto_inventory(testbed, tmp_path / "hosts.yaml")
    out = tmp_path / "cluster.R"
    result = CliRunner().invoke(cli, ["render", str(inv_path), "--check", "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    cores = os.cpu_count()
    assert f'primary <- "{testbed.primary_address}"' in text
    assert text.count(f"ncore = {cores}L") == len(testbed.hosts)
    assert f"Checked by 'sshcluster check': {len(testbed.hosts)} of {len(testbed.hosts)}" in text
    proc = subprocess.run(
        ["Rscript", "-e", f"source({r_string(str(out))}); cat(length(parallelCluster));"
                          " sshcluster_stop()"],
        capture_output=True, text=True, timeout=120, check=False, env=launch_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == str(cores * len(testbed.hosts))
    assert nothing_left(testbed, marker=tmp_path) == {}


def test_a_failed_host_stops_the_render_unless_allow_partial(testbed: Any,
                                                             tmp_path: Path) -> None:
    inv_path = testbed.write_inventory(tmp_path / "hosts.yaml", ncore=1, port=free_port())
    down = testbed.hosts[1]
    out = tmp_path / "cluster.R"
    testbed.stop_sshd(down)
    try:
        result = CliRunner().invoke(cli, ["render", str(inv_path), "--check", "-o", str(out),
                                          "--timeout", "5"])
        assert result.exit_code == 1
        assert f"not rendered: 1 of {len(testbed.hosts)} hosts failed the check" in result.stderr
        assert down.address in result.stderr  # the report names the host
        assert not out.exists()

        result = CliRunner().invoke(cli, ["render", str(inv_path), "--check", "-o", str(out),
                                          "--timeout", "5", "--allow-partial"])
        assert result.exit_code == 0, result.output
        assert f"left out {down.address}: failed connect" in result.stderr
    finally:
        testbed.start_sshd(down)
    text = out.read_text()
    assert f"# Left out (--allow-partial): {down.address}: failed connect" in text
    assert f'host = "{down.address}"' not in text
    assert load_inventory(inv_path).hosts[1].host == down.address  # the inventory is kept


def test_allow_partial_needs_check(tmp_path: Path) -> None:
    inv = tmp_path / "h.yaml"
    inv.write_text("primary: p\nhosts: [a]\n")
    result = CliRunner().invoke(cli, ["render", str(inv), "--allow-partial"])
    assert result.exit_code == 2
    assert "--allow-partial goes with --check" in result.output


def test_render_check_with_the_tunnel_checks_through_it(testbed: Any, tmp_path: Path) -> None:
    """A host that cannot reach the primary's port fails `render --check --tunnel none`;
    through the tunnel (the default) the check calls back through ssh too."""
    port = free_port()  # (not in R's range, where another test's cluster may be)
    inv_path = testbed.write_inventory(tmp_path / "hosts.yaml", ncore=1, port=port)
    blocked = testbed.hosts[0]
    out = tmp_path / "cluster.R"
    testbed.reject(blocked, port)
    try:
        plain = CliRunner().invoke(cli, ["render", str(inv_path), "--check", "-o", str(out),
                                         "--timeout", "5", "--tunnel", "none"])
        tunnelled = CliRunner().invoke(cli, ["render", str(inv_path), "--check", "-o",
                                             str(out), "--timeout", "5", "--tunnel", "reverse"])
    finally:
        testbed.allow(blocked, port)
    assert plain.exit_code == 1
    assert f"1 failed (callback: {blocked.address})" in plain.stderr
    assert tunnelled.exit_code == 0, tunnelled.output
    assert "tunnel = TRUE" in out.read_text()


@pytest.mark.parametrize("source", ["option", "inventory launch", "inventory tunnel"])
def test_render_check_takes_the_route_of_the_launch_that_will_run(
        testbed: Any, tmp_path: Path, source: str) -> None:
    """A launch that connects straight to the primary (the classic launch, or the fast
    one without the tunnel), whatever setting says so, is checked straight too: a host
    that cannot reach the primary's port fails the check, and no file is written. (The
    check of `--launch classic` used to go through the tunnel, and pass.)"""
    port = free_port()
    extra = {"option": {}, "inventory launch": {"launch": "classic"},
             "inventory tunnel": {"tunnel": "none"}}[source]
    inv_path = testbed.write_inventory(tmp_path / "hosts.yaml", ncore=1, port=port,
                                       extra=extra)
    blocked = testbed.hosts[0]
    out = tmp_path / "cluster.R"
    args = ["--launch", "classic"] if source == "option" else []
    testbed.reject(blocked, port)
    try:
        result = CliRunner().invoke(cli, ["render", str(inv_path), "--check", "-o", str(out),
                                          "--timeout", "5", *args])
    finally:
        testbed.allow(blocked, port)
    assert result.exit_code == 1, result.output
    assert f"1 failed (callback: {blocked.address})" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("args", [[], ["--launch", "classic"], ["--launch", "fast"]])
def test_render_check_checks_for_the_launch_the_file_will_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    """What the check tries depends on the launch (the classic one's R starts as ssh
    leaves it, the fast one's needs R 4.1 and the script on ssh's stdin): --launch is
    the launch the check is told of. (Only that is looked at here: the check itself,
    stood in for, would need hosts.)"""
    from sshcluster import cli as cli_module

    inv = tmp_path / "hosts.yaml"
    inv.write_text("primary: 127.0.0.1\nlaunch: fast\nhosts:\n  - host: 127.0.0.2\n")
    seen = []

    class Stop(Exception):
        pass

    def run_check(checked: Any, **_: Any) -> Any:
        seen.append(checked)
        raise Stop

    monkeypatch.setattr(cli_module, "_run_check", run_check)
    result = CliRunner().invoke(cli, ["render", str(inv), "--check", *args])
    assert isinstance(result.exception, Stop), result.output
    assert [i.launch for i in seen] == [args[1] if args else "fast"]
