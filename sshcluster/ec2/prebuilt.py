"""The ``r_packages`` of a cluster whose instances run the primary's platform: ``up``
sends the primary's installed builds (``sshcluster sync``) once the instances have R,
instead of each instance building them from source at first boot.

The platform is known before the launch for the images ``image:`` can name: the
distribution's release (Debian 12, Ubuntu 22.04 or 24.04), the R that release packages
(``r_version: image``) and the instance type's architecture. When they are the
primary's (its ``/etc/os-release``, R's major.minor and ``R.version$platform``) and the
primary has every package, the instances' first boot installs only R (and
``r-recommended``), and ``up`` ends with a sync. Otherwise, or for an AMI id (whose
distribution and R are not known), the first boot installs the packages as before.
The sync compares the platforms again on each instance, and installs from ``repos:``
where they turn out to differ, so a wrong guess costs time, never a broken library.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from sshcluster.errors import PackagesError

if TYPE_CHECKING:
    from sshcluster.ec2.images import Image
    from sshcluster.ec2.spec import EC2Spec
    from sshcluster.inventory import Inventory
    from sshcluster.packages.reference import Reference

#: What an image by name runs: its os-release ``ID VERSION_ID`` and its R's major.minor.
IMAGE_PLATFORMS: dict[str, tuple[str, str]] = {
    "debian-12": ("debian 12", "4.2"),
    "ubuntu-22.04": ("ubuntu 22.04", "4.1"),
    "ubuntu-24.04": ("ubuntu 24.04", "4.3"),
}

#: ``R.version$platform`` of Debian's and Ubuntu's R on each EC2 architecture.
R_PLATFORMS = {"x86_64": "x86_64-pc-linux-gnu", "arm64": "aarch64-unknown-linux-gnu"}


def primary_reference(spec: EC2Spec) -> Reference | None:
    """The primary's versions of the spec's ``r_packages`` (None without any, or when the
    primary's R cannot say)."""
    if not spec.r_packages:
        return None
    from sshcluster.packages.reference import primary_reference_async

    try:
        return asyncio.run(primary_reference_async(spec.r_packages))
    except PackagesError:
        return None


def by_sync(spec: EC2Spec, image: Image, reference: Reference | None) -> str | None:
    """Why the instances get the ``r_packages`` by sync from the primary (a sentence for
    the progress), or None when they build them at first boot."""
    known = IMAGE_PLATFORMS.get(image.name)
    if reference is None or reference.absent or known is None or spec.r_version != "image":
        return None
    os, r_minor = known
    platform = R_PLATFORMS.get(image.architecture)
    if (reference.os_release, reference.r_minor, reference.platform) != (os, r_minor, platform):
        return None
    return (f"the instances run the primary's platform ({os}, R {r_minor}, {platform}): "
            f"the primary's builds of {', '.join(spec.r_packages)} are sent to them once "
            "they have R, instead of a build from source at first boot")




def send_packages(inventory: Inventory, reference: Reference, hosts: dict[str, str], *,
                  report: Callable[[str], None]) -> None:
    """Sync the primary's builds to every instance of ``inventory`` (``hosts``: its
    address -> instance id); raise :class:`~sshcluster.ec2.ready.SetupFailed` naming each
    instance that did not get them (and why: a library missing there, say)."""
    from sshcluster.ec2.ready import SetupFailed, SetupStatus
    from sshcluster.packages.sync import sync

    result = sync(inventory, reference=reference,
                  progress=lambda label, doing: report(f"{label}: {doing}"))
    if not result.ok:
        raise SetupFailed({hosts.get(h.host.host, h.label): SetupStatus("failed", h.detail)
                           for h in result.failed}, len(result.hosts),
                          hint="see why above; 'sshcluster sync' on the written inventory "
                               "tries again")


__all__ = ["IMAGE_PLATFORMS", "R_PLATFORMS", "by_sync", "primary_reference", "send_packages"]
