"""The run and jobs commands' command line (no hosts needed)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from sshcluster.cli import cli


def test_run_and_jobs_have_help() -> None:
    for name in ("run", "jobs"):
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0
        assert "INVENTORY" in result.output


def test_run_needs_a_script_that_exists(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.yaml"
    inv.write_text("primary: {host: 127.0.0.1}\nhosts: [{host: 127.0.0.1}]\n")
    result = CliRunner().invoke(cli, ["run", str(inv), str(tmp_path / "missing.R")])
    assert result.exit_code == 2
    assert "missing.R" in result.output


def test_a_wrong_inventory_is_exit_2(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.yaml"
    inv.write_text("hosts: 3\n")
    script = tmp_path / "s.R"
    script.write_text("1\n")
    result = CliRunner().invoke(cli, ["run", str(inv), str(script)])
    assert result.exit_code == 2
    assert "hosts.yaml" in result.output
