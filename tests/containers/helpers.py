"""What the container tests share: one offline R image, and test hosts with a podman
store of their own each (see :mod:`sshcluster.testing.containers`)."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sshcluster.testing import Testbed
from sshcluster.testing.containers import (
    ENGINE_DIRS,
    import_image,
    load_image,
    r_rootfs,
    save_image,
)
from sshcluster.testing.fixtures import build_testbed

#: What the test image's marker file says: a worker that reads it runs in the image.
MARKER = "inside-sshcluster-test-image"


class Image:
    """A test image in the primary's podman store, and its archive."""

    def __init__(self, name: str, image_id: str, archive: Path) -> None:
        self.name, self.id, self.archive = name, image_id, archive


def need_podman() -> None:
    if subprocess.run(["podman", "--version"], capture_output=True, check=False).returncode:
        pytest.fail("podman is not installed: run scripts/setup.sh")


def build_image(d: Path, marker: str = MARKER) -> Image:
    """An R image made offline from this machine's R (unique name), saved to an archive."""
    need_podman()
    name = f"localhost/sshcluster-test-{secrets.token_hex(4)}:1"
    image_id = import_image(r_rootfs(d / "rootfs", marker=marker), name)
    subprocess.run(["rm", "-rf", str(d / "rootfs")], check=True)
    return Image(name, image_id, save_image(name, d / "image.tar"))


def remove_image(image: Image) -> None:
    subprocess.run(["podman", "rmi", "-f", image.name], capture_output=True, check=False)


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    img = build_image(tmp_path_factory.mktemp("image"))
    yield img
    remove_image(img)


def engine_testbed(request: pytest.FixtureRequest, n: int, **kwargs: Any) -> Testbed:
    """``n`` hosts, each with a podman store of its own."""
    return build_testbed(request, n, private_dirs=ENGINE_DIRS, **kwargs)


@pytest.fixture(scope="module")
def tb(request: pytest.FixtureRequest, testbed_env: None, image: Image) -> Testbed:
    """Two hosts that have the test image."""
    bed = engine_testbed(request, 2)
    load_image(bed, bed.hosts, image.archive)
    return bed


def container_inventory(tb: Testbed, path: Path, container: Any, *, ncore: int = 2,
                        per_host: dict[int, Any] | None = None, **extra: Any) -> Path:
    """An inventory for ``tb`` with ``container:`` at the top (and per host)."""
    tb.write_inventory(path, ncore=ncore, extra={"container": container, **extra})
    if per_host:
        doc = yaml.safe_load(path.read_text())
        for i, c in per_host.items():
            doc["hosts"][i]["container"] = c
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
