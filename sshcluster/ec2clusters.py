"""The clusters sshcluster started that EC2 has now: list them, end them, collect garbage.

The Python API behind ``sshcluster ec2 ls | down | gc``; :mod:`sshcluster.ec2` starts the
clusters and re-exports everything here. A cluster is found by its tags
(``sshcluster:cluster``, ``sshcluster:run``), not by what this machine remembers, so
``down`` also ends what an ``up`` that died left behind; the records in :func:`state_dir`
tell ``ls`` which clusters this machine knows and ``gc`` which of its owner's are orphans.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sshcluster.ec2aws import (
    TAG_CLUSTER,
    TAG_RUN,
    Instance,
    aws_errors,
    cluster_instances,
    default_owner,
    describe_instances,
    find_record,
    format_time,
    load_records,
    make_filters,
    record_path,
    state_dir,
    utcnow,
)
from sshcluster.errors import EC2Error

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class DownReport:
    """What :func:`down` removed; all empty when there was nothing left.

    ``found`` is False when there was no such cluster at all: no record of it on this
    machine and nothing tagged with its name in the region, not even instances that
    ended (a name mistyped, or a cluster in another region).
    """

    name: str
    terminated: tuple[str, ...] = ()
    cancelled_spot_requests: tuple[str, ...] = ()
    deleted_security_groups: tuple[str, ...] = ()
    deleted_key_pairs: tuple[str, ...] = ()
    removed_files: tuple[str, ...] = ()
    found: bool = True

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


@dataclass(frozen=True)
class ClusterStatus:
    """One cluster as :func:`list_clusters` finds it: every instance, in any state."""

    name: str
    owner: str | None
    expires: datetime | None
    instances: tuple[Instance, ...]
    known: bool  # a record of it exists on this machine
    region: str

    @property
    def live(self) -> tuple[Instance, ...]:
        """The instances that are not terminated yet."""
        return tuple(i for i in self.instances if i.live)

    def to_dict(self, now: datetime) -> dict[str, Any]:
        """A JSON-ready view with ages and time left in seconds at ``now``."""
        return {
            "name": self.name,
            "region": self.region,
            "owner": self.owner,
            "expires": format_time(self.expires) if self.expires else None,
            "time_left_seconds": int((self.expires - now).total_seconds())
            if self.expires else None,
            "known": self.known,
            "instances": [{
                "id": i.id, "state": i.state, "type": i.instance_type, "spot": i.spot,
                "public_ip": i.public_ip, "private_ip": i.private_ip, "run_id": i.run_id,
                "age_seconds": int((now - i.launch_time).total_seconds())
                if i.launch_time else None,
            } for i in self.instances],
        }


@dataclass(frozen=True)
class Garbage:
    """A cluster :func:`find_garbage` proposes to remove, and why."""

    name: str
    reason: str
    instance_ids: tuple[str, ...]
    region: str


# --------------------------------------------------------------------------- down, ls, gc


def remove_resources(client: EC2Client, name: str, *, run_id: str | None = None,
                     known_ids: Iterable[str] = ()) -> DownReport:
    """Terminate instances, cancel spot requests, delete the tagged security groups and
    key pairs of cluster ``name`` (of one run only, if ``run_id``)."""
    instances = cluster_instances(client, name, run_id=run_id)
    ids = sorted({*(i.id for i in instances), *known_ids})
    tag_filters = make_filters(**{f"tag:{TAG_CLUSTER}": name})
    if run_id:
        tag_filters += make_filters(**{f"tag:{TAG_RUN}": run_id})
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


def down(name: str, *, client: EC2Client, records: Path | None = None) -> DownReport:
    """Terminate every instance of cluster ``name`` in any state, cancel its spot requests,
    delete the security group and key pair ``up`` created for it, and the private key
    file. Running it again finds nothing to do and returns an empty report; a name that
    never was a cluster here returns one with ``found`` False."""
    records = records or state_dir()
    report = remove_resources(client, name)
    region = client.meta.region_name
    record = find_record(records, region, name)
    removed: list[str] = []
    if record is not None:
        if record.key_file and Path(record.key_file).exists():
            Path(record.key_file).unlink()
            removed.append(record.key_file)
        record_path(records, region, name).unlink(missing_ok=True)
    report = replace(report, removed_files=tuple(removed))
    if record is None and not report.removed_anything:
        # Ended instances stay listed for a while: a second down of a cluster that was
        # there is not a mistyped name.
        report = replace(report, found=bool(cluster_instances(client, name, live=False)))
    return report


def list_clusters(*, client: EC2Client, records: Path | None = None) -> tuple[ClusterStatus, ...]:
    """Every cluster sshcluster started in the client's region, with every instance in
    any state (terminated ones while EC2 still lists them)."""
    region = client.meta.region_name
    known = {r.name for r in load_records(records or state_dir()) if r.region == region}
    by_name: dict[str, list[Instance]] = {}
    for inst in describe_instances(client, make_filters(**{"tag-key": TAG_CLUSTER})):
        by_name.setdefault(inst.cluster or "?", []).append(inst)
    out = []
    for name, instances in sorted(by_name.items()):
        # Terminated instances of an earlier run of the same name stay listed for a
        # while; their expiry is not this cluster's.
        current = [i for i in instances if i.live] or instances
        expiries = [i.expires for i in current if i.expires]
        out.append(ClusterStatus(name, instances[0].owner, min(expiries) if expiries else None,
                                 tuple(instances), name in known, region))
    return tuple(out)


def find_garbage(*, client: EC2Client, records: Path | None = None, owner: str | None = None,
                 now: datetime | None = None) -> tuple[Garbage, ...]:
    """Clusters with live instances that are past their expiry (anyone's) or that belong
    to ``owner`` (this machine) but have no record here (an ``up`` that died)."""
    now = now or utcnow()
    owner = owner or default_owner()
    out = []
    for status in list_clusters(client=client, records=records):
        live = status.live
        if not live:
            continue
        reason = None
        if status.expires is None:
            reason = "no valid expiry tag"
        elif status.expires <= now:
            reason = f"expired at {format_time(status.expires)}"
        elif not status.known and status.owner == owner:
            reason = "started from this machine, but no record of it is left here"
        if reason:
            out.append(Garbage(status.name, reason, tuple(i.id for i in live), status.region))
    return tuple(out)


def collect_garbage(garbage: Iterable[Garbage], *, client: EC2Client,
                    records: Path | None = None) -> tuple[DownReport, ...]:
    """``down`` every cluster in ``garbage`` (found with a client for the same region)."""
    garbage = tuple(garbage)
    region = client.meta.region_name
    elsewhere = sorted({g.region for g in garbage} - {region})
    if elsewhere:
        raise EC2Error(f"garbage found in {', '.join(elsewhere)} cannot be collected with "
                       f"a client for {region}", hint="collect each region's garbage with "
                       "a client for that region")
    return tuple(down(g.name, client=client, records=records) for g in garbage)


__all__ = [
    "ClusterStatus",
    "DownReport",
    "Garbage",
    "collect_garbage",
    "down",
    "find_garbage",
    "list_clusters",
    "remove_resources",
]
