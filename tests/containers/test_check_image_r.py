"""The check of a host whose R is only inside the image, on real test hosts with podman.

Each host here has a store of its own and an empty tmpfs at ``/usr/lib/R``: R is not
installed on the host itself (its ``/usr/bin/Rscript`` cannot start, and
``/usr/lib/R/bin/Rscript`` is not there), only in the image. The check must run R, the
``r_packages`` and the callback inside the image, as the launch runs its workers there,
and say so; a package the image lacks fails the ``packages`` step, naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from sshcluster.check import check
from sshcluster.check.report import CheckReport, check_schema
from sshcluster.cli import cli
from sshcluster.inventory import load_inventory
from sshcluster.packages.drift import SHOWN
from sshcluster.quoting import r_string
from sshcluster.testing import Testbed
from sshcluster.testing.containers import (
    ENGINE_DIRS,
    MARKER_FILE,
    containers_left,
    load_image,
    on_host,
)
from sshcluster.testing.fixtures import build_testbed, run_r_in_test
from sshcluster.testing.leftovers import launch_env, nothing_left
from sshcluster.testing.rpackages import installed_here, many_packages, write_lockfile

from .helpers import MARKER, Image, container_inventory

#: Where R lives on this machine, and so in the test image; hidden on the hosts.
R_HOME = "/usr/lib/R"

RUN = """
source({file})
cl <- parallelCluster
cat("n", length(cl), "\\n")
cat("marker", unlist(parallel::clusterEvalQ(cl, readLines({marker}))), "\\n")
cat("sum", sum(parallel::parSapply(cl, 1:20, function(i) i * i)), "\\n")
sshcluster_stop()
"""


@pytest.fixture(scope="module")
def bare(request: pytest.FixtureRequest, testbed_env: None, image: Image) -> Testbed:
    """Two hosts without R of their own, with the test image."""
    tb = build_testbed(request, 2, private_dirs={**ENGINE_DIRS, R_HOME: "1m"})
    load_image(tb, tb.hosts, image.archive)
    return tb


def _check(tb: Testbed, path: Path, image: Image, *, rscript: str | None = None,
           **extra: object) -> CheckReport:
    inv = container_inventory(tb, path, {"image": image.name, "pull": "never"},
                              **extra)  # type: ignore[arg-type]
    if rscript:  # (every host's, a path inside the image)
        doc = yaml.safe_load(inv.read_text())
        doc["defaults"]["rscript"] = rscript
        inv.write_text(yaml.safe_dump(doc, sort_keys=False))
    return check(load_inventory(inv), ssh_config=[], timeout=60)


def test_the_hosts_have_no_r_of_their_own(bare: Testbed) -> None:
    for h in bare.hosts:
        said = on_host(bare, h, ["Rscript", "-e", "1"])
        assert said.returncode != 0, said.stdout
        assert on_host(bare, h, ["test", "-e", f"{R_HOME}/bin/Rscript"]).returncode == 1


@pytest.mark.parametrize("rscript", [None, f"{R_HOME}/bin/Rscript"],
                         ids=["on-the-path", "rscript-path"])
def test_r_in_the_image_passes_every_step_and_the_cluster_computes(
        bare: Testbed, image: Image, tmp_path: Path, rscript: str | None) -> None:
    report = _check(bare, tmp_path / "hosts.yaml", image, rscript=rscript,
                    r_packages=["MASS"], workdir="/tmp/sshcluster-wd")
    for r in report.hosts:
        bad = {k: v for k, v in r.checks.items() if v.status not in ("ok", "warning")}
        assert bad == {}, (r.label, bad)
        assert r.checks["rscript"].status == "ok", r.checks["rscript"]
        rscript_named = rscript or "Rscript"
        assert r.checks["rscript"].detail.startswith(f"{rscript_named} in {image.name} (R 4.")
        assert r.rscript == rscript_named
        assert r.checks["callback"].detail.startswith(f"R in {image.name} reached")
        assert f"image sha256:{image.id}" in r.checks["container"].detail
        assert r.r_version and r.r_version.startswith("4.")
    assert report.to_json()  # (the document is checked against the schema elsewhere)
    assert containers_left(bare) == {}  # (the check's R ran in a container of its own)
    # render --check, then a real computation on the workers in the image
    out = tmp_path / "cluster.R"
    result = CliRunner().invoke(cli, ["render", str(tmp_path / "hosts.yaml"), "--check",
                                      "--timeout", "60", "-o", str(out)])
    assert result.exit_code == 0, result.output
    r = run_r_in_test(RUN.format(file=r_string(str(out)), marker=r_string(MARKER_FILE)),
                      tmp_path, env=launch_env(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)
    assert lines["n"].strip() == "4"
    assert lines["marker"].split() == [MARKER] * 4
    assert lines["sum"].strip() == "2870"
    assert nothing_left(bare, marker=tmp_path, wait=10) == {}
    assert containers_left(bare) == {}


def test_a_package_missing_in_the_image_fails_packages_naming_it(
        bare: Testbed, image: Image, tmp_path: Path) -> None:
    # foreach is installed here (the primary), in the site library the image leaves out
    inv = container_inventory(bare, tmp_path / "hosts.yaml",
                              {"image": image.name, "pull": "never"},
                              r_packages=["MASS", "foreach"])
    result = CliRunner().invoke(cli, ["check", str(inv), "--json", "--timeout", "60"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    jsonschema.Draft202012Validator(check_schema()).validate(doc)
    assert len(doc["hosts"]) == 2
    for h in doc["hosts"]:
        assert h["failed"] == ["packages"], h
        step = h["checks"]["packages"]
        assert step["detail"].startswith(f"in {image.name}: ")
        assert "foreach" in step["detail"] and "MASS" not in step["detail"]
        assert f"image push {image.name}" in step["hint"]
        assert h["checks"]["rscript"]["status"] == "ok"
        assert h["checks"]["callback"]["status"] == "ok"
        assert h["checks"]["container"]["status"] == "ok"
    assert containers_left(bare) == {}


def test_a_lockfile_of_600_packages_gets_the_missing_ones_named_in_the_image(
        bare: Testbed, image: Image, tmp_path: Path) -> None:
    """The check's R code grows with the reference, and R drops a long -e: it reaches R
    in the image on the container's stdin, after the nonce."""
    r_version, mass = installed_here("MASS")
    absent = many_packages(600)
    lock = write_lockfile(tmp_path / "renv.lock", {**absent, "MASS": mass},
                          r_version=r_version)
    report = _check(bare, tmp_path / "hosts.yaml", image, lockfile=str(lock))
    names = sorted(absent)
    for r in report.hosts:
        assert r.failed == ["packages"], (r.label, r.checks)
        assert r.checks["rscript"].detail.endswith(f"(R {r_version})"), r.checks["rscript"]
        assert r.checks["callback"].detail.startswith(f"R in {image.name} reached")
        step = r.checks["packages"]
        assert step.detail == (f"in {image.name}: not installed: "
                               f"{', '.join(names[:SHOWN])} and {len(names) - SHOWN} more")
        assert r.packages == {**dict.fromkeys(absent), "MASS": mass}
    assert containers_left(bare) == {}


def test_the_callback_from_the_image_goes_straight_to_the_primary_without_a_tunnel(
        bare: Testbed, image: Image, tmp_path: Path) -> None:
    report = _check(bare, tmp_path / "hosts.yaml", image, tunnel="none")
    for r in report.hosts:
        assert r.ok, (r.label, r.checks)
        step = r.checks["callback"]
        # (a warning may follow, true where this machine's resolver is slow to name
        # the host's address: tests/test_callback_lookup.py)
        assert step.detail.startswith(f"R in {image.name} reached {bare.primary_address}:"
                                      f"{report.port}, nonce checked"), step


def test_an_option_the_engine_refuses_fails_rscript_with_the_engines_words(
        bare: Testbed, image: Image, tmp_path: Path) -> None:
    inv = container_inventory(bare, tmp_path / "hosts.yaml",
                              {"image": image.name, "pull": "never",
                               "options": ["--no-such-option"]})
    report = check(load_inventory(inv), ssh_config=[], timeout=60)
    for r in report.hosts:
        assert r.failed == ["rscript"], (r.label, r.checks)
        step = r.checks["rscript"]
        assert step.detail.startswith(f"Rscript does not start in {image.name}: ")
        assert "no-such-option" in step.detail
        assert r.checks["container"].status == "ok"
        assert [r.checks[s].status for s in ("packages", "callback")] == ["skipped"] * 2
    assert containers_left(bare) == {}
