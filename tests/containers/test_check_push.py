"""The check's container step and ``sshcluster image push`` on three real test hosts
with podman, each with a store of its own.

node1 has the image; node2 has another image under the same name (a container of it
committed); node3 has none, and no docker (an empty /usr/local/bin of its own). The
docker path is tested through podman's docker-compatible command line: a ``docker``
that runs podman, in a /usr/local/sbin of node1's own (no docker daemon runs here).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from sshcluster.check import StepResult, check
from sshcluster.cli import cli
from sshcluster.inventory import load_inventory
from sshcluster.testing import Testbed
from sshcluster.testing.containers import ENGINE_DIRS, containers_left, load_image, on_host
from sshcluster.testing.fixtures import build_testbed

from .helpers import Image, container_inventory

#: podman's docker-compatible command line, as Debian's podman-docker installs it.
DOCKER_SHIM = "#!/bin/sh\nexec podman \"$@\"\n"


@pytest.fixture(scope="module")
def hosts(request: pytest.FixtureRequest, testbed_env: None, image: Image) -> Testbed:
    tb = build_testbed(request, 3, private_dirs={**ENGINE_DIRS, "/usr/local/sbin": "1m",
                                                 "/usr/local/bin": "1m"})
    node1, node2, _ = tb.hosts
    load_image(tb, [node1, node2], image.archive)
    drift = on_host(tb, node2, ["sh", "-c",
                                f"podman run --name drift --entrypoint touch {image.name} "
                                f"/etc/drift && podman commit -q drift {image.name} && "
                                "podman rm drift"])
    assert drift.returncode == 0, drift.stderr
    shim = on_host(tb, node1, ["sh", "-c", f"printf '%s' '{DOCKER_SHIM}' > "
                               "/usr/local/sbin/docker && chmod 755 /usr/local/sbin/docker"])
    assert shim.returncode == 0, shim.stderr
    return tb


def _check(tb: Testbed, path: Path, container: object, **kw: object
           ) -> dict[str, StepResult]:
    inv = load_inventory(container_inventory(tb, path, container, **kw))  # type: ignore[arg-type]
    report = check(inv, ssh_config=[], timeout=60)
    return {r.host.host: r.checks["container"] for r in report.hosts}


def test_the_check_names_the_host_with_another_digest_and_the_one_without_the_image(
        hosts: Testbed, image: Image, tmp_path: Path) -> None:
    a1, a2, a3 = (h.address for h in hosts.hosts)
    steps = _check(hosts, tmp_path / "hosts.yaml",
                   {"image": image.name, "engine": "podman", "pull": "never"},
                   r_packages=["MASS"])
    assert steps[a1].status == "ok", steps[a1]
    assert f"image sha256:{image.id}" in steps[a1].detail
    # two hosts with the image, one digest each: the second is named, with node1
    assert steps[a2].status == "failed"
    assert f"not sha256:{image.id[:12]} as on {a1}" in steps[a2].detail
    assert "image push" in (steps[a2].hint or "")
    assert steps[a3].status == "failed"
    assert "is not on the host (pull: never)" in steps[a3].detail
    assert "sshcluster image push" in (steps[a3].hint or "")
    assert containers_left(hosts) == {}  # (the check's R run removed its container)


def test_the_check_through_docker_finds_a_package_missing_and_docker_missing(
        hosts: Testbed, image: Image, tmp_path: Path) -> None:
    a1, _, a3 = (h.address for h in hosts.hosts)
    inv = load_inventory(container_inventory(
        hosts, tmp_path / "hosts.yaml", {"image": image.name, "engine": "docker",
                                         "pull": "never"}, r_packages=["MASS", "foreach"]))
    reports = {r.host.host: r for r in check(inv, ssh_config=[], timeout=60).hosts}
    one, three = reports[a1], reports[a3]
    assert one.checks["container"].status == "ok"
    assert one.checks["container"].detail.startswith("docker, image sha256:")
    assert one.failed == ["packages"]  # (foreach is not in the image)
    assert one.checks["packages"].detail.startswith(f"in {image.name}: ")
    assert "foreach" in one.checks["packages"].detail
    assert "MASS" not in one.checks["packages"].detail
    assert one.checks["rscript"].detail.startswith(f"Rscript in {image.name} (R 4.")
    assert one.checks["callback"].detail.startswith(f"R in {image.name} reached")
    assert three.checks["container"].status == "failed"
    assert three.checks["container"].detail == "docker is not installed"
    # (R runs in the image, so the R steps wait for the container step)
    assert [three.checks[s].status for s in ("rscript", "packages", "callback")] == [
        "skipped"] * 3
    assert "R runs in" in three.checks["rscript"].detail


def test_image_push_sends_to_the_two_hosts_without_the_digest_only(
        hosts: Testbed, image: Image, tmp_path: Path) -> None:
    inv = container_inventory(hosts, tmp_path / "hosts.yaml",
                              {"image": image.name, "engine": "podman", "pull": "never"})
    result = CliRunner().invoke(cli, ["image", "push", image.name, str(inv), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    outcome = {h["host"]: (h["outcome"], h["sent_bytes"]) for h in doc["hosts"]}
    a1, a2, a3 = (h.address for h in hosts.hosts)
    assert outcome[a1] == ("had", 0)
    assert outcome[a2][0] == outcome[a3][0] == "sent"
    assert outcome[a2][1] == outcome[a3][1] == doc["archive_bytes"] > 0
    # every host has the one digest now: the check agrees, and a second push sends nothing
    steps = _check(hosts, tmp_path / "again.yaml",
                   {"image": image.name, "engine": "podman", "pull": "never"})
    assert {s.status for s in steps.values()} == {"ok"}, steps
    again = CliRunner().invoke(cli, ["image", "push", image.name, str(inv)])
    assert again.exit_code == 0, again.output
    assert "sent to 0, already on 3, failed on 0 of 3 hosts" in again.output
