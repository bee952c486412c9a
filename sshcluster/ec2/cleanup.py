"""Removing what a cluster consists of: its instances, spot requests, security groups and
key pairs. ``down``, ``gc`` and a failed or interrupted ``up`` all end a cluster here."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sshcluster.ec2.aws import aws_errors, make_filters
from sshcluster.ec2.instances import cluster_filters, cluster_instances

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client


@dataclass(frozen=True)
class DownReport:
    """What was removed of cluster ``name``; all empty when there was nothing left."""

    name: str
    terminated: tuple[str, ...] = ()
    cancelled_spot_requests: tuple[str, ...] = ()
    deleted_security_groups: tuple[str, ...] = ()
    deleted_key_pairs: tuple[str, ...] = ()
    removed_files: tuple[str, ...] = ()

    @property
    def removed_anything(self) -> bool:
        """True if down terminated, cancelled or deleted anything."""
        return bool(self.terminated or self.cancelled_spot_requests
                    or self.deleted_security_groups or self.deleted_key_pairs
                    or self.removed_files)

    def summary(self) -> str:
        """One line for people."""
        parts = [f"{what}: {', '.join(ids)}" for what, ids in (
            ("terminated", self.terminated),
            ("cancelled spot requests", self.cancelled_spot_requests),
            ("deleted security groups", self.deleted_security_groups),
            ("deleted key pairs", self.deleted_key_pairs),
        ) if ids]
        return "; ".join(parts) if parts else "nothing left to remove"


def remove_resources(client: EC2Client, name: str, *, run_id: str | None = None,
                     known_ids: Iterable[str] = ()) -> DownReport:
    """Terminate instances, cancel spot requests, delete the tagged security groups and
    key pairs of cluster ``name`` (of one run only, if ``run_id``)."""
    instances = cluster_instances(client, name, run_id=run_id)
    ids = sorted({*(i.id for i in instances), *known_ids})
    tag_filters = cluster_filters(name, run_id=run_id)
    if ids:
        with aws_errors("TerminateInstances"):
            client.terminate_instances(InstanceIds=ids)
    with aws_errors("DescribeSpotInstanceRequests"):
        spot = client.describe_spot_instance_requests(
            Filters=[*tag_filters, *make_filters(state=["open", "active", "disabled"])],
        )["SpotInstanceRequests"]
    spot_ids = sorted({*(r["SpotInstanceRequestId"] for r in spot),
                       *(i.spot_request_id for i in instances if i.spot_request_id)})
    if spot_ids:
        with aws_errors("CancelSpotInstanceRequests"):
            client.cancel_spot_instance_requests(SpotInstanceRequestIds=spot_ids)
    with aws_errors("DescribeSecurityGroups"):
        groups = [g["GroupId"] for g in
                  client.describe_security_groups(Filters=tag_filters)["SecurityGroups"]]
    if ids and groups:
        # A security group cannot be deleted while an instance, even one shutting down,
        # still uses it.
        with aws_errors("waiting for instance_terminated"):
            client.get_waiter("instance_terminated").wait(InstanceIds=ids)
    for group in groups:
        with aws_errors("DeleteSecurityGroup"):
            client.delete_security_group(GroupId=group)
    with aws_errors("DescribeKeyPairs"):
        pairs = [k["KeyName"] for k in
                 client.describe_key_pairs(Filters=tag_filters)["KeyPairs"]]
    for pair in pairs:
        with aws_errors("DeleteKeyPair"):
            client.delete_key_pair(KeyName=pair)
    return DownReport(name, tuple(ids), tuple(spot_ids), tuple(groups), tuple(pairs))


__all__ = ["DownReport", "remove_resources"]
