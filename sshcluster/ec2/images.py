"""Images: an AMI id, or a name such as ``debian-12`` resolved through AWS's public SSM
parameters for the instance type's architecture.

Debian and Canonical publish the current AMI of each release in every region as public
Systems Manager parameters; reading one is ``ssm:GetParameter`` and needs no search of
the image catalogue. The resolved id is shown by ``--dry-run`` and kept in the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sshcluster.ec2.aws import aws_errors, call, hint_for, make_service_client
from sshcluster.errors import EC2Error

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client


@dataclass(frozen=True)
class ImageName:
    """An image known by name: its SSM parameter (``{arch}`` is ``amd64`` or ``arm64``)
    and the login user its cloud-init creates."""

    parameter: str
    user: str


#: The images ``image:`` may name instead of an AMI id.
IMAGE_NAMES: dict[str, ImageName] = {
    "debian-12": ImageName("/aws/service/debian/release/12/latest/{arch}", "admin"),
    "ubuntu-22.04": ImageName(
        "/aws/service/canonical/ubuntu/server/22.04/stable/current/{arch}/hvm/ebs-gp2/ami-id",
        "ubuntu"),
    "ubuntu-24.04": ImageName(
        "/aws/service/canonical/ubuntu/server/24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id",
        "ubuntu"),
}

#: EC2's architecture names and the distributions' names for them.
_DEB_ARCH = {"x86_64": "amd64", "arm64": "arm64"}


@dataclass(frozen=True)
class Image:
    """The image the instances start from, as DescribeImages tells it."""

    id: str
    name: str  # the spec's name for it (``debian-12``), or the AMI's own name
    architecture: str  # x86_64 or arm64
    root_device: str | None
    root_size_gb: int | None


def image_parameter(name: str, architecture: str) -> str:
    """The SSM parameter that holds the current AMI id of image ``name`` for EC2
    ``architecture`` (``x86_64`` or ``arm64``)."""
    arch = _DEB_ARCH.get(architecture)
    if arch is None:
        raise EC2Error(f"image {name} has no build for the architecture {architecture}",
                       hint="choose an x86_64 or arm64 instance type, or an AMI id")
    return IMAGE_NAMES[name].parameter.format(arch=arch)


def resolve_image(client: EC2Client, image: str, architectures: list[str], *,
                  ssm: Any = None) -> Image:
    """The image ``image`` names: an AMI id as it is, a name of :data:`IMAGE_NAMES` through
    its SSM parameter for the first of the instance type's ``architectures`` it has.
    ``ssm`` is an SSM client (default: one for the EC2 client's region)."""
    name = image
    if image in IMAGE_NAMES:
        ssm = ssm or make_service_client("ssm", client.meta.region_name)
        arch = next((a for a in architectures if a in _DEB_ARCH), architectures[0])
        parameter = image_parameter(image, arch)
        answer = call(ssm.get_parameter, "ssm:GetParameter", Name=parameter)
        assert answer is not None
        image = str(answer["Parameter"]["Value"])
    with aws_errors("DescribeImages"):
        found = client.describe_images(ImageIds=[image])["Images"]
    if not found:
        raise EC2Error(f"DescribeImages: image {image} not found in "
                       f"{client.meta.region_name}", code="InvalidAMIID.NotFound",
                       operation="DescribeImages", hint=hint_for("InvalidAMIID"))
    raw = found[0]
    root = raw.get("RootDeviceName")
    size = next((m["Ebs"].get("VolumeSize") for m in raw.get("BlockDeviceMappings", [])
                 if m.get("DeviceName") == root and "Ebs" in m), None)
    return Image(image, name if name != image else raw.get("Name", image),
                 raw.get("Architecture", "x86_64"), root, size)


__all__ = ["IMAGE_NAMES", "Image", "ImageName", "image_parameter", "resolve_image"]
