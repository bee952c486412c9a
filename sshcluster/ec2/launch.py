"""Creating a cluster's resources: its key pair, its security group, its instances.

Each creating call is written once and serves both ``up`` and ``up --dry-run``: with
``dry_run=True`` it is the same request with ``DryRun=True`` (see
:func:`~sshcluster.ec2.aws.call`), so the dry run asks AWS exactly what ``up`` would ask.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sshcluster.ec2.aws import aws_errors, call, hint_for, make_client, make_filters
from sshcluster.ec2.instances import (
    TAG_BATCH,
    TAG_CLUSTER,
    TAG_RUN,
    client_token,
    cluster_instances,
    tag_specifications,
    utcnow,
)
from sshcluster.ec2.records import default_owner
from sshcluster.ec2.userdata import user_data
from sshcluster.errors import EC2Error

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client
    from mypy_boto3_ec2.literals import InstanceTypeType, ResourceTypeType
    from mypy_boto3_ec2.type_defs import FilterTypeDef, IpPermissionTypeDef

    from sshcluster.ec2.spec import EC2Spec


@dataclass(frozen=True)
class Run:
    """One ``up`` of a cluster: its id, owner and expiry, as its resources are tagged."""

    run_id: str
    owner: str
    expires: datetime


@dataclass
class Started:
    """What one ``up`` has made so far: the ids its cleanup removes. ``changed`` is called
    after each addition (``up`` writes the ids into its record there)."""

    instance_ids: list[str] = field(default_factory=list)
    security_group: str | None = None
    key_pair: str | None = None
    files: list[Path] = field(default_factory=list)
    changed: Callable[[], None] = lambda: None
    #: A context manager for a creating call and the noting of its id (a signal waits).
    critical: Callable[[], AbstractContextManager[None]] = nullcontext


def check_image_and_type(client: EC2Client, spec: EC2Spec) -> int:
    """Check the image and instance type exist here; return the type's vCPU count."""
    if client.meta.region_name != spec.region:
        raise EC2Error(f"the EC2 client is for {client.meta.region_name}, the spec for "
                       f"{spec.region}", hint="make the client with make_client(spec.region)")
    with aws_errors("DescribeImages"):
        images = client.describe_images(ImageIds=[spec.image])["Images"]
    if not images:
        raise EC2Error(f"DescribeImages: image {spec.image} not found in {spec.region}",
                       code="InvalidAMIID.NotFound", operation="DescribeImages",
                       hint=hint_for("InvalidAMIID"))
    with aws_errors("DescribeInstanceTypes"):
        types = client.describe_instance_types(
            InstanceTypes=[cast("InstanceTypeType", spec.instance_type)])
    return int(types["InstanceTypes"][0].get("VCpuInfo", {}).get("DefaultVCpus", 1))


def vpc_of(client: EC2Client, spec: EC2Spec) -> str:
    """The VPC the instances start in: the subnet's, else the region's default VPC."""
    if spec.subnet_id:
        with aws_errors("DescribeSubnets"):
            subnets = client.describe_subnets(SubnetIds=[spec.subnet_id])["Subnets"]
        return subnets[0]["VpcId"]
    with aws_errors("DescribeVpcs"):
        vpcs = client.describe_vpcs(Filters=make_filters(**{"is-default": "true"}))["Vpcs"]
    if not vpcs:
        raise EC2Error(f"region {spec.region} has no default VPC", code="VPCIdNotSpecified",
                       hint=hint_for("VPCIdNotSpecified"))
    return vpcs[0]["VpcId"]


def ingress_rules(spec: EC2Spec, group_id: str) -> list[IpPermissionTypeDef]:
    """SSH from the caller's ranges and from members; the R port only between members
    (and from the primary when it is an address outside the group)."""
    v4 = [{"CidrIp": c, "Description": "sshcluster: ssh from you"}
          for c in spec.ssh_cidr if ":" not in c]
    v6 = [{"CidrIpv6": c, "Description": "sshcluster: ssh from you"}
          for c in spec.ssh_cidr if ":" in c]
    self_group = [{"GroupId": group_id, "Description": "sshcluster: cluster members"}]
    low, high = spec.r_ports
    rules: list[dict[str, Any]] = [
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": v4,
         "Ipv6Ranges": v6, "UserIdGroupPairs": self_group},
        {"IpProtocol": "tcp", "FromPort": low, "ToPort": high, "UserIdGroupPairs": self_group},
    ]
    if spec.primary not in ("auto", "first") and _is_ip(spec.primary):
        key, cidr = ("Ipv6Ranges", "CidrIpv6") if ":" in spec.primary else ("IpRanges",
                                                                            "CidrIp")
        suffix = "/128" if ":" in spec.primary else "/32"
        rules[1][key] = [{cidr: spec.primary + suffix, "Description": "sshcluster: primary"}]
    return cast("list[IpPermissionTypeDef]", rules)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def run_filters(spec: EC2Spec, run: Run) -> list[FilterTypeDef]:
    """Filters for the resources of this run of the cluster."""
    return make_filters(**{f"tag:{TAG_RUN}": run.run_id, f"tag:{TAG_CLUSTER}": spec.name})


def create_key_pair(client: EC2Client, spec: EC2Spec, run: Run, *,
                    dry_run: bool = False) -> tuple[str, str] | None:
    """Create the run's key pair; its name and private key (None for a dry run)."""
    name = f"sshcluster-{spec.name}-{run.run_id}"
    made = call(client.create_key_pair, "CreateKeyPair", dry_run=dry_run, KeyName=name,
                KeyType="ed25519", TagSpecifications=tag_specifications(
                    spec, run.owner, run.expires, run.run_id, "key-pair"))
    return None if made is None else (name, made["KeyMaterial"])


def create_security_group(client: EC2Client, spec: EC2Spec, run: Run, *,
                          dry_run: bool = False) -> str | None:
    """Create the run's security group (without rules yet); its id (None: dry run)."""
    vpc = vpc_of(client, spec)
    group = call(client.create_security_group, "CreateSecurityGroup", dry_run=dry_run,
                 GroupName=f"sshcluster-{spec.name}-{run.run_id}", VpcId=vpc,
                 Description=f"sshcluster cluster {spec.name}",
                 TagSpecifications=tag_specifications(spec, run.owner, run.expires,
                                                      run.run_id, "security-group"))
    return None if group is None else group["GroupId"]


def allow_ingress(client: EC2Client, spec: EC2Spec, group_id: str) -> None:
    """Open the security group ``group_id`` as :func:`ingress_rules` says."""
    call(client.authorize_security_group_ingress, "AuthorizeSecurityGroupIngress",
         GroupId=group_id, IpPermissions=ingress_rules(spec, group_id))


def run_instances_params(spec: EC2Spec, run: Run, *, batch: int, count: int,
                         groups: list[str], key_name: str | None) -> dict[str, Any]:
    """The RunInstances request of one batch."""
    types: tuple[ResourceTypeType, ...] = ("instance", "volume")
    if spec.spot:
        types += ("spot-instances-request",)
    params: dict[str, Any] = {
        "ImageId": spec.image, "InstanceType": spec.instance_type, "MinCount": count,
        "MaxCount": count, "UserData": user_data(spec, run.expires),
        "ClientToken": client_token(spec.name, run.run_id, batch),
        "InstanceInitiatedShutdownBehavior": "terminate",
        "TagSpecifications": tag_specifications(spec, run.owner, run.expires, run.run_id,
                                                *types, extra={TAG_BATCH: str(batch)}),
    }
    if key_name:
        params["KeyName"] = key_name
    if groups:
        params["SecurityGroupIds"] = groups
    if spec.subnet_id:
        params["SubnetId"] = spec.subnet_id
    if spec.spot:
        # One-time and terminate: a persistent request would start new instances after
        # we terminate the old ones.
        params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
            "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
    return params


def launch(client: EC2Client, spec: EC2Spec, run: Run, *, groups: list[str],
           key_name: str | None, batch_size: int, started: Started,
           report: Callable[[int], None], dry_run: bool = False) -> None:
    """Start the instances in all-or-nothing batches (MinCount = MaxCount), each with its
    own ClientToken; batches already there (a retried ``up``) are not started again.
    ``report`` is called with the number started so far. A dry run asks for the first
    batch only."""
    have = set() if dry_run else {
        i.batch for i in cluster_instances(client, spec.name, run_id=run.run_id)}
    batches = [(b, min(batch_size, spec.count - b * batch_size))
               for b in range(math.ceil(spec.count / batch_size))]
    done = sum(n for b, n in batches if b in have)
    for batch, n in batches:
        if batch in have:
            continue
        with started.critical():
            answer = call(client.run_instances, "RunInstances", dry_run=dry_run,
                          **run_instances_params(spec, run, batch=batch, count=n,
                                                 groups=groups, key_name=key_name))
            if answer is None:
                return
            started.instance_ids += [i["InstanceId"] for i in answer["Instances"]]
            started.changed()
        done += n
        report(done)


def dry_run(spec: EC2Spec, *, client: EC2Client | None = None) -> tuple[str, ...]:
    """Ask EC2 whether ``up`` would be allowed (``DryRun=True``: permissions and
    parameters; AWS checks no quota or capacity in a dry run) without starting or
    creating anything. Returns the checks that passed; raises EC2Error on the first that
    did not. ``client`` defaults to one for ``spec.region``."""
    client = client or make_client(spec.region)
    passed = []
    check_image_and_type(client, spec)
    passed.append(f"image {spec.image} and type {spec.instance_type} exist in {spec.region}")
    run = Run("dryrun", default_owner(), utcnow() + spec.max_lifetime)
    if spec.key_name is None:
        create_key_pair(client, spec, run, dry_run=True)
        passed.append("may create a key pair")
    groups = [spec.security_group_id] if spec.security_group_id else []
    if spec.security_group_id is None:
        create_security_group(client, spec, run, dry_run=True)
        passed.append("may create a security group")
    # Without KeyName when up would create the key pair: it does not exist yet, and AWS
    # checks parameters in a dry run too.
    launch(client, spec, run, groups=groups, key_name=spec.key_name, batch_size=spec.count,
           started=Started(), report=lambda n: None, dry_run=True)
    passed.append(f"may run {spec.count} x {spec.instance_type}"
                  + (" (spot)" if spec.spot else ""))
    return tuple(passed)


__all__ = [
    "Run",
    "Started",
    "allow_ingress",
    "check_image_and_type",
    "create_key_pair",
    "create_security_group",
    "dry_run",
    "ingress_rules",
    "launch",
    "run_filters",
    "run_instances_params",
    "vpc_of",
]
