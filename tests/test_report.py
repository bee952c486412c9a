"""The report model: verdicts, the JSON document of issue 3, the table."""

from __future__ import annotations

import dataclasses
import json

from rich.console import Console

from sshcluster.check.report import (
    NO_CONTAINER,
    NO_FANOUT,
    NO_LEASE,
    NO_SHARED_DIR,
    NO_WORKER_OUTPUT,
    SKIPPED,
    STEPS,
    CheckReport,
    HostReport,
    StepResult,
    print_report,
    report_table,
)
from sshcluster.inventory import Host


def host_report(name: str, failed_at: str | None = None, warn: str | None = None,
                ncore: int | None = 2) -> HostReport:
    checks: dict[str, StepResult] = {}
    failed = False
    for step in STEPS:
        if failed:
            checks[step] = SKIPPED
        elif step == failed_at:
            checks[step] = StepResult("failed", f"{step} broke", 0.25, hint="fix it")
            failed = True
        elif step == warn:
            checks[step] = StepResult("warning", "busy", 0.01)
        elif step == "shared_dir":
            checks[step] = NO_SHARED_DIR
        elif step == "fanout":
            checks[step] = NO_FANOUT
        elif step == "container":
            checks[step] = NO_CONTAINER
        elif step == "worker_output":
            checks[step] = NO_WORKER_OUTPUT
        elif step == "lease":
            checks[step] = NO_LEASE
        else:
            checks[step] = StepResult("ok", "fine", 0.01)
    return HostReport(host=Host(name, ncore=ncore), checks=checks, ncore=2,
                      rscript="/usr/bin/Rscript" if not failed_at else None,
                      r_version="4.2.2" if not failed_at else None)


def test_steps_are_the_issues_ten_in_order_then_the_launchs_and_the_subsystems() -> None:
    assert STEPS == ("resolve", "connect", "hostkey", "auth", "rscript", "packages", "cores",
                     "load", "reverse_ssh", "callback", "worker_output", "lease", "shared_dir",
                     "fanout", "container")


def test_ok_failed_and_warnings() -> None:
    good = host_report("a", warn="load")
    bad = host_report("b", failed_at="hostkey")
    report = CheckReport(primary="10.0.0.1", port=11000, hosts=(good, bad))
    assert good.ok and good.failed == [] and good.warnings == ["load"]
    assert not bad.ok and bad.failed == ["hostkey"]
    assert bad.checks["auth"].status == "skipped"
    assert not report.ok
    assert report.failed == (bad,)
    assert report.succeeded == (good,)
    assert report["b"] is bad


def test_json_document_has_exactly_the_issues_shape() -> None:
    report = CheckReport(primary="10.0.0.1", port=11234,
                         hosts=(host_report("a"), host_report("b", failed_at="callback")))
    doc = json.loads(report.to_json())
    assert set(doc) == {"schema", "ok", "counts", "primary", "port", "seconds", "notes",
                        "hosts"}
    assert doc["ok"] is False and doc["primary"] == "10.0.0.1" and doc["port"] == 11234
    assert doc["counts"] == {"hosts": 2, "ready": 1, "failed": 1, "warnings": 0,
                             "workers": 2}
    for h in doc["hosts"]:
        assert set(h) == {"host", "line", "ok", "failed", "warnings", "checks", "ncore",
                          "rscript", "r_version"}
        assert list(h["checks"]) == list(STEPS)
        for c in h["checks"].values():
            assert set(c) == {"status", "detail", "hint", "seconds", "line", "field"}
            assert c["status"] in ("ok", "failed", "skipped", "warning")
            assert isinstance(c["detail"], str) and isinstance(c["seconds"], float)
        assert isinstance(h["ncore"], int) and isinstance(h["rscript"], str)
        assert isinstance(h["r_version"], str)
    a, b = doc["hosts"]
    assert a == {**a, "host": "a", "ok": True, "failed": [], "ncore": 2,
                 "rscript": "/usr/bin/Rscript", "r_version": "4.2.2"}
    assert b["failed"] == ["callback"]
    assert b["checks"]["callback"]["detail"] == "callback broke"
    assert b["checks"]["callback"]["hint"] == "fix it"
    assert b["rscript"] == "" and b["r_version"] == ""


def test_ncore_in_json_is_declared_else_detected() -> None:
    assert host_report("a", ncore=4).to_dict()["ncore"] == 4
    assert host_report("a", ncore=None).to_dict()["ncore"] == 2


def test_summary_names_failed_hosts_by_first_failed_step() -> None:
    report = CheckReport(primary="p", port=11000, seconds=1.25, hosts=(
        host_report("a"), host_report("b", failed_at="auth"), host_report("c", failed_at="auth"),
        host_report("d", failed_at="callback")))
    assert report.summary() == (
        "1 of 4 hosts ready (2 R workers), 3 failed (auth: b, c; callback: d), "
        "primary p:11000, 1.2 s")


def test_table_and_details_render() -> None:
    report = CheckReport(primary="p", port=11000, notes=("a note",), hosts=(
        host_report("good", warn="load"), host_report("bad", failed_at="connect")))
    console = Console(width=200, record=True, color_system=None)
    print_report(report, console)
    text = console.export_text()
    lines = text.splitlines()
    assert "reverse ssh" in lines[0] and "callback" in lines[0]
    bad_row = next(line for line in lines if line.startswith("bad "))
    assert bad_row.split() == ["bad", "ok", "FAILED", "-", "-", "-", "-", "-", "-", "-", "-"]
    assert "bad connect failed: connect broke" in text
    assert "    hint: fix it" in text
    assert "good load warning: busy" in text
    assert "note: a note" in text
    assert text.rstrip().endswith(report.summary())


def test_narrow_terminal_gets_short_headers_and_a_legend() -> None:
    report = CheckReport(primary="p", port=11000, hosts=(host_report("somehost.example"),))
    console = Console(width=80, record=True, color_system=None)
    print_report(report, console)
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines()[:3])
    assert "back=reverse_ssh" in text
    assert report_table(report, 200).columns[9].header == "reverse ssh"


def test_no_width_cuts_a_host_label_or_a_verdict() -> None:
    """At 80 columns (a pipe, a log) the short table fits, failures show as FAIL and the
    labels whole; narrower still, one line per host."""
    report = CheckReport(primary="p", port=11000, hosts=(
        host_report("10.213.2.3:2222", warn="load"),
        host_report("10.213.2.3", failed_at="auth"),
        host_report("build-server.lab")))
    console = Console(width=80, record=True, color_system=None)
    print_report(report, console)
    text = console.export_text()
    assert "…" not in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[2:5]}
    assert rows["10.213.2.3"] == ["ok", "ok", "ok", "FAIL", "-", "-", "-", "-", "-", "-"]
    assert rows["10.213.2.3:2222"][7] == "warn"
    assert "build-server.lab" in rows
    assert all(len(line) <= 80 for line in text.splitlines()[:5])

    report = dataclasses.replace(report, hosts=(
        *report.hosts[:2], host_report("build-server.lab.example.org")))
    console = Console(width=80, record=True, color_system=None)
    print_report(report, console)
    lines = console.export_text().splitlines()
    assert "…" not in "\n".join(lines)
    assert lines[:3] == [
        "10.213.2.3:2222               ready, warnings: load",
        "10.213.2.3                    FAILED at auth",
        "build-server.lab.example.org  ready",
    ]
