"""The spec file and the user data: read once, checked once, every mistake at its line."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sshcluster import ec2
from sshcluster.ec2 import parse_spec, user_data
from sshcluster.errors import InventoryError

from .helpers import ROOT, SPEC, make_spec


def test_user_data_arms_the_dead_mans_switch_before_the_setup(ami: str) -> None:
    spec = make_spec(ami, setup="#!/bin/bash\nset -e\napt-get install -y r-base-core\n")
    expires = ec2.utcnow() + timedelta(hours=2)
    text = user_data(spec, expires)
    assert text.startswith("#!/bin/sh\n")
    assert f"expires={int(expires.timestamp())}" in text
    assert text.index("shutdown -h") < text.index("apt-get install")
    assert "/var/lib/cloud/scripts/per-boot/" in text  # re-armed after a reboot


def test_the_example_spec_is_valid() -> None:
    spec = parse_spec((ROOT / "ec2.example.yaml").read_text(),
                      "ec2.example.yaml")
    assert spec.name and spec.ssh_cidr and spec.max_lifetime >= timedelta(minutes=10)


def test_spec_fields() -> None:
    spec = parse_spec(SPEC, "c.yaml")
    assert spec.count == 4 and spec.max_lifetime == timedelta(hours=1, minutes=30)
    assert spec.ssh_cidr == ("203.0.113.7/32",) and not spec.spot and spec.port is None


@pytest.mark.parametrize(("change", "text"), [
    ("  count: 0\n", "ec2.count: expected a number of instances"),
    ("  max_lifetime: 2 hours\n", "ec2.max_lifetime: expected a duration"),
    ("  max_lifetime: 30d\n", "ec2.max_lifetime: 30d is outside"),
    ("  spot: maybe\n", "ec2.spot: expected true or false"),
    ("  image: ubuntu-99.04\n", "ec2.image: expected an AMI id"),
    ("  ssh_cidr: 0.0.0.0/0\n", "lets the whole internet"),
    ("  ssh_cidr: 203.0.113.7\n", "has no prefix length"),
    ("  instance_typo: x\n", "unknown key 'instance_typo'"),
])
def test_spec_errors_name_file_line_and_field(change: str, text: str) -> None:
    key = change.split(":")[0]
    spec = "".join(x for x in SPEC.splitlines(keepends=True) if not x.startswith(key + ":"))
    spec += change
    with pytest.raises(InventoryError) as e:
        parse_spec(spec, "c.yaml")
    assert e.value.path == "c.yaml" and e.value.line == len(spec.splitlines())
    assert text in str(e.value)


def test_ssh_from_anywhere_only_when_said_so() -> None:
    text = SPEC.replace("203.0.113.7/32", "0.0.0.0/0") + "  allow_ssh_from_anywhere: true\n"
    assert parse_spec(text).ssh_cidr == ("0.0.0.0/0",)
    no_cidr = "".join(x for x in SPEC.splitlines(keepends=True) if "ssh_cidr" not in x)
    with pytest.raises(InventoryError, match="'ssh_cidr' is required"):
        parse_spec(no_cidr)
