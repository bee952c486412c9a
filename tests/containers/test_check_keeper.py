"""The check tries the launch's keeper (the command that holds a host's container open
for its workers, ``sleep infinity``) in the image, on a real test host with podman.

An image whose ``sleep`` has no ``infinity`` (as BusyBox's: here a shell script named
sleep that refuses it) or that has no ``sleep`` at all runs R, its packages and the
callback as well as any other: only the launch's container, started with that keeper,
fails. The check must fail the host's ``container`` step then, naming the image, what
went wrong and what to change, and leave no container behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sshcluster.check import check
from sshcluster.check.report import HostReport
from sshcluster.inventory import load_inventory
from sshcluster.testing import Testbed
from sshcluster.testing.containers import ENGINE_DIRS, containers_left, load_image, on_host
from sshcluster.testing.fixtures import build_testbed

from .helpers import Image, container_inventory

#: A sleep as BusyBox's is, as far as the keeper goes: numbers only, no "infinity".
BUSYBOX_LIKE_SLEEP = """\
#!/bin/sh
for a in "$@"; do
  case $a in
    ''|*[!0-9.smhd]*) echo "sleep: invalid number '$a'" >&2; exit 1;;
  esac
done
exec /usr/bin/gnusleep "$@"
"""

#: The images made on the host from the test image: (name, what the container runs).
DERIVED = {
    "localhost/sshcluster-test-busybox-sleep:1":
        "cat /usr/bin/sleep > /usr/bin/gnusleep && chmod 755 /usr/bin/gnusleep && "
        "cat /keeper/sleep > /usr/bin/sleep",
    "localhost/sshcluster-test-no-sleep:1": "rm /usr/bin/sleep",
}


@pytest.fixture(scope="module")
def host(request: pytest.FixtureRequest, testbed_env: None, image: Image,
         tmp_path_factory: pytest.TempPathFactory) -> Testbed:
    """One host with the test image and the two images made from it."""
    tb = build_testbed(request, 1, private_dirs=ENGINE_DIRS)
    load_image(tb, tb.hosts, image.archive)
    shared = tmp_path_factory.mktemp("keeper")
    (shared / "sleep").write_text(BUSYBOX_LIKE_SLEEP)
    for name, change in DERIVED.items():
        made = on_host(tb, tb.hosts[0], [
            "sh", "-c", 'podman run --name derive --network none -v "$1:/keeper:ro" '
                        '--entrypoint sh "$2" -c "$3" && podman commit -q derive "$4" && '
                        "podman rm derive", "sh", str(shared), image.name, change, name])
        assert made.returncode == 0, made.stderr
    return tb


def _check(tb: Testbed, path: Path, image: str) -> HostReport:
    inv = container_inventory(tb, path, {"image": image, "pull": "never"})
    report = check(load_inventory(inv), ssh_config=[], timeout=60)
    assert len(report.hosts) == 1
    return report.hosts[0]


def test_the_test_images_sleep_keeps_the_container(host: Testbed, image: Image,
                                                   tmp_path: Path) -> None:
    """The test image (GNU sleep) passes, the keeper tried and removed."""
    report = _check(host, tmp_path / "hosts.yaml", image.name)
    assert report.checks["container"].status == "ok", report.checks["container"]
    assert report.ok
    assert containers_left(host) == {}


@pytest.mark.parametrize(("name", "says"), [
    ("localhost/sshcluster-test-busybox-sleep:1",
     "the launch's `sleep infinity` did not stay up in it (exited, exit status 1): "
     "sleep: invalid number 'infinity'"),
    ("localhost/sshcluster-test-no-sleep:1",
     "the launch's `sleep infinity` does not start in it: "),
], ids=["sleep-without-infinity", "no-sleep"])
def test_an_image_the_launch_cannot_keep_open_fails_the_container_step(
        host: Testbed, tmp_path: Path, name: str, says: str) -> None:
    inv = tmp_path / "hosts.yaml"
    report = _check(host, inv, name)
    step = report.checks["container"]
    assert step.status == "failed", step
    assert step.detail.startswith(f"{name} cannot hold the workers: {says}"), step.detail
    if "no-sleep" in name:  # (the engine's words name the program it did not find)
        assert "sleep" in step.detail.split(says, 1)[1], step.detail
    assert step.hint is not None
    assert name in step.hint and f"container.image in {inv}" in step.hint, step.hint
    # R itself runs in the image: the keeper is the only thing wrong with it
    for ok in ("rscript", "packages", "callback"):
        assert report.checks[ok].status == "ok", (ok, report.checks[ok])
    assert containers_left(host) == {}
