"""Drift named by the check and fixed by sync, on real test hosts with real R.

Each host gets a library of its own (a wrapper rscript with its own R_LIBS) and a sync
directory of its own (``library:``), so drift can exist; the primary's library is this
process's R_LIBS. The packages are built here; the repository is a directory.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

import sshcluster
from sshcluster.bootstrap import RenderOptions, write_bootstrap
from sshcluster.cli import cli
from sshcluster.inventory import Host, load_inventory
from sshcluster.packages import HostSync, Reference, RPackage, SyncReport, reference
from sshcluster.testing import Testbed
from sshcluster.testing.fixtures import run_r_in_test
from sshcluster.testing.leftovers import nothing_left
from sshcluster.testing.rpackages import (
    COMPILED,
    PURE,
    Built,
    build_all,
    install,
    shared_library,
    wrapper,
)

LINKED = "sctlinked"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("rpkgs")
    shared_library(root, "sctdep")
    return build_all(root, {PURE: ("1.0", "2.0"), COMPILED: ("1.0", "2.0"), LINKED: ("1.0",)},
                     compiled={COMPILED, LINKED}, imports={COMPILED: (PURE,)},
                     link={LINKED: "sctdep"},
                     repo_versions={PURE: "2.0", COMPILED: "1.0", LINKED: "1.0"})


@pytest.fixture
def primary_lib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    lib = tmp_path / "primary-lib"
    monkeypatch.setenv("R_LIBS", str(lib))
    return lib


def inventory(tb: Testbed, tmp_path: Path, hosts: list[dict[str, Any]],
              extra: dict[str, Any]) -> Path:
    """The testbed's inventory, each host with its own rscript and sync directory."""
    path = tb.write_inventory(tmp_path / "hosts.yaml", ncore=1, extra=extra)
    doc = yaml.safe_load(path.read_text())
    for entry, more in zip(doc["hosts"], hosts, strict=False):
        entry.update(more)
    doc["hosts"] = doc["hosts"][:len(hosts)]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def host_setup(tmp_path: Path, i: int, **kw: Any) -> dict[str, Any]:
    """Host i's own R library (returned as ``lib``), wrapper and sync directory."""
    lib = tmp_path / f"h{i}-lib"
    lib.mkdir()
    rs = wrapper(tmp_path / f"h{i}-Rscript", lib, **kw)
    return {"rscript": str(rs), "library": str(tmp_path / f"h{i}-sync"), "lib": lib}


def entries(setups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in s.items() if k != "lib"} for s in setups]


def workers_see(tmp_path: Path, inv_path: Path, code: str, *, repaired: bool = False
                ) -> list[str]:
    """What ``code`` gives on every worker, as the rendered file starts them (or, with
    ``repaired``, as sshcluster_repair() starts them again after every worker died)."""
    inv = load_inventory(inv_path)
    ref = reference(inv)
    assert ref is not None
    out = tmp_path / "cluster.R"
    write_bootstrap(inv, out, RenderOptions(library_digest=ref.digest))
    assert f"/R-x.y/PLATFORM/OS/{ref.digest}" in out.read_text()  # named in the header
    repair = ("pids <- unlist(parallel::clusterEvalQ(parallelCluster, Sys.getpid()))\n"
              "try(parallel::clusterEvalQ(parallelCluster, tools::pskill(Sys.getpid(), 9L)),"
              " silent = TRUE)\n"
              "Sys.sleep(1)\nparallelCluster <- sshcluster_repair()\n"
              "stopifnot(!any(unlist(parallel::clusterEvalQ(parallelCluster, Sys.getpid()))"
              " %in% pids))\n") if repaired else ""
    done = run_r_in_test(f'source("{out}")\n{repair}'
                         f"x <- parallel::clusterEvalQ(parallelCluster, {code})\n"
                         'cat(paste0("SEEN=", unlist(x)), sep = "\\n")\nsshcluster_stop()\n',
                         tmp_path)
    assert done.returncode == 0, done.stderr
    return [line[5:] for line in done.stdout.splitlines() if line.startswith("SEEN=")]


@pytest.fixture
def drifted(testbed: Testbed, built: Built, primary_lib: Path, tmp_path: Path
            ) -> Iterator[Path]:
    """Primary: sctpure 2.0, sctcomp 1.0. h1 lacks sctcomp, h2 has an older sctpure,
    h3 a newer sctcomp, h4 the same packages under what reports itself as R 4.1."""
    install(built, primary_lib, PURE, "2.0")
    install(built, primary_lib, COMPILED, "1.0")
    setups = [host_setup(tmp_path, 1), host_setup(tmp_path, 2), host_setup(tmp_path, 3),
              host_setup(tmp_path, 4, other_minor=True)]
    install(built, setups[0]["lib"], PURE, "2.0")
    install(built, setups[1]["lib"], PURE, "1.0")
    install(built, setups[1]["lib"], COMPILED, "1.0", {"R_LIBS": str(setups[1]["lib"])})
    install(built, setups[2]["lib"], PURE, "2.0")
    install(built, setups[2]["lib"], COMPILED, "2.0", {"R_LIBS": str(setups[2]["lib"])})
    install(built, setups[3]["lib"], PURE, "2.0")
    install(built, setups[3]["lib"], COMPILED, "1.0", {"R_LIBS": str(setups[3]["lib"])})
    yield inventory(testbed, tmp_path, entries(setups),
                    {"r_packages": [COMPILED], "repos": [built.url]})


def test_check_names_drift_sync_fixes_it_and_workers_load_the_primarys(
        drifted: Path, tmp_path: Path, testbed: Testbed) -> None:
    inv = load_inventory(drifted)
    labels = [h.label for h in inv.hosts]
    report = sshcluster.check(inv, timeout=60)
    step = {h.label: report[h.label].checks["packages"] for h in inv.hosts}
    assert step[labels[0]].status == "failed", step
    assert f"not installed: {COMPILED}" in step[labels[0]].detail
    assert step[labels[1]].status == "warning" and f"{PURE} 1.0 (the primary has 2.0)" in \
        step[labels[1]].detail
    assert step[labels[2]].status == "warning" and f"{COMPILED} 2.0 (the primary has 1.0)" in \
        step[labels[2]].detail
    assert step[labels[3]].status == "warning" and "R 4.1.3" in step[labels[3]].detail
    doc = report.to_dict()
    assert doc["reference"]["packages"] == {COMPILED: "1.0", PURE: "2.0"}
    assert doc["hosts"][0]["packages"] == {COMPILED: None, PURE: "2.0"}

    synced = sshcluster.sync(inv, timeout=300)
    outcome = {h.label: h.outcome for h in synced.hosts}
    assert synced.ok, synced.verdicts()
    assert outcome == {labels[0]: "copied", labels[1]: "copied", labels[2]: "copied",
                       labels[3]: "installed"}
    ref = synced.reference
    assert Path(ref.library(str(tmp_path / "h1-sync")), COMPILED, "libs").is_dir()
    assert Path(ref.library(str(tmp_path / "h4-sync"), "4.1"), COMPILED, "libs").is_dir()
    # The users' own libraries are untouched.
    assert not (tmp_path / "h1-lib" / COMPILED).exists()
    assert (tmp_path / "h2-lib" / PURE / "DESCRIPTION").read_text().count("Version: 1.0")

    again = sshcluster.check(inv, timeout=60)
    for label in labels[:3]:
        assert again[label].checks["packages"].status == "ok", again[label].checks["packages"]
        assert "from sshcluster's library" in again[label].checks["packages"].detail
    assert again[labels[3]].checks["packages"].status == "warning"  # R 4.1, still named
    assert "other versions" not in again[labels[3]].checks["packages"].detail

    seen = workers_see(tmp_path, drifted, f"paste({PURE}::f(), {COMPILED}::f(), "
                                          f"{COMPILED}::twice(21))")
    assert seen == [f"{PURE} 2.0 {COMPILED} 1.0 42"] * 4
    # workers that sshcluster_repair() starts again load them too
    assert workers_see(tmp_path, drifted, f"paste({PURE}::f(), {COMPILED}::f())",
                       repaired=True) == [f"{PURE} 2.0 {COMPILED} 1.0"] * 4

    second = sshcluster.sync(inv, timeout=300)
    assert second.ok and second.sent == 0
    assert {h.outcome for h in second.hosts} == {"up to date"}


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_sync_killed_halfway_leaves_the_old_versions_loading(
        testbed: Testbed, built: Built, primary_lib: Path, tmp_path: Path,
        how: signal.Signals) -> None:
    """Killed (SIGKILL), or stopped (SIGTERM, as Ctrl-C: its cleanup runs, and its
    bundle of packages in the temporary directory goes)."""
    install(built, primary_lib, PURE, "2.0")
    install(built, primary_lib, COMPILED, "1.0")
    # A big file in the primary's build, so that the transfer takes a while.
    (primary_lib / PURE / "ballast").write_bytes(os.urandom(64 * 1024 * 1024))
    setups = [host_setup(tmp_path, 1)]
    install(built, setups[0]["lib"], PURE, "1.0")
    install(built, setups[0]["lib"], COMPILED, "1.0", {"R_LIBS": str(setups[0]["lib"])})
    path = inventory(testbed, tmp_path, entries(setups), {"r_packages": [COMPILED]})
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "sshcluster", "sync", str(path)],
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "TMPDIR": str(tmp)})
    assert proc.stderr is not None
    for line in proc.stderr:
        if "sending" in line:
            break
    if how == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.send_signal(how)
    proc.communicate(timeout=60)
    if how == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM
        assert [p.name for p in tmp.iterdir() if p.name.startswith("sshcluster-sync-")] == []
    ref = reference(load_inventory(path))
    assert ref is not None
    # Either there whole (it finished first) or not at all; never a half on the path.
    target = Path(ref.library(str(tmp_path / "h1-sync")))
    sync_dir = target.parent
    assert not target.exists(), "the 64 MB transfer finished before the kill"
    assert [p.name for p in sync_dir.iterdir() if p.name == ref.digest] == []
    seen = workers_see(tmp_path, path, f"paste({PURE}::f(), {COMPILED}::f())")
    assert seen == [f"{PURE} 1.0 {COMPILED} 1.0"]
    # The next sync finishes, and clears nothing the workers use.
    done = sshcluster.sync(load_inventory(path), timeout=300)
    assert done.ok, done.verdicts()
    assert workers_see(tmp_path, path, f"{PURE}::f()") == [f"{PURE} 2.0"]


def test_a_missing_shared_library_is_named_with_the_host(
        testbed: Testbed, built: Built, primary_lib: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    libdir = built.root / "lib"
    monkeypatch.setenv("LD_LIBRARY_PATH", str(libdir))
    install(built, primary_lib, LINKED, "1.0", {"LD_LIBRARY_PATH": str(libdir)})
    setups = [host_setup(tmp_path, 1, ld_path=libdir), host_setup(tmp_path, 2)]
    path = inventory(testbed, tmp_path, entries(setups), {"r_packages": [LINKED]})
    inv = load_inventory(path)
    report = sshcluster.sync(inv, timeout=300)
    good, bad = (report[h.label] for h in inv.hosts)
    assert good.outcome == "copied", good.detail
    assert bad.outcome == "failed"
    assert f"will not load on {bad.label}" in bad.detail
    assert f"{LINKED} needs the shared library libsctdep.so" in bad.detail
    assert LINKED in bad.load_errors
    # Nothing half-made on the workers' path there.
    assert not Path(report.reference.library(str(tmp_path / "h2-sync"))).exists()


def test_a_lockfile_is_installed_from_the_repository(
        testbed: Testbed, built: Built, primary_lib: Path, tmp_path: Path) -> None:
    lock = tmp_path / "renv.lock"
    lock.write_text(json.dumps({
        "R": {"Version": "4.2.2", "Repositories": [{"Name": "local", "URL": built.url}]},
        "Packages": {PURE: {"Package": PURE, "Version": "2.0", "Source": "Repository"},
                     COMPILED: {"Package": COMPILED, "Version": "1.0",
                                "Source": "Repository"}}}))
    setups = [host_setup(tmp_path, 1), host_setup(tmp_path, 2)]
    path = inventory(testbed, tmp_path, entries(setups), {"lockfile": str(lock)})
    inv = load_inventory(path)
    before = sshcluster.check(inv, timeout=60)
    assert all(h.checks["packages"].status == "failed" for h in before.hosts)
    report = sshcluster.sync(inv, timeout=300)
    assert report.ok, report.verdicts()
    assert {h.outcome for h in report.hosts} == {"installed"}
    after = sshcluster.check(inv, timeout=60)
    assert all(h.checks["packages"].status == "ok" for h in after.hosts), after.to_json()
    assert workers_see(tmp_path, path, f"{COMPILED}::f()") == [f"{COMPILED} 1.0"] * 2


def test_hosts_sharing_the_directory_get_it_once_and_check_sees_it_incomplete(
        testbed: Testbed, built: Built, primary_lib: Path, tmp_path: Path) -> None:
    install(built, primary_lib, PURE, "2.0")
    install(built, primary_lib, COMPILED, "1.0")
    setups = [host_setup(tmp_path, i) for i in (1, 2, 3)]
    for s in setups:  # one home, as on NFS
        s["library"] = str(tmp_path / "nfs-home" / "lib")
    path = inventory(testbed, tmp_path, entries(setups), {"r_packages": [COMPILED]})
    result = CliRunner().invoke(cli, ["sync", str(path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    outcomes = sorted(h["outcome"] for h in doc["hosts"])
    assert outcomes == ["copied", "shared", "shared"], doc
    sent = [h["sent"] for h in doc["hosts"] if h["outcome"] == "copied"]
    assert doc["sent"] == sent[0] > 0
    # A library that lost a package (by hand) is named by the check.
    lib = Path(doc["hosts"][0]["library"])
    shutil.rmtree(lib / PURE)
    report = sshcluster.check(load_inventory(path), timeout=60)
    for h in report.hosts:
        step = h.checks["packages"]
        assert step.status == "failed" and f"{lib} lacks {PURE}" in step.detail, step


def test_a_package_the_primary_lacks_stops_the_sync_before_any_host_is_touched(
        testbed: Testbed, built: Built, primary_lib: Path, tmp_path: Path) -> None:
    """The hosts' connections are made while the primary reads its reference; when the
    reference fails, they end without the script, and only our own words are printed."""
    install(built, primary_lib, PURE, "2.0")
    setups = [host_setup(tmp_path, 1), host_setup(tmp_path, 2)]
    inv = inventory(testbed, tmp_path, entries(setups),
                    {"r_packages": [PURE, "sctnosuchpackage"]})
    done = subprocess.run([sys.executable, "-m", "sshcluster", "sync", str(inv)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done
    assert done.stderr.splitlines() == [
        "error: the primary lacks sctnosuchpackage, needed by r_packages",
        "hint: install them here first; sync gives the hosts what the primary has"], done
    for i in (1, 2):  # the probe never ran there: nothing was made
        assert not (tmp_path / f"h{i}-sync").exists()
    assert nothing_left(testbed, wait=0) == {}  # no ssh of the probes, no shell on a host


def test_a_host_s_time_starts_when_the_primary_s_reference_is_known(
        testbed: Testbed, built: Built, primary_lib: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The probes' connections are made while the primary's R reads its reference, but a
    slow primary is not counted against the hosts' time."""
    install(built, primary_lib, PURE, "2.0")
    slow = tmp_path / "slow-bin"
    slow.mkdir()
    real = shutil.which("Rscript")
    (slow / "Rscript").write_text(f"#!/bin/sh\nsleep 6\nexec {real} \"$@\"\n")
    (slow / "Rscript").chmod(0o755)
    monkeypatch.setenv("PATH", f"{slow}:{os.environ['PATH']}")
    inv = load_inventory(inventory(testbed, tmp_path, entries([host_setup(tmp_path, 1)]),
                                   {"r_packages": [PURE]}))
    report = sshcluster.sync(inv, timeout=5)
    assert report.ok, report.verdicts()
    assert [h.outcome for h in report.hosts] == ["copied"]


def test_the_report_gives_a_verdict_per_host_and_its_json() -> None:
    ref = Reference("the primary", "4.2.2", (RPackage("a", "1.0", "/l/a"),))
    report = SyncReport(ref, (
        HostSync(Host("h1"), "copied", "1 packages in /x", sent=2000),
        HostSync(Host("host-two"), "failed", "will not load on host-two: a needs ...",
                 load_errors={"a": "libz.so: cannot open shared object file"})), 1.5)
    assert not report.ok and [h.label for h in report.failed] == ["host-two"]
    assert report.verdicts() == ["h1        copied: 1 packages in /x (2.0 KB sent)",
                                 "host-two  FAILED: will not load on host-two: a needs ..."]
    assert "1 of 2 hosts have the 1 packages" in report.summary()
    doc = report.to_dict()
    assert doc["sent"] == 2000 and doc["hosts"][1]["load_errors"] == {
        "a": "libz.so: cannot open shared object file"}


OTHER_PLATFORM = "aarch64-unknown-linux-gnu"


def test_hosts_of_two_platforms_on_one_home_get_a_library_each(
        testbed: Testbed, built: Built, primary_lib: Path, tmp_path: Path) -> None:
    """One home on NFS, an x86_64 host and an arm64 one: each gets a library built for
    its own platform. Faked: the second host is this machine too, its R only reports
    another R.version$platform (a profile), so what it installs is still x86_64 code."""
    install(built, primary_lib, PURE, "2.0")
    install(built, primary_lib, COMPILED, "1.0")
    setups = [host_setup(tmp_path, 1), host_setup(tmp_path, 2, platform=OTHER_PLATFORM)]
    for s in setups:
        s["library"] = str(tmp_path / "nfs-home" / "lib")
    path = inventory(testbed, tmp_path, entries(setups),
                     {"r_packages": [COMPILED], "repos": [built.url]})
    inv = load_inventory(path)
    first = sshcluster.sync(inv, timeout=300)
    assert first.ok, first.verdicts()
    assert [first[h.label].outcome for h in inv.hosts] == ["copied", "installed"]
    libs = [first[h.label].library for h in inv.hosts]
    assert libs[0] != libs[1] and OTHER_PLATFORM in (libs[1] or ""), libs
    assert all((Path(lib or "") / COMPILED / "DESCRIPTION").exists() for lib in libs)
    again = sshcluster.sync(inv, timeout=300)
    assert {h.outcome for h in again.hosts} == {"up to date"}, again.verdicts()
    checked = sshcluster.check(inv, timeout=60)
    for h in inv.hosts:
        step = checked[h.label].checks["packages"]
        assert step.status == "ok" and "from sshcluster's library" in step.detail, step
    seen = workers_see(tmp_path, path, f"paste({COMPILED}::f(), "
                                       "sub('/sctcomp$', '', find.package('sctcomp')))")
    assert seen == [f"{COMPILED} 1.0 {lib}" for lib in libs]


# R code for a host's profile: when sctcomp loads, R dies (as on a .so built for another
# CPU), or the shared library's sctpure changes its version under it.
_CRASH = (f'setHook(packageEvent("{COMPILED}", "onLoad"), '
          "function(...) tools::pskill(Sys.getpid(), 11L))\n")
_CHANGE = (f'setHook(packageEvent("{COMPILED}", "onLoad"), function(...) {{\n'
           f'  f <- file.path(.libPaths()[[1]], "{PURE}", "DESCRIPTION")\n'
           '  d <- read.dcf(f)\n  d[, "Version"] <- "9.9"\n  write.dcf(d, f)\n})\n')


@pytest.mark.parametrize(("profile", "said"), [(_CRASH, "some packages do not load"),
                                               (_CHANGE, f"{PURE} 9.9 (wanted 2.0)")])
def test_a_host_sharing_a_library_its_r_cannot_load_fails(
        testbed: Testbed, built: Built, primary_lib: Path, tmp_path: Path, profile: str,
        said: str) -> None:
    """The second host of one home only loads what the first wrote: its R dying there,
    or a version that is not the pinned one, fails it. (Its R is 2 s slower to start, so
    the first host is the one that receives the library, and the first's R takes 6 s to
    load it, so that the second finds it not there yet.)"""
    install(built, primary_lib, PURE, "2.0")
    install(built, primary_lib, COMPILED, "1.0")
    slow = f'setHook(packageEvent("{COMPILED}", "onLoad"), function(...) Sys.sleep(6))\n'
    setups = [host_setup(tmp_path, 1, profile=slow),
              host_setup(tmp_path, 2, profile="Sys.sleep(2)\n" + profile)]
    for s in setups:
        s["library"] = str(tmp_path / "nfs-home" / "lib")
    path = inventory(testbed, tmp_path, entries(setups), {"r_packages": [COMPILED]})
    inv = load_inventory(path)
    report = sshcluster.sync(inv, timeout=300)
    first, second = (report[h.label] for h in inv.hosts)
    assert first.outcome == "copied", report.verdicts()
    assert second.outcome == "failed", report.verdicts()
    assert f"will not load on {second.label}" in second.detail and said in second.detail, \
        second.detail


def test_sync_repairs_a_library_the_check_fails(
        testbed: Testbed, built: Built, primary_lib: Path, tmp_path: Path) -> None:
    """A package removed from sshcluster's library on a host (remove.packages()), or
    another version of it there: the check names it and sync puts the whole library
    back, instead of calling it up to date."""
    install(built, primary_lib, PURE, "2.0")
    install(built, primary_lib, COMPILED, "1.0")
    path = inventory(testbed, tmp_path, entries([host_setup(tmp_path, 1)]),
                     {"r_packages": [COMPILED], "packages": "exact"})
    inv = load_inventory(path)
    label = inv.hosts[0].label
    assert sshcluster.sync(inv, timeout=300)[label].outcome == "copied"
    lib = Path(sshcluster.sync(inv, timeout=300)[label].library or "")
    for harm in ("removed", "other version"):
        if harm == "removed":
            shutil.rmtree(lib / PURE)
        else:
            desc = lib / PURE / "DESCRIPTION"
            desc.write_text(desc.read_text().replace("Version: 2.0", "Version: 1.9"))
        step = sshcluster.check(inv, timeout=60)[label].checks["packages"]
        assert step.status == "failed" and "sshcluster sync" in (step.hint or ""), step
        again = sshcluster.sync(inv, timeout=300)
        assert again[label].outcome == "copied", again.verdicts()
        assert again[label].library == str(lib)
        assert (lib / PURE / "DESCRIPTION").read_text().count("Version: 2.0") == 1
        assert not [p.name for p in lib.parent.iterdir() if p.name != lib.name]
        after = sshcluster.check(inv, timeout=60)[label].checks["packages"]
        assert after.status == "ok", after
    assert sshcluster.sync(inv, timeout=300)[label].outcome == "up to date"


def test_a_host_that_vanishes_mid_probe_fails_in_seconds_not_at_the_timeout(
        testbed: Testbed, built: Built, primary_lib: Path, tmp_path: Path) -> None:
    """Cut off (every packet dropped) while its probe runs: ssh's keepalive ends the
    session in about 15 s; the others' sync does not wait for the 120 s timeout."""
    install(built, primary_lib, PURE, "2.0")
    setups = [host_setup(tmp_path, 1), host_setup(tmp_path, 2, profile="Sys.sleep(40)\n")]
    inv = load_inventory(inventory(testbed, tmp_path, entries(setups), {"r_packages": [PURE]}))
    victim = testbed.hosts[1]
    label = inv.hosts[1].label
    looking = threading.Event()

    def progress(host: str, what: str) -> None:
        if host == label and what == "looking":
            looking.set()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        done = pool.submit(sshcluster.sync, inv, progress=progress, timeout=120)
        try:
            assert looking.wait(60)
            time.sleep(2)  # (its R is running the probe now)
            testbed.cut_off(victim)
            report = done.result(timeout=150)
        finally:
            testbed.reconnect(victim)
    assert report[inv.hosts[0].label].outcome == "copied", report.verdicts()
    assert report[label].outcome == "failed"
    assert "not done within" not in report[label].detail, report[label].detail
    assert report.seconds < 60, report.verdicts()


def test_what_a_host_says_is_printed_with_its_control_characters_escaped(
        testbed: Testbed, built: Built, primary_lib: Path, tmp_path: Path) -> None:
    """A package's load error (the host's words) with terminal escapes in it: the
    verdict and the progress lines show them as \\x1b, never send them to the terminal."""
    install(built, primary_lib, PURE, "2.0")
    hook = 'loadNamespace <- function(...) stop("\\033]0;owned\\007\\033[2J gone")\n'
    path = inventory(testbed, tmp_path, entries([host_setup(tmp_path, 1, profile=hook)]),
                     {"r_packages": [PURE]})
    result = CliRunner().invoke(cli, ["sync", str(path)])
    assert result.exit_code == 1, result.output
    said = result.output + result.stderr
    assert "will not load" in said and "\\x1b[2J gone" in said, said
    assert "\x1b" not in said and "\x07" not in said


@pytest.mark.parametrize("profile", ['cat("Profile loaded\\n")\n', 'cat("Welcome")\n',
                                     '.Last <- function() cat("Profile says bye\\n")\n'],
                         ids=["a line", "no end of line", "at the end"])
def test_a_profile_that_prints_changes_nothing(
        testbed: Testbed, built: Built, primary_lib: Path, tmp_path: Path, profile: str
) -> None:
    """A host whose R profile prints (``cat()`` in ~/.Rprofile, as many do: a line, words
    with no end of line, or a ``.Last()`` that prints as R ends) syncs as any other, and
    gets the primary's builds: what sync reads of R is its own marked lines (before, the
    profile's words were taken for R's version, which made the host build every package
    from source, or the library's place for a mangled path)."""
    install(built, primary_lib, PURE, "2.0")
    setups = [host_setup(tmp_path, 1, profile=profile)]
    path = inventory(testbed, tmp_path, entries(setups), {"r_packages": [PURE]})
    report = sshcluster.sync(load_inventory(path), timeout=300)
    assert report.ok, report.verdicts()
    assert report.hosts[0].outcome == "copied", report.verdicts()
    lib = report.hosts[0].library or ""
    assert lib.startswith(str(tmp_path / "h1-sync" / "R-")) and "Profile" not in lib, lib
    assert "Welcome" not in lib, lib
    assert sshcluster.sync(load_inventory(path), timeout=300).hosts[0].outcome == "up to date"
