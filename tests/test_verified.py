"""verified_inventory: the inventory as the check found it (no hosts needed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sshcluster.bootstrap import RenderOptions, render, write_bootstrap
from sshcluster.check.preflight import verified_inventory
from sshcluster.check.report import SKIPPED, STEPS, CheckReport, HostReport, StepResult
from sshcluster.errors import CheckFailed
from sshcluster.inventory import Host, Inventory, Primary


def found(host: Host, *, rscript: str = "/usr/bin/Rscript", ncore: int = 4,
          seen: str = "10.0.0.1", failed: str | None = None) -> HostReport:
    checks = {}
    broken = False
    for s in STEPS:
        if broken:
            checks[s] = SKIPPED
        elif s == failed:
            checks[s] = StepResult("failed", "broken")
            broken = True
        else:
            checks[s] = StepResult("ok")
    return HostReport(host=host, checks=checks, ncore=ncore, rscript=rscript,
                      r_version="4.2.2", seen_primary=seen)


A, B, C = Host("a", ncore=None), Host("b", ncore=2), Host("c", ncore=None)
INV = Inventory(primary=Primary("auto"), hosts=(A, B, C))


def report(*hosts: HostReport, primary_rscript: str | None = "/usr/bin/Rscript"
           ) -> CheckReport:
    return CheckReport(primary="10.0.0.1", port=11000, hosts=hosts,
                       primary_rscript=primary_rscript)


def test_fills_ncore_auto_primary_auto_and_rscript_where_it_differs() -> None:
    rep = report(found(A, ncore=8), found(B, rscript="/opt/R/bin/Rscript"), found(C))
    inv = verified_inventory(rep, INV)
    assert inv.primary.host == "10.0.0.1"
    assert [(h.host, h.ncore, h.rscript) for h in inv.hosts] == [
        ("a", 8, None), ("b", 2, "/opt/R/bin/Rscript"), ("c", 4, None)]


def test_without_r_on_the_primary_differing_paths_are_all_written() -> None:
    rep = report(found(A), found(B, rscript="/opt/R/bin/Rscript"), found(C),
                 primary_rscript=None)
    inv = verified_inventory(rep, INV)
    assert [h.rscript for h in inv.hosts] == [
        "/usr/bin/Rscript", "/opt/R/bin/Rscript", "/usr/bin/Rscript"]


def test_a_failed_host_stops_unless_allow_partial() -> None:
    rep = report(found(A), found(B, failed="callback"), found(C))
    with pytest.raises(CheckFailed) as e:
        verified_inventory(rep, INV)
    assert e.value.report is rep and "allow-partial" in (e.value.hint or "")
    inv = verified_inventory(rep, INV, allow_partial=True)
    assert [h.host for h in inv.hosts] == ["a", "c"]


def test_workers_that_disagree_on_the_primary_stop_the_render() -> None:
    rep = report(found(A), found(B, seen="192.168.1.5"), found(C))
    with pytest.raises(CheckFailed, match="different addresses"):
        verified_inventory(rep, INV)


def test_no_host_left() -> None:
    rep = report(found(A, failed="auth"), found(B, failed="auth"), found(C, failed="auth"))
    with pytest.raises(CheckFailed, match="no host"):
        verified_inventory(rep, INV, allow_partial=True)


def test_the_python_api_writes_the_same_left_out_header_as_the_cli(tmp_path: Path) -> None:
    """verified_inventory(..., allow_partial=True) then write_bootstrap: the file says
    which hosts were checked and left out, as `render --check --allow-partial` writes."""
    rep = report(found(A), found(B, failed="auth"), found(C))
    ready = verified_inventory(rep, INV, allow_partial=True)
    assert ready.check_note == rep.header_note()
    text = write_bootstrap(ready, tmp_path / "cluster.R")
    assert "# Checked by 'sshcluster check': 2 of 3 hosts ready.\n" in text
    assert "# Left out (--allow-partial): b: failed auth\n" in text
    assert 'host = "b"' not in text
    # The same file as the CLI's way of passing the note; none without a check.
    assert text == render(ready, RenderOptions(note=rep.header_note()))
    assert "Checked by" not in render(dataclasses.replace(ready, check_note=None))
