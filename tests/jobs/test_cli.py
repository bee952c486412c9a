"""The run and jobs commands' command line (no hosts needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
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


def test_the_job_commands_have_help() -> None:
    for name in ("logs", "stop", "fetch"):
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0
        assert "JOB" in result.output
    run_help = CliRunner().invoke(cli, ["run", "--help"]).output
    for option in ("--detach", "--primary", "--results", "--worker-output", "--ec2", "--keep"):
        assert option in run_help


def test_options_that_belong_to_others_are_usage_errors(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.yaml"
    inv.write_text("primary: {host: 127.0.0.1}\nhosts: [{host: 127.0.0.1}]\n")
    script = tmp_path / "s.R"
    script.write_text("1\n")
    for extra, said in ((["--primary", "a"], "--primary is for --detach"),
                        (["--keep"], "--keep is for --ec2"),
                        (["--detach", "--results", "out"], "sshcluster fetch JOB")):
        result = CliRunner().invoke(cli, ["run", *extra, str(inv), str(script)])
        assert result.exit_code == 2, (extra, result.output)
        assert said in result.output


def test_jobs_without_records_lists_nothing(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSHCLUSTER_STATE_DIR", str(tmp_path))
    result = CliRunner().invoke(cli, ["jobs", "--json"])
    assert result.exit_code == 0 and result.output.strip() == "[]"
