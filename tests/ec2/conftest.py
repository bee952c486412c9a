"""Fixtures of the EC2 tests: a fresh moto for each test, an image, local SSH servers."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sshcluster import ec2

from .faults import FaultProxy
from .helpers import REGION, SshHosts, internet_gateway


@pytest.fixture
def client(moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An EC2 client for a freshly reset moto, and this test's own record directory."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset",
                                                  method="POST")).read()
    monkeypatch.setenv("SSHCLUSTER_STATE_DIR", str(tmp_path / "state"))
    client = ec2.make_client(REGION)
    internet_gateway(client)
    return client


@pytest.fixture(scope="session")
def ubuntu_ami(moto_url: str) -> str:
    # moto's stock images are the same after every reset; listing them is slow, so once.
    images = ec2.make_client(REGION).describe_images(
        Owners=["amazon"], Filters=[{"Name": "name", "Values": ["*ubuntu*"]}])
    return str(images["Images"][0]["ImageId"])


@pytest.fixture
def ami(client: Any, ubuntu_ami: str) -> str:
    return ubuntu_ami


@pytest.fixture(scope="session")
def hosts() -> Iterator[SshHosts]:
    h = SshHosts(4)
    yield h
    h.close()


@pytest.fixture
def proxy(moto_url: str, client: Any) -> Iterator[FaultProxy]:
    """The fault proxy in front of this test's moto (``ec2.make_client(REGION,
    endpoint_url=proxy.url)``)."""
    p = FaultProxy(moto_url)
    yield p
    p.close()
