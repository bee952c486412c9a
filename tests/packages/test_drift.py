"""The check's view of the packages: constraints in the inventory, the reference, the
drift verdict and the host x package table (pure functions, no host)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import pytest
from rich.console import Console

from sshcluster.check.report import CheckReport, HostReport, StepResult, print_report
from sshcluster.dump import dump_inventory
from sshcluster.errors import InventoryError, PackagesError
from sshcluster.inventory import Host, Packages, parse_inventory
from sshcluster.packages import Reference, RPackage, drift, drift_verdict, lockfile_reference
from sshcluster.packages.reference import os_release, parse_reference

REF = Reference("the primary", "4.2.2", (RPackage("a", "1.0", "/l/a"),
                                        RPackage("b", "2.1-3", "/l/b"),
                                        RPackage("c", "0.5", "/l/c")), "x86_64-pc-linux-gnu")
HOST = Host("h1")


def verdict(versions: dict[str, str | None], r: str = "4.2.2",
            settings: Packages | None = None) -> StepResult:
    settings = settings or Packages()
    return drift_verdict(drift(REF, versions, r, settings), REF, HOST, settings,
                         library=None, seconds=0.1, inventory_path="hosts.yaml")


def test_r_packages_keep_the_list_form_and_take_constraints() -> None:
    inv = parse_inventory("primary: p\nr_packages: [a, {b: '>= 2.1'}]\nhosts: [h]\n")
    assert inv.r_packages == ("a", "b")
    assert [str(c) for c in inv.packages.constraints] == ["b >= 2.1"]
    inv = parse_inventory("primary: p\nr_packages: {a: null, b: '< 3'}\npackages: exact\n"
                          "hosts: [h]\n")
    assert inv.r_packages == ("a", "b") and inv.packages.mode == "exact"
    assert parse_inventory(dump_inventory(inv)) == inv


@pytest.mark.parametrize("text, line, field", [
    ("r_packages: [a, {b: 'about 2'}]\n", 2, "r_packages[1]"),
    ("r_packages: {a: '>= x'}\n", 2, "r_packages.a"),
    ("packages: loose\n", 2, "packages"),
    ("repos: [ftp://x]\n", 2, "repos"),
    ("library: relative/dir\n", 2, "library"),
])
def test_package_settings_are_checked_with_file_and_line(text: str, line: int,
                                                         field: str) -> None:
    with pytest.raises(InventoryError) as e:
        parse_inventory("primary: p\n" + text + "hosts: [h]\n", "hosts.yaml")
    assert e.value.line == line and e.value.field == field


def test_constraints_compare_as_r_does() -> None:
    inv = parse_inventory("primary: p\nr_packages: [{b: '>= 2.1'}]\nhosts: [h]\n")
    (c,) = inv.packages.constraints
    assert c.allows("2.1-3") and c.allows("10.0") and not c.allows("2.0.9")


def test_the_same_environment_passes() -> None:
    r = verdict({"a": "1.0", "b": "2.1-3", "c": "0.5"})
    assert r.status == "ok" and "all 3 packages" in r.detail


def test_missing_fails_naming_the_packages() -> None:
    r = verdict({"a": "1.0", "b": None, "c": None})
    assert r.status == "failed" and "not installed: b, c" in r.detail
    assert r.hint and "sshcluster sync hosts.yaml" in r.hint


def test_a_package_the_primary_lacks_too_must_still_be_on_the_host() -> None:
    ref = Reference("the primary", "4.2.2", REF.packages, absent=("z",))
    d = drift(ref, {"a": "1.0", "b": "2.1-3", "c": "0.5"}, "4.2.2", Packages())
    assert d.missing == ("z",)
    assert drift(ref, {"a": "1.0", "b": "2.1-3", "c": "0.5", "z": "9"}, "4.2.2",
                 Packages()).none


def test_other_version_warns_or_fails_when_exact() -> None:
    r = verdict({"a": "0.9", "b": "2.1-3", "c": "0.6"})
    assert r.status == "warning"
    assert "a 0.9 (the primary has 1.0)" in r.detail and "c 0.6" in r.detail
    r = verdict({"a": "0.9", "b": "2.1-3", "c": "0.5"}, settings=Packages(mode="exact"))
    assert r.status == "failed"


def test_other_r_minor_warns_and_a_constraint_fails() -> None:
    r = verdict({"a": "1.0", "b": "2.1-3", "c": "0.5"}, r="4.1.3")
    assert r.status == "warning" and "R 4.1.3" in r.detail
    inv = parse_inventory("primary: p\nr_packages: [{a: '>= 1.1'}]\nhosts: [h]\n")
    r = verdict({"a": "1.0", "b": "2.1-3", "c": "0.5"}, settings=inv.packages)
    assert r.status == "failed" and "a 1.0 (wants >= 1.1)" in r.detail


def test_reference_names_a_library_by_its_content() -> None:
    same = Reference("x", "4.2.1", tuple(reversed(REF.packages)))
    other = Reference("x", "4.2.1", (RPackage("a", "1.1"), *REF.packages[1:]))
    assert same.digest == REF.digest != other.digest
    assert REF.library("~/l", platform="x86_64-pc-linux-gnu", os_release="ubuntu 22.04") == \
        f"~/l/R-4.2/x86_64-pc-linux-gnu/ubuntu-22.04/{REF.digest}"
    assert REF.library("~/l", platform="p q") == f"~/l/R-4.2/p_q/unknown/{REF.digest}"


@pytest.mark.parametrize("release", [['ID=ubuntu', 'VERSION_ID="22.04"', 'NAME="Ubuntu"'],
                                     ["ID='arch'"], [], None,
                                     ['ID="rocky"', 'ID_LIKE="rhel centos fedora"',
                                      'VERSION_ID="9.3"'],
                                     ["ID=alpine", "VERSION_ID=3.19.1"],
                                     ['ID="opensuse-leap"', 'ID_LIKE="suse opensuse"',
                                      'VERSION_ID="15.5"']])
def test_the_host_names_its_library_as_the_reference_does(release: list[str] | None) -> None:
    """The hosts' R (``R/library_dir.R``: sync, the check and the workers) and Python
    agree on the directory; the OS release is faked (R's file functions replaced)."""
    lines = "NULL" if release is None else \
        "c(" + ", ".join(json.dumps(x) for x in release) + ")"
    fake = ("file.exists <- function(f) !is.null(LINES)\n"
            f"readLines <- function(f, warn) LINES\nLINES <- {lines}\n")
    code = (resources.files("sshcluster").joinpath("R/library_dir.R").read_text()
            + fake + 'cat(sshcluster_library_dir("/r", "d"), R.version$platform, sep = "\\n")')
    done = subprocess.run(["Rscript", "--vanilla", "-e", code], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    where, platform = done.stdout.splitlines()
    r_minor = where.split("/")[2][2:]
    ref = Reference("x", f"{r_minor}.0", (), platform, os_release("\n".join(release or [])))
    assert where == ref.library("/r").replace(ref.digest, "d")


@pytest.mark.parametrize(("release", "said"), [
    ('ID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.3"', "rocky 9"),
    ("ID=ol\nID_LIKE=fedora\nVERSION_ID=9.4", "ol 9"),
    ('ID="sles"\nID_LIKE="suse"\nVERSION_ID="15.5"', "sles 15"),
    ("ID=alpine\nVERSION_ID=3.19.1", "alpine 3.19"),
    ('ID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"', "ubuntu 24.04"),
    ('ID=debian\nVERSION_ID="12"', "debian 12"), ("ID=arch", "arch"), ("", None),
    ("VERSION_ID=3", "3")])
def test_an_os_release_is_named_as_its_abi_goes(release: str, said: str | None) -> None:
    """A point release that keeps the ABI (Rocky 9.3 and 9.4, SLES 15.5, Alpine 3.19.1)
    gives the same library as the release it updates: a routine update moves no host
    off its synced library. The host's sync.sh takes it the same way."""
    assert os_release(release) == said
    sync = resources.files("sshcluster").joinpath("packages/R/sync.sh").read_text()
    start = sync.index("os=$(. /etc/os-release")
    end = sync.index('echo "$o")', start) + len('echo "$o")')
    probe = sync[start:end].replace("/etc/os-release", '"$1"') + '; echo "$os"'
    with tempfile.NamedTemporaryFile("w", suffix=".os-release") as f:
        f.write(release + "\n")
        f.flush()
        done = subprocess.run(["sh", "-c", probe, "sh", f.name], capture_output=True,
                              text=True, timeout=30)
    # (exactly: "arch " is not "arch", and a host so named never got the primary's builds)
    assert done.stdout == f"{said or ''}\n", done.stderr


def test_primary_reference_output_is_parsed() -> None:
    ref = parse_reference("ENV_R=4.2.2\nENV_PLATFORM=p\nREPOS=file:///r\nPKG=a\t1.0\t/l/a\n"
                          "ABSENT=z\n", os="debian 12")
    assert ref.versions == {"a": "1.0"} and ref.absent == ("z",) and ref.repos == ("file:///r",)
    with pytest.raises(PackagesError):
        parse_reference("Error: oops")


def test_lockfile_is_read_directly(tmp_path: Path) -> None:
    lock = tmp_path / "renv.lock"
    lock.write_text(json.dumps({"R": {"Version": "4.2.2", "Repositories": [
        {"Name": "local", "URL": "file:///repo"}]}, "Packages": {
        "b": {"Package": "b", "Version": "2.1-3"}, "a": {"Package": "a", "Version": "1.0"}}}))
    ref = lockfile_reference(str(lock))
    assert ref.versions == {"a": "1.0", "b": "2.1-3"} and ref.repos == ("file:///repo",)
    lock.write_text("{}")
    with pytest.raises(PackagesError, match="not an renv lockfile"):
        lockfile_reference(str(lock))


def _host(name: str, versions: dict[str, str | None]) -> HostReport:
    from sshcluster.check.report import STEPS
    checks = {s: StepResult("ok") for s in STEPS}
    return HostReport(Host(name), checks, packages=versions, r_platform="p")


def test_json_has_a_host_by_package_table_and_the_text_shows_only_drift() -> None:
    report = CheckReport("10.0.0.1", 11000, (
        _host("h1", {"a": "1.0", "b": "2.1-3", "c": "0.5"}),
        _host("h2", {"a": None, "b": "2.0", "c": "0.5"})), reference=REF)
    doc = report.to_dict()
    assert doc["reference"]["packages"] == {"a": "1.0", "b": "2.1-3", "c": "0.5"}
    assert doc["hosts"][1]["packages"] == {"a": None, "b": "2.0", "c": "0.5"}
    console = Console(width=120, record=True)
    print_report(report, console)
    text = console.export_text()
    table = text[text.index("package drift:"):].splitlines()
    assert table[1].split() == ["a", "b"]
    assert table[2].split() == ["the", "primary", "1.0", "2.1-3"]
    assert table[3].split() == ["h2", "-", "2.0"] and not table[4].strip()
