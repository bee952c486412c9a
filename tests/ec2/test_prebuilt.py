"""When up sends the primary's builds instead of building r_packages at first boot."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from sshcluster import ec2
from sshcluster.ec2.images import Image
from sshcluster.ec2.prebuilt import by_sync
from sshcluster.packages.reference import Reference, RPackage

SPEC = ec2.EC2Spec(name="p", region="us-east-1", image="debian-12", instance_type="t3.medium",
                   count=2, user="admin", max_lifetime=timedelta(hours=1),
                   r_packages=("foreach",))
IMAGE = Image("ami-0123456789abcdef0", "debian-12", "x86_64", "/dev/xvda", 8)
PRIMARY = Reference("the primary", "4.2.2", (RPackage("foreach", "1.5.2", "/x/foreach"),),
                    "x86_64-pc-linux-gnu", "debian 12")


def test_the_primarys_platform_gets_its_builds() -> None:
    why = by_sync(SPEC, IMAGE, PRIMARY)
    assert why is not None and "(debian 12, R 4.2, x86_64-pc-linux-gnu)" in why


@pytest.mark.parametrize(("spec", "image", "primary"), [
    (SPEC, replace(IMAGE, name="ubuntu-24.04"), PRIMARY),        # another release
    (SPEC, replace(IMAGE, architecture="arm64"), PRIMARY),       # another architecture
    (SPEC, replace(IMAGE, name="my-own-ami"), PRIMARY),          # an AMI id: not known
    (replace(SPEC, r_version="cran"), IMAGE, PRIMARY),           # a current R there
    (SPEC, IMAGE, replace(PRIMARY, r_version="4.3.1")),          # another R here
    (SPEC, IMAGE, replace(PRIMARY, absent=("foreach",))),        # the primary lacks one
    (SPEC, IMAGE, None),                                         # no R here
], ids=["release", "arch", "ami", "r-cran", "r-minor", "absent", "no-reference"])
def test_anything_else_builds_at_first_boot(spec: ec2.EC2Spec, image: Image,
                                            primary: Reference | None) -> None:
    assert by_sync(spec, image, primary) is None
