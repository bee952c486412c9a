"""The spec file and the user data: read once, checked once, every mistake at its line."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from sshcluster import ec2
from sshcluster.ec2 import parse_spec, user_data
from sshcluster.errors import InventoryError

from .helpers import ROOT, SPEC, make_spec, spec_text


def test_user_data_arms_the_dead_mans_switch_before_the_setup(ami: str) -> None:
    spec = make_spec(ami, setup="#!/bin/bash\nset -e\napt-get install -y r-base-core\n")
    now = ec2.utcnow()
    text = user_data(spec, now + timedelta(hours=2), now=now)
    assert text.startswith("#!/bin/sh\n")
    assert "\nlifetime=7200\n" in text  # (counted on the instance's clock)
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


def test_the_fields_issue_15_added() -> None:
    text = SPEC.replace("  image: ami-0123456789abcdef0\n", "  image: debian-12\n").replace(
        "  user: ubuntu\n", "") + (
        "  r_packages: [data.table, foreach]\n  cran: https://cran.example.org/\n"
        "  disk_gb: 100\n  ncore: vcpus\n"
        "  subnet_id: [subnet-0123456789abcdef0, subnet-0123456789abcdef1]\n")
    spec = parse_spec(text, "c.yaml")
    assert spec.image == "debian-12" and spec.user == "admin"
    assert spec.r_packages == ("data.table", "foreach")
    assert spec.cran == "https://cran.example.org/" and spec.disk_gb == 100
    assert spec.ncore == "vcpus"
    assert spec.subnet_ids == ("subnet-0123456789abcdef0", "subnet-0123456789abcdef1")
    defaults = parse_spec(SPEC)
    assert (defaults.disk_gb, defaults.ncore, defaults.cran, defaults.r_version) == (
        30, "cores", "https://cloud.r-project.org", "image")
    assert parse_spec(SPEC + "  r_version: cran\n").r_version == "cran"
    assert parse_spec(SPEC.replace("ami-0123456789abcdef0", "ubuntu-24.04").replace(
        "  user: ubuntu\n", "")).user == "ubuntu"


@pytest.mark.parametrize(("change", "text"), [
    ("  r_packages: [foreach, 'x; rm -rf /']\n", "ec2.r_packages[1]: expected an R package"),
    ("  cran: ftp://cran.example.org\n", "ec2.cran: expected the URL of a CRAN mirror"),
    ("  disk_gb: 4\n", "ec2.disk_gb: expected a root volume size in GiB (8-16384)"),
    ("  ncore: threads\n", "ec2.ncore: expected cores or vcpus"),
    ("  r_version: '4.4'\n", "ec2.r_version: expected image or cran"),
    ("  subnet_id: [subnet-0123456789abcdef0, sub]\n", "ec2.subnet_id[1]: expected a subnet"),
])
def test_the_new_fields_are_checked_at_their_line(change: str, text: str) -> None:
    with pytest.raises(InventoryError) as e:
        parse_spec(SPEC + change, "c.yaml")
    assert e.value.line == len(SPEC.splitlines()) + 1 and text in str(e.value)


def test_an_ami_id_needs_a_user() -> None:
    with pytest.raises(InventoryError, match="'user' is required with an AMI id"):
        parse_spec(SPEC.replace("  user: ubuntu\n", ""))


def test_user_data_keys_before_the_setup_and_valid_shell(ami: str, tmp_path: Path) -> None:
    import subprocess

    spec = make_spec(ami, setup="echo 'it''s' $HOME \"quoted\"\n",
                     r_packages=("data.table", "foreach"))
    text = user_data(spec, ec2.utcnow() + timedelta(hours=2))
    assert text.index("shutdown -h") < text.index("BEGIN SSH HOST KEY KEYS") \
        < text.index("echo 'it''s'") < text.index("nohup setsid")
    assert "r_packages='data.table foreach'\n" in text
    assert "cran=https://cloud.r-project.org\n" in text  # quoted as the shell needs
    assert "HttpTokens" not in text and len(text.encode()) < 16 * 1024
    (tmp_path / "ud").write_text(text)
    for shell in ("sh", "bash"):  # dash and bash both read it
        out = subprocess.run([shell, "-n", str(tmp_path / "ud")], capture_output=True,
                             text=True, check=False)
        assert out.returncode == 0, out.stderr


def test_repos_is_binaries_source_or_a_url(tmp_path: Path) -> None:
    path = tmp_path / "ec2.yaml"
    for value in ("binaries", "source", "https://example.org/cran"):
        path.write_text(spec_text("ami-0123456789abcdef0", repos=value))
        assert ec2.load_spec(path).repos == value
    path.write_text(spec_text("ami-0123456789abcdef0"))
    assert ec2.load_spec(path).repos == "binaries"
    path.write_text(spec_text("ami-0123456789abcdef0", repos="ftp://x"))
    with pytest.raises(InventoryError, match="binaries, source or the URL"):
        ec2.load_spec(path)
