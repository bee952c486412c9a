"""The run directory's place and the summary's shape (no hosts needed)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from sshcluster.cli import cli
from sshcluster.jobs import RunResult, runs_dir
from sshcluster.jobs.control import list_jobs
from sshcluster.jobs.record import read_note, write_owner, write_record


def test_runs_live_under_the_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SSHCLUSTER_STATE_DIR", str(tmp_path))
    assert runs_dir() == tmp_path / "runs"
    monkeypatch.delenv("SSHCLUSTER_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert runs_dir() == tmp_path / "xdg" / "sshcluster" / "runs"


def test_the_summary_is_written_and_reads_back(tmp_path: Path) -> None:
    result = RunResult(job="j1", script="fit.R", args=("1", "a b"), status=3,
                       hosts=("h1", "h2:2222"), left_out=("h3",),
                       phases={"check": 0.5, "script": 2.25}, started="2026-01-01T00:00:00",
                       run_dir=str(tmp_path), versions={"sshcluster": "0.1.0"})
    assert not result.ok and result.wall == 2.75
    data = json.loads(write_record(result).read_text())
    assert data["status"] == 3 and data["args"] == ["1", "a b"]
    assert data["hosts"] == ["h1", "h2:2222"] and data["left_out"] == ["h3"]
    assert data["signal"] is None and data["error"] is None


def test_a_missing_note_is_none(tmp_path: Path) -> None:
    assert read_note(tmp_path, "launched") is None
    (tmp_path / "launched").write_text("12.5\n")
    assert read_note(tmp_path, "launched") == "12.5"


def test_jobs_lists_an_attached_job_that_runs_or_died(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An attached job without its run.json: running while its process lives, failed
    once that process is gone (a killed job writes no record)."""
    monkeypatch.setenv("SSHCLUSTER_STATE_DIR", str(tmp_path))
    alive = tmp_path / "runs" / "20260101-000000-aaaaaa"
    dead = tmp_path / "runs" / "20260101-000000-bbbbbb"
    for d in (alive, dead):
        d.mkdir(parents=True)
    write_owner(alive, "/x/fit.R")
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    (dead / "owner").write_text(f"{proc.pid} 1\nfit.R\n")
    jobs = {j.job: j for j in list_jobs()}
    assert jobs[alive.name].state == "running" and jobs[alive.name].script == "fit.R"
    assert jobs[dead.name].state == "failed"
    assert "without a record" in str(jobs[dead.name].detail)


def test_logs_shows_an_attached_job_s_log(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSHCLUSTER_STATE_DIR", str(tmp_path))
    run_dir = tmp_path / "runs" / "20260101-000000-cccccc"
    run_dir.mkdir(parents=True)
    (run_dir / "log").write_bytes(b"line 1\nline 2\n")
    (run_dir / "run.json").write_text("{}\n")
    result = CliRunner().invoke(cli, ["logs", "-f", run_dir.name])
    assert result.exit_code == 0 and result.output == "line 1\nline 2\n"


def test_a_job_s_access_never_shows_its_private_key(tmp_path: Path) -> None:
    """PrimaryAccess (run --ec2 --detach) in a log line or a traceback: no private key."""
    from sshcluster.jobs.detached import PrimaryAccess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True, timeout=30)
    key = (tmp_path / "k").read_bytes()
    access = PrimaryAccess(addresses={"h1": ("10.0.0.1", 22)}, key=key,
                           known_hosts=b"10.0.0.1 ssh-ed25519 AAAA\n", homes={"h1": "/root"})
    assert b"PRIVATE KEY" in key and access.key == key
    assert "PRIVATE KEY" not in repr(access) and "PRIVATE KEY" not in str(access)
    assert "10.0.0.1" in repr(access)
