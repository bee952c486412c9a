"""``register: [future]`` / ``[doparallel]`` need those packages here and on every
worker: a host whose R cannot load them is named, with R's reason, and the launch
stops whole (real test hosts, real R)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import sshcluster
from sshcluster.bootstrap import RenderOptions
from sshcluster.check.preflight import _primary_loads
from sshcluster.inventory import Launch, load_inventory, parse_inventory
from sshcluster.testing import Testbed, free_port
from sshcluster.testing.cluster import write_cluster
from sshcluster.testing.fixtures import run_r_in_test, skip_or_fail
from sshcluster.testing.leftovers import nothing_left


def without_site_library(path: Path) -> Path:
    """An rscript whose R sees only R's own library: no doParallel, foreach or future
    (Debian's r-cran-* packages are in the site library)."""
    path.write_text("#!/bin/sh\nexport R_LIBS_SITE=/nonexistent R_LIBS_USER=/nonexistent\n"
                    'exec /usr/bin/Rscript "$@"\n')
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("launch", ["fast", "classic"])
def test_a_host_without_doparallel_is_named_and_the_launch_stops(
        testbed: Testbed, tmp_path: Path, launch: Launch) -> None:
    bare = testbed.hosts[1]
    f = write_cluster(testbed, tmp_path, options=RenderOptions(launch=launch), ncore=1,
                      hosts=testbed.hosts[:2], register=["doparallel"],
                      host_fields={bare.address: {"rscript": str(without_site_library(
                          tmp_path / "bare-Rscript"))}})
    done = run_r_in_test(f'source("{f}")\ncat("launched\\n")\n', tmp_path)
    assert done.returncode != 0 and "launched" not in done.stdout
    said = done.stderr
    assert "register: doparallel needs doParallel and foreach" in said, said
    assert f"  {bare.address}: doParallel: there is no package called" in said, said
    assert f"  {bare.address}: foreach: there is no package called" in said, said
    assert f"{testbed.hosts[0].address}:" not in said, said
    assert "r_packages" in said and "sshcluster sync" in said
    assert nothing_left(testbed, marker=tmp_path) == {}


@pytest.mark.parametrize("r_packages", [None, ["parallel"]], ids=["own", "synced"])
def test_the_check_fails_a_host_without_what_register_loads(
        testbed: Testbed, tmp_path: Path, r_packages: list[str] | None) -> None:
    """The check says so before any launch: the host's ``packages`` step fails, naming
    each registration and what it needs, with and without ``r_packages`` (whose
    reference the step compares otherwise). ``render --check --future`` looks for what
    its own registration needs."""
    bare, fine = testbed.hosts[1], testbed.hosts[0]
    extra = {"r_packages": r_packages} if r_packages else {}
    f = write_cluster(testbed, tmp_path, ncore=1, hosts=testbed.hosts[:2],
                      register=["future", "doparallel"], **extra,
                      host_fields={bare.address: {"rscript": str(without_site_library(
                          tmp_path / "bare-Rscript"))}})
    report = sshcluster.check(load_inventory(f"{f}.yaml"), timeout=60)
    by_host = {h.host.host: h for h in report.hosts}
    assert by_host[fine.address].failed == [], by_host[fine.address].checks
    step = by_host[bare.address].checks["packages"]
    assert by_host[bare.address].failed == ["packages"], by_host[bare.address].checks
    assert "register: future needs future" in step.detail, step
    assert "register: doparallel needs doParallel and foreach" in step.detail, step
    assert "future" in (step.hint or ""), step

    # The same inventory without register:, and the registration on render's command line
    plain = tmp_path / "plain.yaml"
    data = yaml.safe_load(Path(f"{f}.yaml").read_text())
    del data["register"]
    plain.write_text(yaml.safe_dump(data, sort_keys=False))
    assert sshcluster.check(load_inventory(plain), timeout=60).failed == ()
    done = subprocess.run([sys.executable, "-m", "sshcluster", "render", "--check", "--future",
                           "--timeout", "60", "-o", str(tmp_path / "out.R"), str(plain)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "register: future needs future" in done.stdout + done.stderr, done
    assert not (tmp_path / "out.R").exists()


def test_the_check_notes_what_this_machine_s_r_cannot_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The launch loads what register: needs on the primary too: the check's note says
    when this machine's R cannot (here an R that sees only its own library), and says
    nothing when it can."""
    if shutil.which("Rscript") is None:
        skip_or_fail("no Rscript on this machine")
    inv = parse_inventory("hosts: [a]\nregister: [future, doparallel]\n")
    assert asyncio.run(_primary_loads(inv, 60)) == []
    monkeypatch.setenv("R_LIBS_SITE", "/nonexistent")
    monkeypatch.setenv("R_LIBS_USER", "/nonexistent")
    monkeypatch.delenv("R_LIBS", raising=False)
    [note] = asyncio.run(_primary_loads(inv, 60))
    assert note.startswith("this machine's R cannot load what register: needs (future: "
                           "there is no package called"), note
    assert "; doParallel: " in note and "; foreach: " in note, note
    assert asyncio.run(_primary_loads(parse_inventory("hosts: [a]\n"), 60)) == []


def test_the_note_waits_for_this_machine_s_r_when_it_is_the_last_to_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's R can take longer than every host's check (here an Rscript that
    answers after 2 s, and a host on 127.0.0.1 whose port refuses at once): the check
    waits for it and still gives its note (it cancelled it, and raised, before)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    rscript = bindir / "Rscript"
    rscript.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo "R version 4.2.2"; exit 0; }\n'
                       'sleep 2\nprintf "\\nSSHCLUSTER-NOLOAD future: broken\\n"\n')
    rscript.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    port = free_port("127.0.0.1")
    inv = parse_inventory(f"hosts:\n  - host: 127.0.0.1\n    ssh_port: {port}\n"
                          "register: [future]\n")
    report = sshcluster.check(inv, timeout=30)
    assert report.hosts[0].failed, report.hosts[0].checks  # (nothing listens there)
    assert any(n.startswith("this machine's R cannot load what register: needs (future: "
                            "broken)") for n in report.notes), report.notes
