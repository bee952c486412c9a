"""Creating a cluster's resources: its key pair, its security group, its instances.

Each creating call is written once and serves both ``up`` and ``up --dry-run``: with
``dry_run=True`` it is the same request with ``DryRun=True`` (see
:func:`~sshcluster.ec2.aws.call`), so the dry run asks AWS exactly what ``up`` would ask.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sshcluster.ec2.aws import call, make_client, make_filters, retry
from sshcluster.ec2.instances import (
    TAG_BATCH,
    TAG_CLUSTER,
    TAG_JOB,
    TAG_RUN,
    client_token,
    cluster_instances,
    tag_specifications,
    utcnow,
)
from sshcluster.ec2.plan import LaunchPlan, Subnet, plan_launch
from sshcluster.ec2.records import default_owner
from sshcluster.ec2.userdata import user_data
from sshcluster.errors import EC2Error

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client
    from mypy_boto3_ec2.literals import ResourceTypeType
    from mypy_boto3_ec2.type_defs import (
        FilterTypeDef,
        IpPermissionTypeDef,
        ReservationResponseTypeDef,
    )

    from sshcluster.ec2.spec import EC2Spec


@dataclass(frozen=True)
class Run:
    """One ``up`` of a cluster: its id, owner and expiry, as its resources are tagged."""

    run_id: str
    owner: str
    expires: datetime
    #: The detached job the cluster was started for (``run --ec2 --detach``), if any.
    job: str | None = None

    @property
    def tags(self) -> dict[str, str]:
        """The tags beyond the common ones: the job's, when there is one."""
        return {TAG_JOB: self.job} if self.job else {}


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


#: AWS's answers for "not here, try another zone".
CAPACITY_CODES = ("InsufficientInstanceCapacity", "InsufficientCapacity",
                  "InsufficientFreeAddressesInSubnet", "Unsupported")


def fails_over(e: EC2Error) -> bool:
    """Whether another subnet may take a refused batch: no capacity or no free address in
    this one, or a type its zone does not offer. AWS also answers ``Unsupported`` for
    configurations no other subnet changes; its message tells which."""
    if e.code == "Unsupported":
        return "availability zone" in e.message.lower()
    return e.code in CAPACITY_CODES
#: Seconds a NotFound right after creating something is retried (eventual consistency).
NOT_FOUND_WAIT = 30.0


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
                    spec, run.owner, run.expires, run.run_id, "key-pair", extra=run.tags))
    return None if made is None else (name, made["KeyMaterial"])


def create_security_group(client: EC2Client, spec: EC2Spec, run: Run, vpc: str, *,
                          dry_run: bool = False) -> str | None:
    """Create the run's security group in ``vpc`` (without rules yet); its id (None: dry
    run)."""
    group = call(client.create_security_group, "CreateSecurityGroup", dry_run=dry_run,
                 GroupName=f"sshcluster-{spec.name}-{run.run_id}", VpcId=vpc,
                 Description=f"sshcluster cluster {spec.name}",
                 TagSpecifications=tag_specifications(spec, run.owner, run.expires,
                                                      run.run_id, "security-group",
                                                      extra=run.tags))
    return None if group is None else group["GroupId"]


def allow_ingress(client: EC2Client, spec: EC2Spec, group_id: str, *, poll: float = 1.0) -> None:
    """Open the security group ``group_id`` as :func:`ingress_rules` says (retrying for a
    short while if AWS does not know the group it just created yet)."""
    retry(lambda: call(client.authorize_security_group_ingress,
                       "AuthorizeSecurityGroupIngress", GroupId=group_id,
                       IpPermissions=ingress_rules(spec, group_id)),
          "AuthorizeSecurityGroupIngress", codes=("InvalidGroup.NotFound",),
          deadline=time.monotonic() + NOT_FOUND_WAIT, poll=poll)


def run_instances_params(spec: EC2Spec, run: Run, plan: LaunchPlan, subnet: Subnet | None, *,
                         batch: int, count: int, groups: list[str], key_name: str | None,
                         attempt: int = 0) -> dict[str, Any]:
    """The RunInstances request of one batch, in ``subnet`` (the ``attempt``-th tried)."""
    types: tuple[ResourceTypeType, ...] = ("instance", "volume", "network-interface")
    if spec.spot:
        types += ("spot-instances-request",)
    params: dict[str, Any] = {
        "ImageId": plan.image.id, "InstanceType": spec.instance_type, "MinCount": count,
        "MaxCount": count, "UserData": user_data(spec, run.expires),
        "ClientToken": client_token(spec.name, run.run_id, batch, attempt),
        "InstanceInitiatedShutdownBehavior": "terminate",
        # IMDSv2 only: many organisations refuse RunInstances without it.
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "TagSpecifications": tag_specifications(spec, run.owner, run.expires, run.run_id,
                                                *types, extra={TAG_BATCH: str(batch),
                                                                       **run.tags}),
    }
    if plan.image.root_device:
        params["BlockDeviceMappings"] = [{"DeviceName": plan.image.root_device, "Ebs": {
            "VolumeSize": spec.disk_gb, "VolumeType": "gp3", "DeleteOnTermination": True}}]
    if key_name:
        params["KeyName"] = key_name
    if spec.address == "public" and subnet is not None:
        # Ask for a public IP on the interface: a subnet need not auto-assign one. (An
        # interface created with the instance is deleted with it: AWS's default.)
        params["NetworkInterfaces"] = [{
            "DeviceIndex": 0, "SubnetId": subnet.id, "AssociatePublicIpAddress": True,
            **({"Groups": groups} if groups else {})}]
        return _spot(spec, params)
    if groups:
        params["SecurityGroupIds"] = groups
    if subnet is not None:
        params["SubnetId"] = subnet.id
    return _spot(spec, params)


def _spot(spec: EC2Spec, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with the spot market's options when ``spec.spot``."""
    if spec.spot:
        # One-time and terminate: a persistent request would start new instances after
        # we terminate the old ones.
        params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
            "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
    return params


def launch(client: EC2Client, spec: EC2Spec, run: Run, plan: LaunchPlan, *,
           groups: list[str], key_name: str | None, batch_size: int, started: Started,
           report: Callable[[int], None], note: Callable[[str], None] = lambda m: None,
           deadline: float | None = None, poll: float = 1.0, dry_run: bool = False) -> None:
    """Start the instances in all-or-nothing batches (MinCount = MaxCount), each with its
    own ClientToken; batches already there (a retried ``up``) are not started again.
    ``report`` is called with the number started so far.

    When AWS has no capacity for the type in a subnet's zone (or does not offer it
    there), the batch is tried in the plan's next subnet, and later batches start where
    the last one did, until every subnet was tried or ``deadline`` passed; ``note`` says
    so. A dry run asks for the first batch only."""
    deadline = deadline or time.monotonic() + 600
    have = set() if dry_run else {
        i.batch for i in cluster_instances(client, spec.name, run_id=run.run_id)}
    batches = [(b, min(batch_size, spec.count - b * batch_size))
               for b in range(math.ceil(spec.count / batch_size))]
    done = sum(n for b, n in batches if b in have)
    subnets: list[Subnet | None] = list(plan.subnets) or [None]
    current = 0
    for batch, n in batches:
        if batch in have:
            continue
        tried: list[str] = []
        while True:
            subnet = subnets[current]
            params = run_instances_params(spec, run, plan, subnet, batch=batch, count=n,
                                          groups=groups, key_name=key_name,
                                          attempt=len(tried))
            try:
                with started.critical():
                    answer = _run_instances(client, params, dry_run=dry_run, poll=poll,
                                            deadline=min(deadline, time.monotonic()
                                                         + NOT_FOUND_WAIT))
                    if answer is None:
                        return
                    started.instance_ids += [i["InstanceId"] for i in answer["Instances"]]
                    started.changed()
                break
            except EC2Error as e:
                if dry_run or not fails_over(e) or subnet is None:
                    raise
                tried.append(f"{subnet.id} ({subnet.zone}): {e.code}")
                current = (current + 1) % len(subnets)
                if len(tried) >= len(subnets) or time.monotonic() >= deadline:
                    said = e.message.removeprefix("RunInstances: ")
                    raise EC2Error(
                        f"RunInstances: no capacity for {n} x {spec.instance_type} in "
                        f"any subnet tried: {'; '.join(tried)}\nAWS said (last): {said}",
                        code=e.code, operation="RunInstances", hint=e.hint) from e
                following = subnets[current]
                if following is not None:
                    note(f"{e.code} in {subnet.zone}; trying {following.zone} "
                         f"({following.id})")
        done += n
        report(done)


def _run_instances(client: EC2Client, params: dict[str, Any], *, dry_run: bool,
                   deadline: float, poll: float) -> ReservationResponseTypeDef | None:
    """RunInstances, retried while AWS does not know the just-created group yet."""
    def run() -> ReservationResponseTypeDef | None:
        return call(client.run_instances, "RunInstances", dry_run=dry_run, **params)

    return retry(run, "RunInstances", codes=("InvalidGroup.NotFound",), deadline=deadline,
                 poll=poll)


def dry_run(spec: EC2Spec, *, client: EC2Client | None = None) -> tuple[str, ...]:
    """Run the checks ``up`` makes before it starts anything (image, architecture,
    subnets, offerings, vCPU quota: :func:`~sshcluster.ec2.plan.plan_launch`), then ask
    EC2 whether each creating call would be allowed (``DryRun=True``: AWS checks
    permissions and parameters, not quota or capacity), without starting or creating
    anything. Returns the checks that passed (and those that could not be made); raises
    EC2Error on the first that failed. ``client`` defaults to one for ``spec.region``."""
    client = client or make_client(spec.region)
    plan = plan_launch(client, spec)
    passed = [*plan.passed, *(f"not checked: {n}" for n in plan.notes),
              *(f"warning: {w}" for w in plan.warnings)]
    run = Run("dryrun", default_owner(), utcnow() + spec.max_lifetime)
    if spec.key_name is None:
        create_key_pair(client, spec, run, dry_run=True)
        passed.append("may create a key pair")
    groups = [spec.security_group_id] if spec.security_group_id else []
    if spec.security_group_id is None:
        create_security_group(client, spec, run, plan.vpc, dry_run=True)
        passed.append("may create a security group")
    # Without KeyName when up would create the key pair: it does not exist yet, and AWS
    # checks parameters in a dry run too.
    launch(client, spec, run, plan, groups=groups, key_name=spec.key_name,
           batch_size=spec.count, started=Started(), report=lambda n: None, dry_run=True)
    passed.append(f"may run {spec.count} x {spec.instance_type}"
                  + (" (spot)" if spec.spot else ""))
    return tuple(passed)


__all__ = [
    "CAPACITY_CODES",
    "Run",
    "Started",
    "allow_ingress",
    "create_key_pair",
    "create_security_group",
    "dry_run",
    "ingress_rules",
    "launch",
    "run_filters",
    "run_instances_params",
]
