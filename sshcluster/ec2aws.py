"""Talking to EC2 for :mod:`sshcluster.ec2`: clients, errors with hints, tags, filters,
the instances sshcluster started, and this machine's records of its clusters.

Every AWS call goes through :func:`aws_errors`, which turns botocore's exceptions into an
:class:`~sshcluster.errors.EC2Error` carrying AWS's error code and a hint on what to do,
so neither the API nor the CLI ever shows a botocore traceback for AWS's answer.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import botocore.exceptions
from botocore.exceptions import ClientError
from botocore.parsers import ResponseParserError

from sshcluster.ec2spec import EC2Spec, is_region
from sshcluster.errors import EC2Error
from sshcluster.files import atomic_write

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client
    from mypy_boto3_ec2.literals import ResourceTypeType
    from mypy_boto3_ec2.type_defs import FilterTypeDef, InstanceTypeDef, TagSpecificationTypeDef

TAG_CLUSTER = "sshcluster:cluster"
TAG_OWNER = "sshcluster:owner"
TAG_EXPIRES = "sshcluster:expires"
TAG_RUN = "sshcluster:run"
TAG_BATCH = "sshcluster:batch"

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
        )

    @property
    def live(self) -> bool:
        """True unless the instance is terminated (it may still cost money)."""
        return self.state in LIVE_STATES


@dataclass(frozen=True)
class Record:
    """This machine's note of a cluster it started (see :func:`state_dir`)."""

    name: str
    region: str
    run_id: str
    owner: str
    expires: datetime
    status: str  # "starting" or "up"
    key_file: str | None = None
    known_hosts: str | None = None
    inventory: str | None = None


def make_client(region: str, *, endpoint_url: str | None = None) -> EC2Client:
    """An EC2 client for ``region``. boto3 also honours ``AWS_ENDPOINT_URL(_EC2)``."""
    with aws_errors("creating the EC2 client"):  # a region botocore refuses, no profile
        return boto3.client("ec2", region_name=region, endpoint_url=endpoint_url)


HINTS: dict[str, str] = {
    "AuthFailure": "AWS did not accept the credentials; check AWS_PROFILE or "
                   "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and the clock of this machine)",
    "UnauthorizedOperation": "your IAM identity may not call this; ask for the ec2 "
                             "permission named in the message (aws sts "
                             "decode-authorization-message explains the encoded part)",
    "InstanceLimitExceeded": "an account quota is reached; terminate other instances, ask "
                             "for more in Service Quotas, or start fewer/smaller instances",
    "VcpuLimitExceeded": "the vCPU quota of this instance family is reached; ask for more "
                         "in Service Quotas (EC2 > Running On-Demand/Spot instances) or "
                         "start fewer or smaller instances",
    "MaxSpotInstanceCountExceeded": "the spot quota is reached; ask for more in Service "
                                    "Quotas or use 'spot: false'",
    "InsufficientInstanceCapacity": "AWS has no capacity for this instance type here right "
                                    "now; try another type, another subnet's availability "
                                    "zone, or later",
    "SpotMaxPriceTooLow": "spot capacity is not available at that price; try on-demand "
                          "('spot: false') or another instance type",
    "InvalidKeyPair.NotFound": "key pairs are per region; check key_name, or leave it out "
                               "and sshcluster creates one for the cluster",
    "InvalidSubnetID.NotFound": "subnets are per region; check subnet_id",
    "InvalidGroup.NotFound": "security groups are per region and VPC; check "
                             "security_group_id",
    "InvalidInstanceType": "check instance_type; not every type exists in every region",
    "IdempotentParameterMismatch": "a launch with the same run id but other parameters "
                                   "exists; start with a new run id",
    "OptInRequired": "the image needs a subscription in AWS Marketplace, or the region is "
                     "not enabled for this account",
    "RequestLimitExceeded": "AWS is throttling requests; wait a minute and retry",
    "DependencyViolation": "something still uses it (instances may still be shutting "
                           "down); run 'sshcluster ec2 down' again in a minute",
    "VPCIdNotSpecified": "this region has no default VPC; set subnet_id in the spec",
}


def hint_for(code: str) -> str | None:
    if code.startswith("InvalidAMIID"):
        return ("AMI ids are per region; look up the image id for this region "
                "(e.g. with 'aws ec2 describe-images') and set 'image'")
    if code in ("UnrecognizedClientException", "InvalidClientTokenId",
                "SignatureDoesNotMatch", "ExpiredToken", "RequestExpired"):
        return HINTS["AuthFailure"]
    return HINTS.get(code)


def aws_error(exc: BaseException, operation: str) -> EC2Error:
    """Turn a botocore exception from ``operation`` into an EC2Error with a hint."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code", "Unknown")
        message = err.get("Message", str(exc))
        return EC2Error(f"{operation}: {code}: {message}", code=code, operation=operation,
                        hint=hint_for(code))
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return EC2Error(f"{operation}: no AWS credentials found", code="NoCredentials",
                        operation=operation,
                        hint="run 'aws configure', set AWS_PROFILE, or set "
                             "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, botocore.exceptions.WaiterError):
        last = exc.last_response or {}
        if "Error" in last:
            code = last["Error"].get("Code", "Unknown")
            return EC2Error(f"{operation}: {code}: {last['Error'].get('Message', '')}",
                            code=code, operation=operation, hint=hint_for(code))
        return EC2Error(f"{operation}: {exc}", operation=operation)
    if isinstance(exc, botocore.exceptions.EndpointConnectionError):
        return EC2Error(f"{operation}: cannot reach the EC2 endpoint: {exc}",
                        operation=operation,
                        hint="check the network and the region (and AWS_ENDPOINT_URL)")
    if isinstance(exc, ResponseParserError):
        # Not from EC2: e.g. the HTML error page of a proxy, or of an endpoint that does
        # not know the region (the page itself, in the exception, says no more).
        return EC2Error(f"{operation}: the endpoint's answer is not an EC2 answer (not "
                        "valid XML; an HTML error page?)", operation=operation,
                        hint="check the region (does it exist, is it enabled for this "
                             "account?) and AWS_ENDPOINT_URL")
    return EC2Error(f"{operation}: {exc}", operation=operation)


#: What botocore raises: AWS's error answers, its own errors, and an answer it cannot
#: parse (ResponseParserError is not a BotoCoreError).
BOTO_ERRORS = (ClientError, botocore.exceptions.BotoCoreError, ResponseParserError)


@contextmanager
def aws_errors(operation: str) -> Iterator[None]:
    """Turn botocore failures inside the block into EC2Error."""
    try:
        yield
    except BOTO_ERRORS as e:
        raise aws_error(e, operation) from e


def make_filters(**tags: str | Sequence[str]) -> list[FilterTypeDef]:
    out: list[FilterTypeDef] = []
    for key, value in tags.items():
        values = [value] if isinstance(value, str) else list(value)
        out.append({"Name": key, "Values": values})
    return out


def describe_instances(client: EC2Client, filters: list[FilterTypeDef]) -> list[Instance]:
    found: list[Instance] = []
    with aws_errors("DescribeInstances"):
        for page in client.get_paginator("describe_instances").paginate(Filters=filters):
            for reservation in page["Reservations"]:
                found.extend(Instance.from_aws(i) for i in reservation["Instances"])
    return sorted(found, key=lambda i: (i.batch, i.launch_index, i.id))


def cluster_instances(client: EC2Client, name: str, *, live: bool = True,
                       run_id: str | None = None) -> list[Instance]:
    filters = make_filters(**{f"tag:{TAG_CLUSTER}": name})
    if run_id:
        filters += make_filters(**{f"tag:{TAG_RUN}": run_id})
    if live:
        filters += make_filters(**{"instance-state-name": LIVE_STATES})
    return describe_instances(client, filters)


def client_token(name: str, run_id: str, batch: int) -> str:
    """The ``ClientToken`` of batch ``batch`` of run ``run_id``: EC2 answers a repeated
    RunInstances with this token with the instances of the first, so a retried request
    (botocore's own retries included) never starts a second fleet."""
    return hashlib.sha256(f"sshcluster\0{name}\0{run_id}\0{batch}".encode()).hexdigest()[:64]


def tag_specifications(spec: EC2Spec, owner: str, expires: datetime, run_id: str,
          *types: ResourceTypeType, extra: dict[str, str] | None = None,
          ) -> list[TagSpecificationTypeDef]:
    tags = {"Name": f"sshcluster-{spec.name}", TAG_CLUSTER: spec.name, TAG_OWNER: owner,
            TAG_EXPIRES: format_time(expires), TAG_RUN: run_id, **(extra or {})}
    return [{"ResourceType": t, "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
            for t in types]


def format_time(t: datetime) -> str:
    """``t`` as the ISO 8601 UTC text of the ``sshcluster:expires`` tag."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
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


def resolve_region(region: str | None, name: str | None = None,
                   records: Path | None = None) -> str:
    """The region to talk to: ``region``, else the one of this machine's record of
    cluster ``name`` (if only one region has it), else boto3's default (AWS_REGION,
    AWS_DEFAULT_REGION, the AWS config)."""
    if region:
        return region
    if name:
        regions = {r.region for r in load_records(records) if r.name == name}
        if len(regions) == 1:
            return regions.pop()
    default = default_region()
    if default:
        return default
    raise EC2Error("no AWS region given", hint="pass --region, or set AWS_DEFAULT_REGION")


def default_region() -> str | None:
    """boto3's default region (AWS_REGION, AWS_DEFAULT_REGION, the AWS config), if any."""
    with aws_errors("reading the AWS configuration"):
        return boto3.session.Session().region_name


def search_regions(region: str | None = None, records: Path | None = None
                   ) -> tuple[str, ...]:
    """The regions to look for clusters in: ``region`` alone when given; else every
    region this machine has a record in, and boto3's default region. A cluster whose
    spec names another region than the default is then not missed."""
    if region:
        return (region,)
    regions = set(record_regions(records))
    default = default_region()
    if default:
        regions.add(default)
    if not regions:
        raise EC2Error("no AWS region given, and no cluster records on this machine",
                       hint="pass --region, or set AWS_DEFAULT_REGION")
    return tuple(sorted(regions))


def default_owner() -> str:
    """``user@host`` of this machine: the ``sshcluster:owner`` tag of what it starts."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# --------------------------------------------------------------------------- records


def state_dir() -> Path:
    """Where cluster records live: ``$SSHCLUSTER_STATE_DIR``, else
    ``$XDG_STATE_HOME/sshcluster/ec2``, else ``~/.local/state/sshcluster/ec2``."""
    if os.environ.get("SSHCLUSTER_STATE_DIR"):
        return Path(os.environ["SSHCLUSTER_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "sshcluster" / "ec2"


def record_path(directory: Path, region: str, name: str) -> Path:
    return directory / f"{region}--{name}.json"


def save_record(directory: Path, record: Record) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    data = {**record.__dict__, "expires": format_time(record.expires)}
    atomic_write(record_path(directory, record.region, record.name),
                 json.dumps(data, indent=2) + "\n", mode=0o600)


def load_records(directory: Path | None = None) -> list[Record]:
    """Every cluster record on this machine; unreadable ones are skipped."""
    directory = directory or state_dir()
    out = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            expires = parse_time(data.pop("expires"))
            if expires is None:
                continue
            out.append(Record(expires=expires, **data))
        except (OSError, ValueError, TypeError, KeyError):
            continue
    return out


def record_regions(directory: Path | None = None) -> tuple[str, ...]:
    """The regions of this machine's records, from their file names (so that a record
    that cannot be read still counts)."""
    directory = directory or state_dir()
    paths = directory.glob("*--*.json") if directory.is_dir() else ()
    return tuple(sorted({region for p in paths
                         if is_region(region := p.name.split("--", 1)[0])}))


def find_record(directory: Path, region: str, name: str) -> Record | None:
    return next((r for r in load_records(directory) if r.region == region and r.name == name),
                None)


__all__ = [
    "BOTO_ERRORS",
    "HINTS",
    "LIVE_STATES",
    "TAG_BATCH",
    "TAG_CLUSTER",
    "TAG_EXPIRES",
    "TAG_OWNER",
    "TAG_RUN",
    "Endpoint",
    "Instance",
    "Record",
    "aws_error",
    "aws_errors",
    "client_token",
    "cluster_instances",
    "default_owner",
    "default_region",
    "describe_instances",
    "find_record",
    "format_duration",
    "format_time",
    "hint_for",
    "load_records",
    "make_client",
    "make_filters",
    "parse_time",
    "record_path",
    "record_regions",
    "resolve_region",
    "save_record",
    "search_regions",
    "state_dir",
    "tag_specifications",
    "utcnow",
]
