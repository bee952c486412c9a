"""The command line against what a script or a hostile record hands it: standard output
closed or full, command lines click refuses under --json, records with numbers JSON
cannot hold, and text that a terminal would act on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sshcluster.ec2.spec import parse_spec
from sshcluster.quoting import printable

STATE_DIR = "SSHCLUSTER_STATE_DIR"


def sshcluster(*args: str, tmp_path: Path, shell_tail: str = "",
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``sshcluster ARGS`` in a shell (``shell_tail``: its redirections), with a state
    directory of the test's own."""
    words = " ".join(f"'{a}'" for a in args)
    return subprocess.run(["sh", "-c", f"exec '{sys.executable}' -m sshcluster {words} "
                           f"{shell_tail}"], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "NO_COLOR": "1",
                               STATE_DIR: str(tmp_path / "state")})


def no_nan(text: str) -> object:
    """``text`` read as strict JSON (NaN and Infinity are not JSON)."""
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("args", [["example"], ["ec2", "example"], ["init", "-o", "-",
                                                                    "--hosts", "a,b"]])
def test_a_closed_or_full_standard_output_is_an_error_not_a_success(
        tmp_path: Path, args: list[str]) -> None:
    """Output lost must not look like success, nor end in a traceback."""
    closed = sshcluster(*args, tmp_path=tmp_path, shell_tail=">&-")
    assert closed.returncode == 1
    assert "error: standard output is closed" in closed.stderr
    full = sshcluster(*args, tmp_path=tmp_path, shell_tail="> /dev/full")
    assert full.returncode == 1, full.stderr
    assert "error: cannot write the output: No space left on device" in full.stderr
    for done in (closed, full):
        assert "Traceback" not in done.stderr


def test_a_log_that_cannot_be_written_out_fails(tmp_path: Path) -> None:
    job = tmp_path / "state" / "runs" / "20260101-000000-aaaaaa"
    job.mkdir(parents=True)
    (job / "log").write_text("line 1\n" * 1000)
    assert sshcluster("logs", job.name, tmp_path=tmp_path).stdout.startswith("line 1\n")
    full = sshcluster("logs", job.name, tmp_path=tmp_path, shell_tail="> /dev/full")
    assert full.returncode == 1
    assert "No space left on device" in full.stderr and "Traceback" not in full.stderr


@pytest.mark.parametrize("case", ["a directory", "jobs, a directory", "a bad region"])
def test_a_refused_command_line_is_json_too_under_json(tmp_path: Path, case: str) -> None:
    args = {"a directory": ["check", "--json", str(tmp_path)],
            "jobs, a directory": ["jobs", str(tmp_path), "--json"],
            "a bad region": ["ec2", "ls", "--region", "nowhere", "--json"]}[case]
    done = sshcluster(*args, tmp_path=tmp_path)
    assert done.returncode == 2
    doc = json.loads(done.stdout)  # (one document: not one per enclosing group)
    assert doc["ok"] is False and doc["error"]["kind"] == "usage"
    assert doc["error"]["exit_code"] == 2 and "Invalid value" in doc["error"]["message"]
    assert "Usage: sshcluster" in done.stderr
    # without --json, stdout stays empty, as before
    plain = sshcluster(*[a for a in args if a != "--json"], tmp_path=tmp_path)
    assert plain.returncode == 2 and plain.stdout == ""


def test_an_error_document_carries_its_exit_status(tmp_path: Path) -> None:
    done = sshcluster("status", str(tmp_path / "missing.yaml"), "--json", tmp_path=tmp_path)
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"]["exit_code"] == 2


def test_records_with_numbers_json_cannot_hold_still_list_as_json(tmp_path: Path) -> None:
    runs = tmp_path / "state" / "runs"
    records = {
        "20260101-000000-aaaaaa": '{"status": 0, "script": "a.R", "phases": {"a": NaN}}',
        "20260101-000000-bbbbbb": '{"status": 0, "script": "b.R", "phases": {"a": 1'
                                  + "0" * 400 + "}}",
        "20260101-000000-cccccc": '{"status": 1e999, "script": "c.R", "phases": {}}',
    }
    for name, text in records.items():
        (runs / name).mkdir(parents=True)
        (runs / name / "run.json").write_text(text)
    (runs / "20260101-000000-dddddd").mkdir()
    (runs / "20260101-000000-dddddd" / "owner").write_bytes(b"\xff\xfe1\n\xffscript.R\n")
    done = sshcluster("jobs", "--json", tmp_path=tmp_path)
    assert "Traceback" not in done.stderr
    listed = {j["job"]: j for j in no_nan(done.stdout)}  # type: ignore[union-attr]
    assert set(listed) == {*records, "20260101-000000-dddddd"}
    assert listed["20260101-000000-aaaaaa"]["seconds"] is None
    assert listed["20260101-000000-bbbbbb"]["state"] == "unknown"
    assert listed["20260101-000000-cccccc"]["state"] == "unknown"


def test_text_from_records_cannot_drive_the_terminal(tmp_path: Path) -> None:
    """A record's error (or a host's word in it) with an escape sequence: shown as
    text, on its own line of the table."""
    job = tmp_path / "state" / "runs" / "20260101-000000-aaaaaa"
    job.mkdir(parents=True)
    (job / "run.json").write_text(json.dumps({
        "status": 1, "script": "fit.R", "phases": {"script": 1.0},
        "error": "\x1b]0;pwned\x07\nfake line\x1b[2J"}))
    done = sshcluster("jobs", tmp_path=tmp_path)
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    assert len(done.stdout.splitlines()) == 1
    assert "\\x1b]0;pwned\\x07\\nfake line\\x1b[2J" in done.stdout


def test_printable_keeps_text_and_escapes_controls() -> None:
    assert printable("naïve\tok\nnext") == "naïve\tok\nnext"
    assert printable("a\x1b[31mb\x9bc\x7f") == "a\\x1b[31mb\\x9bc\\x7f"
    assert printable("a\nb", newlines=False) == "a\\nb"


def test_init_ranges_too_long_or_too_many_are_refused(tmp_path: Path) -> None:
    for spec in ["n[" + "1" * 5000 + "]", "a" + "[1]" * 3000]:
        done = sshcluster("init", "-o", "-", "--hosts", spec, tmp_path=tmp_path)
        assert done.returncode == 2, done.stderr[-500:]
        assert done.stderr.startswith("error: --hosts: ") and "Traceback" not in done.stderr
    bad = sshcluster("init", "-o", "-", "--hosts", "-oProxyCommand=x", tmp_path=tmp_path)
    assert bad.returncode == 2 and "line 0" not in bad.stderr


def test_demo_keep_where_no_directory_can_be(tmp_path: Path) -> None:
    done = sshcluster("demo", "--keep", "/dev/null/x", tmp_path=tmp_path)
    assert done.returncode == 2
    assert "error: cannot make /dev/null/x: Not a directory" in done.stderr
    assert "Traceback" not in done.stderr


def test_ec2_example_prints_a_spec_that_reads(tmp_path: Path) -> None:
    done = sshcluster("ec2", "example", tmp_path=tmp_path)
    assert done.returncode == 0
    spec = parse_spec(done.stdout, "ec2.yaml")
    assert spec.name
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused = sshcluster("ec2", "up", str(fifo), "--dry-run", tmp_path=tmp_path)
    assert refused.returncode == 2
    assert "hint: name a regular file; start from 'sshcluster ec2 example > ec2.yaml'" \
        in refused.stderr
