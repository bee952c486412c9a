"""The instances sshcluster starts, and the tags that say whose they are and when they end.

Every resource sshcluster creates carries the tags ``sshcluster:cluster`` (the cluster's
name), ``sshcluster:owner`` (``user@host`` of whoever started it), ``sshcluster:expires``
(ISO 8601 UTC) and ``sshcluster:run`` (one ``up``); instances also carry
``sshcluster:batch`` (which RunInstances call started them). A cluster started for one
detached job (``sshcluster run --ec2 --detach``) carries ``sshcluster:job``, its id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from sshcluster.ec2.aws import aws_errors, make_filters

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client
    from mypy_boto3_ec2.literals import ResourceTypeType
    from mypy_boto3_ec2.type_defs import FilterTypeDef, InstanceTypeDef, TagSpecificationTypeDef

    from sshcluster.ec2.spec import EC2Spec

TAG_CLUSTER = "sshcluster:cluster"
TAG_OWNER = "sshcluster:owner"
TAG_EXPIRES = "sshcluster:expires"
TAG_RUN = "sshcluster:run"
TAG_BATCH = "sshcluster:batch"
TAG_JOB = "sshcluster:job"

#: Instance states in which an instance may still cost money or come back.
LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")


@dataclass(frozen=True)
class Endpoint:
    """Where this machine reaches an instance's sshd."""

    host: str
    port: int = 22


@dataclass(frozen=True)
class Instance:
    """One EC2 instance as sshcluster sees it (from DescribeInstances)."""

    id: str
    state: str
    instance_type: str
    launch_time: datetime | None
    public_ip: str | None
    private_ip: str | None
    spot: bool
    spot_request_id: str | None
    cluster: str | None
    owner: str | None
    run_id: str | None
    expires: datetime | None
    batch: int = 0  # which RunInstances call of its run started it
    launch_index: int = 0  # its place in that call's answer
    job: str | None = None  # the detached job it was started for

    @classmethod
    def from_aws(cls, raw: InstanceTypeDef) -> Instance:
        """Build from one ``Instances[]`` item of a DescribeInstances/RunInstances answer."""
        tags = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
        return cls(
            id=raw["InstanceId"],
            state=raw.get("State", {}).get("Name", "unknown"),
            instance_type=raw.get("InstanceType", "?"),
            launch_time=raw.get("LaunchTime"),
            public_ip=raw.get("PublicIpAddress"),
            private_ip=raw.get("PrivateIpAddress"),
            spot=raw.get("InstanceLifecycle") == "spot",
            spot_request_id=raw.get("SpotInstanceRequestId"),
            cluster=tags.get(TAG_CLUSTER),
            owner=tags.get(TAG_OWNER),
            run_id=tags.get(TAG_RUN),
            expires=parse_time(tags.get(TAG_EXPIRES)),
            batch=int(tags[TAG_BATCH]) if tags.get(TAG_BATCH, "").isdigit() else 0,
            launch_index=raw.get("AmiLaunchIndex", 0),
            job=tags.get(TAG_JOB),
        )

    @property
    def live(self) -> bool:
        """True unless the instance is terminated (it may still cost money)."""
        return self.state in LIVE_STATES


def describe_instances(client: EC2Client, filters: list[FilterTypeDef]) -> list[Instance]:
    """Every instance matching ``filters``, in launch order (batch, then launch index)."""
    found: list[Instance] = []
    with aws_errors("DescribeInstances"):
        for page in client.get_paginator("describe_instances").paginate(Filters=filters):
            for reservation in page["Reservations"]:
                found.extend(Instance.from_aws(i) for i in reservation["Instances"])
    return sorted(found, key=lambda i: (i.batch, i.launch_index, i.id))


def cluster_filters(name: str | None = None, *, run_id: str | None = None,
                    owner: str | Sequence[str] | None = None) -> list[FilterTypeDef]:
    """Filters for what sshcluster tagged: of cluster ``name`` (any, if None), of one
    run, of one owner (or of any of several)."""
    filters = make_filters(**({f"tag:{TAG_CLUSTER}": name} if name else
                              {"tag-key": TAG_CLUSTER}))
    if run_id:
        filters += make_filters(**{f"tag:{TAG_RUN}": run_id})
    if owner:
        filters += make_filters(**{f"tag:{TAG_OWNER}": owner})
    return filters


def cluster_instances(client: EC2Client, name: str, *, live: bool = True,
                      run_id: str | None = None, owner: str | Sequence[str] | None = None
                      ) -> list[Instance]:
    """The instances of cluster ``name`` (of one run, of one owner), only live ones unless
    ``live`` is False."""
    filters = cluster_filters(name, run_id=run_id, owner=owner)
    if live:
        filters += make_filters(**{"instance-state-name": LIVE_STATES})
    return describe_instances(client, filters)


def client_token(name: str, run_id: str, batch: int, attempt: int = 0) -> str:
    """The ``ClientToken`` of batch ``batch`` of run ``run_id``: EC2 answers a repeated
    RunInstances with this token with the instances of the first, so a retried request
    (botocore's own retries included) never starts a second fleet. ``attempt`` counts
    the subnets tried for the batch (another subnet is another request)."""
    text = f"sshcluster\0{name}\0{run_id}\0{batch}" + (f"\0{attempt}" if attempt else "")
    return hashlib.sha256(text.encode()).hexdigest()[:64]


def tag_specifications(spec: EC2Spec, owner: str, expires: datetime, run_id: str,
                       *types: ResourceTypeType, extra: dict[str, str] | None = None,
                       ) -> list[TagSpecificationTypeDef]:
    """``TagSpecifications`` that tag resources of ``types`` as this run's at creation."""
    tags = {"Name": f"sshcluster-{spec.name}", TAG_CLUSTER: spec.name, TAG_OWNER: owner,
            TAG_EXPIRES: format_time(expires), TAG_RUN: run_id, **(extra or {})}
    return [{"ResourceType": t, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
            for t in types]


def format_time(t: datetime) -> str:
    """``t`` as the ISO 8601 UTC text of the ``sshcluster:expires`` tag."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    """The time of an ``sshcluster:expires`` tag, or None if it is missing or malformed."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def utcnow() -> datetime:
    """The time now, in UTC, to the second (expiry tags have no finer grain)."""
    return datetime.now(timezone.utc).replace(microsecond=0)


def format_duration(delta: timedelta) -> str:
    """``1d02h``, ``3h05m``, ``4m``; a negative one as ``expired 4m ago``."""
    if delta < timedelta(0):
        return f"expired {format_duration(-delta)} ago"
    minutes = int(delta.total_seconds() // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return f"{days}d{hours:02d}h"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


__all__ = [
    "LIVE_STATES",
    "TAG_BATCH",
    "TAG_CLUSTER",
    "TAG_EXPIRES",
    "TAG_JOB",
    "TAG_OWNER",
    "TAG_RUN",
    "Endpoint",
    "Instance",
    "client_token",
    "cluster_filters",
    "cluster_instances",
    "describe_instances",
    "format_duration",
    "format_time",
    "parse_time",
    "tag_specifications",
    "utcnow",
]
