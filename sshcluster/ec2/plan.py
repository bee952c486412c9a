"""Checks before anything is started, and the launch plan they produce.

moto accepts much that a real account refuses, and a refusal found after launch costs a
torn-down fleet (or a 15-minute SSH wait). So before ``up`` creates anything it asks:

* is the image there (an AMI id, or a name looked up for the type's architecture), and
  do the image and the instance type have the same architecture;
* is the root volume (``disk_gb``) at least as large as the image's;
* which subnets may the instances start in: the type is offered in their availability
  zone (DescribeInstanceTypeOfferings), and, for ``address: public``, they give instances
  a public IP and route to an internet gateway;
* do the vCPUs needed, plus those running, fit in the account's vCPU quota (Service
  Quotas; the standard families A, C, D, H, I, M, R, T, Z, on-demand or spot).

Every failure is one line that says what to do; all of them are reported together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from sshcluster.ec2.aws import aws_errors, call, make_filters, make_service_client
from sshcluster.ec2.images import Image, resolve_image
from sshcluster.ec2.instances import LIVE_STATES
from sshcluster.errors import EC2Error

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client
    from mypy_boto3_ec2.literals import InstanceTypeType
    from mypy_boto3_ec2.type_defs import InstanceTypeInfoTypeDef

    from sshcluster.ec2.spec import EC2Spec

#: The vCPU quotas checked: the standard families, on-demand and spot. Other families
#: (G, P, X, ...) have their own quotas, which are not checked here.
STANDARD_FAMILIES = "acdhimrtz"
QUOTAS = {False: ("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) "
                                "instances"),
          True: ("L-34B43A08", "All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance "
                               "Requests")}
#: Prefixes of instance families that are not standard although their letter is.
_SPECIAL = ("inf", "dl", "trn", "hpc", "mac", "u-", "vt", "im4gn", "is4gen")


@dataclass(frozen=True)
class Subnet:
    """A subnet the instances may start in."""

    id: str
    zone: str
    vpc: str


@dataclass(frozen=True)
class LaunchPlan:
    """What the checks found: the image, the type's size, the subnets to try in turn.

    ``passed`` are the checks that passed and ``notes`` those that could not be made, one
    line each (``up --dry-run`` prints them); ``warnings`` what may go wrong later.
    """

    image: Image
    vcpus: int
    cores: int
    subnets: tuple[Subnet, ...]
    vpc: str
    passed: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def ncore(self, spec: EC2Spec) -> int:
        """R workers per instance: physical cores, or vCPUs with ``ncore: vcpus``."""
        return self.vcpus if spec.ncore == "vcpus" else self.cores


class LaunchCheckFailed(EC2Error):
    """Checks before the launch failed; ``failures`` has one line (what to do) each."""

    def __init__(self, failures: tuple[str, ...]) -> None:
        self.failures = failures
        super().__init__("not started: " + ("\n".join(failures) if len(failures) == 1 else
                                            "\n" + "\n".join(f"- {f}" for f in failures)),
                         code="LaunchCheckFailed")


def is_standard(instance_type: str) -> bool:
    """True for the standard families (A, C, D, H, I, M, R, T, Z) of the vCPU quota."""
    family = instance_type.split(".")[0]
    return (family[:1] in STANDARD_FAMILIES
            and not any(family.startswith(s) for s in _SPECIAL))


def _type_info(client: EC2Client, types: list[str]) -> dict[str, InstanceTypeInfoTypeDef]:
    out: dict[str, InstanceTypeInfoTypeDef] = {}
    for start in range(0, len(types), 100):
        with aws_errors("DescribeInstanceTypes"):
            answer = client.describe_instance_types(
                InstanceTypes=cast("list[InstanceTypeType]", types[start:start + 100]))
        out.update((t["InstanceType"], t) for t in answer["InstanceTypes"])
    return out


def _subnets(client: EC2Client, spec: EC2Spec) -> tuple[list[dict[str, Any]], str]:
    """The subnets of the spec, or the default VPC's default ones; and their VPC."""
    if spec.subnet_ids:
        with aws_errors("DescribeSubnets"):
            subnets = client.describe_subnets(SubnetIds=list(spec.subnet_ids))["Subnets"]
        order = {s: i for i, s in enumerate(spec.subnet_ids)}
        found = sorted(subnets, key=lambda s: order.get(s["SubnetId"], len(order)))
        vpcs = {s["VpcId"] for s in found}
        if len(vpcs) > 1:
            raise LaunchCheckFailed((f"the subnets {', '.join(spec.subnet_ids)} are in "
                                     f"different VPCs ({', '.join(sorted(vpcs))}); list "
                                     "subnets of one VPC",))
        return cast("list[dict[str, Any]]", found), found[0]["VpcId"]
    with aws_errors("DescribeVpcs"):
        vpcs_found = client.describe_vpcs(Filters=make_filters(**{"is-default": "true"}))
    if not vpcs_found["Vpcs"]:
        raise EC2Error(f"region {spec.region} has no default VPC", code="VPCIdNotSpecified",
                       hint="set subnet_id in the spec")
    vpc = vpcs_found["Vpcs"][0]["VpcId"]
    with aws_errors("DescribeSubnets"):
        subnets = client.describe_subnets(Filters=make_filters(
            **{"vpc-id": vpc, "default-for-az": "true"}))["Subnets"]
    return sorted(cast("list[dict[str, Any]]", subnets), key=lambda s: s["AvailabilityZone"]), vpc


def _internet_routes(client: EC2Client, vpc: str, subnet_ids: list[str]) -> dict[str, str]:
    """Per subnet: where its route table (its own, else the VPC's main one) sends
    0.0.0.0/0: ``igw`` (an internet gateway), ``nat`` (a NAT gateway), ``other`` (an
    appliance, a transit gateway, ...) or ``""`` (nowhere)."""
    with aws_errors("DescribeRouteTables"):
        tables = client.describe_route_tables(Filters=make_filters(**{"vpc-id": vpc}))
    main, own = "", {}
    for table in tables["RouteTables"]:
        out = ""
        for r in table.get("Routes", []):
            if r.get("DestinationCidrBlock") != "0.0.0.0/0" or r.get("State",
                                                                     "active") != "active":
                continue
            out = ("igw" if r.get("GatewayId", "").startswith("igw-") else
                   "nat" if r.get("NatGatewayId") else "other")
        for assoc in table.get("Associations", []):
            if assoc.get("Main"):
                main = out
            elif assoc.get("SubnetId"):
                own[assoc["SubnetId"]] = out
    return {s: own.get(s, main) for s in subnet_ids}


def _no_way_out(spec: EC2Spec, usable: list[Any], routes: dict[str, str]) -> list[str]:
    """With ``address: private``: a warning when no subnet lets an instance reach the
    internet (a NAT gateway, or an internet gateway with a public IP), as the setup then
    cannot install R or packages."""
    if any(routes[s["SubnetId"]] in ("nat", "other") or (
            routes[s["SubnetId"]] == "igw" and s.get("MapPublicIpOnLaunch"))
           for s in usable):
        return []
    return [f"no subnet of {', '.join(s['SubnetId'] for s in usable)} reaches the internet "
            "(0.0.0.0/0 to a NAT gateway, or to an internet gateway with public IPs): the "
            "setup cannot install R or packages, so the image must already have R"
            + (" and " + ", ".join(spec.r_packages) if spec.r_packages else "")
            + (" (and r_version: cran cannot work)" if spec.r_version == "cran" else "")
            + "; or add a NAT gateway"]


def plan_launch(client: EC2Client, spec: EC2Spec, *, quotas: Any = None, ssm: Any = None,
                running_here: int = 0) -> LaunchPlan:
    """Check everything that can be checked before a launch and return the plan; raise
    :class:`LaunchCheckFailed` with every failure. ``quotas`` and ``ssm`` are Service
    Quotas and SSM clients (default: for the spec's region). ``running_here`` are
    instances of this very run that already run (a retried ``up``): they need no quota."""
    if client.meta.region_name != spec.region:
        raise EC2Error(f"the EC2 client is for {client.meta.region_name}, the spec for "
                       f"{spec.region}", hint="make the client with make_client(spec.region)")
    failures: list[str] = []
    passed: list[str] = []
    notes: list[str] = []
    kind = _type_info(client, [spec.instance_type]).get(spec.instance_type)
    if kind is None:
        raise EC2Error(f"instance type {spec.instance_type} does not exist in {spec.region}",
                       code="InvalidInstanceType", hint="check instance_type")
    cpu = kind.get("VCpuInfo", {})
    vcpus = int(cpu.get("DefaultVCpus", 1))
    cores = int(cpu.get("DefaultCores", vcpus))
    archs = list(kind.get("ProcessorInfo", {}).get("SupportedArchitectures", ["x86_64"]))

    image = resolve_image(client, spec.image, archs, ssm=ssm)
    shown = f"{spec.image} is {image.id}" if image.id != spec.image else f"image {image.id}"
    if image.architecture not in archs:
        failures.append(f"the image {shown} is for {image.architecture}, the instance type "
                        f"{spec.instance_type} runs {'/'.join(archs)}: choose a "
                        f"{image.architecture} instance type or an image for {archs[0]}")
    else:
        passed.append(f"{shown} ({image.architecture}), type {spec.instance_type}: "
                      f"{vcpus} vCPUs, {cores} cores")
    if image.root_size_gb and image.root_size_gb > spec.disk_gb:
        failures.append(f"the image's root volume is {image.root_size_gb} GiB, more than "
                        f"disk_gb: {spec.disk_gb}: set disk_gb to {image.root_size_gb} or more")

    subnets, vpc = _subnets(client, spec)
    with aws_errors("DescribeInstanceTypeOfferings"):
        offered = {o["Location"] for o in client.describe_instance_type_offerings(
            LocationType="availability-zone",
            Filters=make_filters(**{"instance-type": spec.instance_type}),
        )["InstanceTypeOfferings"]}
    usable = [s for s in subnets if s["AvailabilityZone"] in offered]
    if not usable:
        zones = sorted({s["AvailabilityZone"] for s in subnets})
        failures.append(f"the instance type {spec.instance_type} is not offered in "
                        f"{', '.join(zones)} (the zones of the subnets); it is offered in "
                        f"{', '.join(sorted(offered)) or 'no zone of ' + spec.region}: set "
                        "subnet_id to a subnet there, or choose another type")
    if usable and spec.address == "public":
        routes = _internet_routes(client, vpc, [s["SubnetId"] for s in usable])
        # A subnet that does not auto-assign public IPs will do: RunInstances asks for one
        # on the network interface (AssociatePublicIpAddress).
        public = [s for s in usable if routes[s["SubnetId"]] == "igw"]
        if not public:
            failures.append(f"subnet {usable[0]['SubnetId']} has no route to an internet "
                            "gateway (0.0.0.0/0 to igw-...): use a public subnet, or set "
                            "'address: private' when this machine is inside the VPC")
        asked = [s["SubnetId"] for s in public if not s.get("MapPublicIpOnLaunch")]
        if asked:
            passed.append(f"{', '.join(asked)} assign no public IPs by themselves: up asks "
                         "for one on each instance's network interface")
        usable = public
    if usable:
        passed.append(f"{spec.instance_type} is offered in the zones of "
                      f"{len(usable)} subnet(s): "
                      + ", ".join(f"{s['SubnetId']} ({s['AvailabilityZone']})" for s in usable)
                      + (", public IPs and an internet gateway" if spec.address == "public"
                         else ""))

    warnings = list(_warnings(spec, kind))
    if usable and spec.address == "private":
        warnings += _no_way_out(spec, usable, _internet_routes(
            client, vpc, [s["SubnetId"] for s in usable]))
    _check_quota(client, spec, vcpus, running_here, quotas, passed, notes, failures)
    if failures:
        raise LaunchCheckFailed(tuple(failures))
    return LaunchPlan(image, vcpus, cores,
                      tuple(Subnet(s["SubnetId"], s["AvailabilityZone"], s["VpcId"])
                            for s in usable), vpc, tuple(passed), tuple(notes),
                      tuple(warnings))


def _warnings(spec: EC2Spec, kind: Any) -> tuple[str, ...]:
    """Older (Xen) types keep only a buffered console output, which can lag by minutes:
    the host keys may not show before the deadline."""
    if kind.get("Hypervisor") != "xen":
        return ()
    return (f"{spec.instance_type} is a Xen type: its console output is buffered and can "
            "lag by minutes, so the host keys may not show before the deadline; choose a "
            "Nitro type (t3, m5, c5 or newer), allow more time (--timeout), or pass "
            "--accept-new",)


def _check_quota(client: EC2Client, spec: EC2Spec, vcpus: int, running_here: int,
                 quotas: Any, passed: list[str], notes: list[str],
                 failures: list[str]) -> None:
    """vCPUs needed plus vCPUs running in the same quota must fit in the quota."""
    if not is_standard(spec.instance_type):
        notes.append(f"the vCPU quota of the {spec.instance_type.split('.')[0]} family is "
                     "not checked: look it up in Service Quotas (EC2)")
        return
    code, name = QUOTAS[spec.spot]
    try:
        quotas = quotas or make_service_client("service-quotas", spec.region)
        answer = call(quotas.get_service_quota, "GetServiceQuota", ServiceCode="ec2",
                      QuotaCode=code)
        assert answer is not None
        limit = int(answer["Quota"]["Value"])
    except EC2Error as e:
        notes.append(f"the vCPU quota {code} was not checked ({e.code or e.message}): "
                     "look it up in Service Quotas (EC2)")
        return
    running = _running_vcpus(client, spot=spec.spot) - running_here * vcpus
    needed = (spec.count - running_here) * vcpus
    if needed + running > limit:
        failures.append(f"{spec.count} x {spec.instance_type} need {needed} vCPUs and "
                        f"{running} are running, but the quota '{name}' ({code}) is "
                        f"{limit}: ask for more in Service Quotas, end other instances, or "
                        "start fewer or smaller ones")
    else:
        passed.append(f"vCPUs: {needed} needed + {running} running <= {limit} ({code})")


def _running_vcpus(client: EC2Client, *, spot: bool) -> int:
    """vCPUs of the account's live standard instances, spot or on-demand, in the region."""
    counts: dict[str, int] = {}
    with aws_errors("DescribeInstances"):
        pages = client.get_paginator("describe_instances").paginate(
            Filters=make_filters(**{"instance-state-name": [s for s in LIVE_STATES
                                                            if s != "stopped"]}))
        for page in pages:
            for reservation in page["Reservations"]:
                for inst in reservation["Instances"]:
                    kind = inst.get("InstanceType", "")
                    if is_standard(kind) and (inst.get("InstanceLifecycle") == "spot") == spot:
                        counts[kind] = counts.get(kind, 0) + 1
    info = _type_info(client, sorted(counts)) if counts else {}
    return sum(n * int(info.get(k, {}).get("VCpuInfo", {}).get("DefaultVCpus", 1))
               for k, n in counts.items())



__all__ = ["QUOTAS", "LaunchCheckFailed", "LaunchPlan", "Subnet", "is_standard",
           "plan_launch"]
