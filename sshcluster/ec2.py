"""Transient EC2 workers: start them, list them, and make sure they stop.

The Python API behind ``sshcluster ec2 up | ls | down | gc``::

    import boto3
    from sshcluster import ec2
    from sshcluster.ec2spec import load_spec

    spec = load_spec("ec2.yaml")
    client = ec2.make_client(spec.region)
    with ec2.cluster(spec, client=client, output="hosts.yaml") as c:
        print(c.next_steps)  # sshcluster render hosts.yaml --check -o cluster.R, then R
    # every instance, spot request, security group and key pair it made is gone here

Safe by default: every resource is tagged (``sshcluster:cluster``, ``sshcluster:owner``,
``sshcluster:expires``, ``sshcluster:run``); instances stop billing at their expiry even if
this machine dies (shutdown behaviour ``terminate`` plus the dead man's switch in their user
data); anything that goes wrong during :func:`up`, Ctrl-C included, terminates what that
``up`` started. Host keys come from the console output, never from the network, unless the
caller accepts new keys in so many words.

A small record per cluster lives in :func:`state_dir` on this machine: ``up`` writes it
before it starts anything, ``down`` removes it. ``gc`` treats this owner's clusters without
a record as orphaned.

``down``, ``ls`` and ``gc`` (:func:`down`, :func:`list_clusters`, :func:`find_garbage`,
:func:`collect_garbage`) live in :mod:`sshcluster.ec2clusters` and are re-exported here.
"""

from __future__ import annotations

import concurrent.futures
import functools
import ipaddress
import math
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from sshcluster.ec2aws import (
    BOTO_ERRORS,
    HINTS,
    LIVE_STATES,
    TAG_BATCH,
    TAG_CLUSTER,
    TAG_EXPIRES,
    TAG_OWNER,
    TAG_RUN,
    Endpoint,
    Instance,
    Record,
    aws_error,
    aws_errors,
    client_token,
    cluster_instances,
    default_owner,
    find_record,
    format_duration,
    format_time,
    hint_for,
    load_records,
    make_client,
    make_filters,
    record_path,
    resolve_region,
    save_record,
    search_regions,
    state_dir,
    tag_specifications,
    utcnow,
)
from sshcluster.ec2clusters import (
    ClusterStatus,
    DownReport,
    Garbage,
    collect_garbage,
    down,
    find_garbage,
    list_clusters,
    remove_resources,
)
from sshcluster.ec2spec import EC2Spec, user_data
from sshcluster.errors import EC2Error, OutputExistsError, SshclusterError
from sshcluster.files import atomic_write
from sshcluster.hostkeys import HostKey, parse_console_host_keys, scan_host_key, write_known_hosts
from sshcluster.inventory import Host, Inventory, Primary, dump_inventory
from sshcluster.quoting import r_string, shell_join

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client
    from mypy_boto3_ec2.literals import InstanceTypeType, ResourceTypeType
    from mypy_boto3_ec2.type_defs import IpPermissionTypeDef


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Step:
    """A progress report from :func:`up`: ``done`` of ``total`` at ``stage``
    (``launch``, ``running``, ``ssh``, ``hostkeys``, ``done``)."""

    stage: str
    done: int
    total: int
    message: str = ""


@dataclass(frozen=True)
class Cluster:
    """What :func:`up` started and wrote."""

    name: str
    region: str
    run_id: str
    expires: datetime
    instances: tuple[Instance, ...]
    endpoints: tuple[Endpoint, ...]
    inventory: Inventory
    inventory_path: Path
    known_hosts: Path
    key_file: Path | None
    #: The shell commands that take the inventory to a running R cluster (see
    #: :func:`next_steps`); ``sshcluster ec2 up`` prints them.
    next_steps: tuple[str, ...] = ()


AddressOf = Callable[[Instance], Endpoint]
ConsoleText = Callable[[str], str]
Progress = Callable[[Step], None]


# --------------------------------------------------------------------------- waiting


def _ssh_banner(endpoint: Endpoint, timeout: float) -> bool:
    """True if ``endpoint`` answers with an SSH protocol banner within ``timeout``."""
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as s:
            s.settimeout(timeout)
            data = b""
            # RFC 4253: the server may send other lines before its "SSH-" identification.
            while b"\n" not in data or not any(
                    line.startswith(b"SSH-") for line in data.split(b"\n")):
                chunk = s.recv(256)
                if not chunk or len(data) > 8192:
                    return False
                data += chunk
            return True
    except OSError:
        return False


def _remaining(deadline: float) -> float:
    return deadline - time.monotonic()


# --------------------------------------------------------------------------- up


class _Started:
    """What one ``up`` has made so far: its undo list."""

    def __init__(self) -> None:
        self.instance_ids: list[str] = []
        self.security_group: str | None = None
        self.key_pair: str | None = None
        self.files: list[Path] = []


def _preflight(client: EC2Client, spec: EC2Spec) -> int:
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


def _vpc_of(client: EC2Client, spec: EC2Spec) -> str:
    if spec.subnet_id:
        with aws_errors("DescribeSubnets"):
            subnets = client.describe_subnets(SubnetIds=[spec.subnet_id])["Subnets"]
        return subnets[0]["VpcId"]
    with aws_errors("DescribeVpcs"):
        vpcs = client.describe_vpcs(Filters=make_filters(**{"is-default": "true"}))["Vpcs"]
    if not vpcs:
        raise EC2Error(f"region {spec.region} has no default VPC", code="VPCIdNotSpecified",
                       hint=HINTS["VPCIdNotSpecified"])
    return vpcs[0]["VpcId"]


def _ingress(spec: EC2Spec, group_id: str) -> list[IpPermissionTypeDef]:
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
    return rules  # type: ignore[return-value]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _write_private_key(path: Path, material: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, material if material.endswith("\n") else material + "\n", mode=0o600)


def default_address(spec: EC2Spec) -> AddressOf:
    """The address seam's default: the public or private IP (``spec.address``), port 22."""

    def address_of(instance: Instance) -> Endpoint:
        ip = instance.public_ip if spec.address == "public" else instance.private_ip
        if not ip:
            raise EC2Error(
                f"instance {instance.id} has no {spec.address} IP address",
                hint="use a subnet that assigns public IPs, or 'address: private' when this "
                     "machine is inside the VPC")
        return Endpoint(ip)

    return address_of


def _launch(client: EC2Client, spec: EC2Spec, *, run_id: str, owner: str, expires: datetime,
            groups: list[str], key_name: str | None, batch_size: int, started: _Started,
            report: Progress, dry_run: bool = False) -> None:
    """Start the instances in all-or-nothing batches (MinCount = MaxCount), each with its
    own ClientToken; batches already there (a retried ``up``) are not started again."""
    have = {i.batch for i in
            cluster_instances(client, spec.name, run_id=run_id)} if not dry_run else set()
    batches = [(b, min(batch_size, spec.count - b * batch_size))
               for b in range(math.ceil(spec.count / batch_size))]
    done = sum(n for b, n in batches if b in have)
    data = user_data(spec, expires)
    for batch, n in batches:
        if batch in have:
            continue
        types: tuple[ResourceTypeType, ...] = ("instance", "volume")
        if spec.spot:
            types += ("spot-instances-request",)
        args: dict[str, Any] = {
            "ImageId": spec.image, "InstanceType": spec.instance_type, "MinCount": n,
            "MaxCount": n, "UserData": data,
            "ClientToken": client_token(spec.name, run_id, batch),
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": tag_specifications(spec, owner, expires, run_id, *types,
                                       extra={TAG_BATCH: str(batch)}),
            "DryRun": dry_run,
        }
        if key_name:
            args["KeyName"] = key_name
        if groups:
            args["SecurityGroupIds"] = groups
        if spec.subnet_id:
            args["SubnetId"] = spec.subnet_id
        if spec.spot:
            # One-time and terminate: a persistent request would start new instances
            # after we terminate the old ones.
            args["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        if dry_run:
            _dry(functools.partial(client.run_instances, **args), "RunInstances")
            return
        with aws_errors("RunInstances"):
            answer = client.run_instances(**args)
        started.instance_ids += [i["InstanceId"] for i in answer["Instances"]]
        done += n
        report(Step("launch", done, spec.count, f"started {done} of {spec.count}"))


def _dry(call: Callable[[], object], operation: str) -> None:
    """Make a DryRun call: AWS answers DryRunOperation when the real call would succeed."""
    try:
        call()
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == "DryRunOperation":
            return
        raise aws_error(e, operation) from e
    except BOTO_ERRORS as e:
        raise aws_error(e, operation) from e
    raise EC2Error(f"{operation}: the dry run was not refused nor confirmed",
                   operation=operation)


def dry_run(spec: EC2Spec, *, client: EC2Client) -> tuple[str, ...]:
    """Ask EC2 whether ``up`` would be allowed (``DryRun=True``: permissions, image,
    limits checked by AWS) without starting or creating anything. Returns the checks
    that passed; raises EC2Error on the first that did not."""
    passed = []
    _preflight(client, spec)
    passed.append(f"image {spec.image} and type {spec.instance_type} exist in {spec.region}")
    owner, expires, run_id = default_owner(), utcnow() + spec.max_lifetime, "dryrun"
    if spec.key_name is None:
        _dry(lambda: client.create_key_pair(
            KeyName=f"sshcluster-{spec.name}", KeyType="ed25519", DryRun=True,
            TagSpecifications=tag_specifications(spec, owner, expires, run_id, "key-pair")),
            "CreateKeyPair")
        passed.append("may create a key pair")
    groups = [spec.security_group_id] if spec.security_group_id else []
    if spec.security_group_id is None:
        vpc = _vpc_of(client, spec)
        _dry(lambda: client.create_security_group(
            GroupName=f"sshcluster-{spec.name}", Description="sshcluster", VpcId=vpc,
            DryRun=True, TagSpecifications=tag_specifications(spec, owner, expires, run_id,
                                                 "security-group")), "CreateSecurityGroup")
        passed.append("may create a security group")
    # Without KeyName when up would create the key pair: it does not exist yet, and AWS
    # checks parameters in a dry run too.
    _launch(client, spec, run_id=run_id, owner=owner, expires=expires, groups=groups,
            key_name=spec.key_name, batch_size=spec.count, started=_Started(),
            report=lambda s: None, dry_run=True)
    passed.append(f"may run {spec.count} x {spec.instance_type}"
                  + (" (spot)" if spec.spot else ""))
    return tuple(passed)


def up(spec: EC2Spec, *, client: EC2Client, output: str | os.PathLike[str],
       accept_new: bool = False, timeout: float = 900.0, poll: float = 5.0,
       address_of: AddressOf | None = None, console_text: ConsoleText | None = None,
       progress: Progress | None = None, owner: str | None = None,
       records: Path | None = None, batch_size: int = 10,
       run_id: str | None = None, overwrite: bool = False) -> Cluster:
    """Start the cluster, wait until every instance runs and answers on SSH, record its
    host keys and write an inventory to ``output``.

    ``timeout`` is one deadline for the whole wait (seconds). ``address_of`` maps an
    instance to where this machine reaches its sshd (default :func:`default_address`);
    ``console_text`` returns an instance's console output (default GetConsoleOutput).
    Host keys come from that console output; if they cannot be read before the deadline,
    ``up`` fails, unless ``accept_new`` records the key each instance shows on its first
    connection. ``progress`` is called with a :class:`Step` as the wait goes on.

    ``output`` is not overwritten unless it is an inventory ``up`` wrote for this
    cluster (its header says so), or ``overwrite``: else :class:`OutputExistsError` is
    raised before anything starts.

    A retried ``up`` of a cluster whose record and instances are still there continues
    that run (same ClientTokens) instead of starting a second fleet. On any failure or
    interrupt everything this run started is terminated and deleted before the error
    (an :class:`EC2Error` saying what was removed) or the KeyboardInterrupt propagates;
    only a cluster that an earlier ``up`` finished is left as it is (``down`` ends it).
    """
    deadline = time.monotonic() + timeout
    report: Progress = progress or (lambda step: None)
    owner = owner or default_owner()
    records = records or state_dir()
    output = Path(output)
    if not overwrite:
        _refuse_foreign_output(output, spec)
    vcpus = _preflight(client, spec)

    earlier = find_record(records, spec.region, spec.name)
    # Instances already shutting down (a down just before) are on their way out.
    existing = [i for i in cluster_instances(client, spec.name) if i.state != "shutting-down"]
    key_file = output.parent / f"{spec.name}.pem" if spec.key_name is None else None
    finished = False  # the run being continued was finished by an earlier up
    if existing:
        runs = {i.run_id for i in existing}
        if earlier is None or runs != {earlier.run_id} or run_id not in (None,
                                                                          earlier.run_id):
            raise EC2Error(
                f"cluster {spec.name} already has {len(existing)} instance(s) in "
                f"{spec.region} from another run", hint=f"run 'sshcluster ec2 down "
                f"{spec.name}' first, or give this cluster another name")
        run_id, expires = earlier.run_id, earlier.expires
        finished = earlier.status == "up"
        if earlier.key_file and key_file:
            key_file = Path(earlier.key_file)  # the key the running instances were given
    else:
        run_id = run_id or secrets.token_hex(6)
        expires = utcnow() + spec.max_lifetime
    known_hosts = output.parent / f"{spec.name}.known_hosts"
    record = Record(spec.name, spec.region, run_id, owner, expires, "starting",
                    key_file=str(key_file) if key_file else None,
                    known_hosts=str(known_hosts), inventory=str(output))
    # Written before anything exists, so that gc on this machine never mistakes a
    # cluster that is still starting for an orphan.
    save_record(records, record)

    started = _Started()
    try:
        cluster = _up(spec, client=client, record=record, vcpus=vcpus, deadline=deadline,
                      poll=poll, accept_new=accept_new,
                      address_of=address_of or default_address(spec),
                      console_text=console_text or _console_reader(client),
                      report=report, batch_size=batch_size, started=started)
    except BaseException as exc:
        if finished:
            save_record(records, replace(record, status="up"))
            undone = (f"the cluster an earlier up started is left as it was; 'sshcluster "
                      f"ec2 down {spec.name}' ends it")
        else:
            if key_file:
                started.files.append(key_file)  # its key pair goes with the run
            undone = _undo(client, spec.name, run_id, started)
            record_path(records, spec.region, spec.name).unlink(missing_ok=True)
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        note = f"up {spec.name} {what}; {undone}"
        report(Step("aborted", 0, spec.count, note))
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        if isinstance(exc, EC2Error):
            raise EC2Error(f"{exc.message}\n{note}", code=exc.code, operation=exc.operation,
                           hint=exc.hint) from exc
        if isinstance(exc, SshclusterError):
            raise EC2Error(f"{exc.message}\n{note}", hint=exc.hint) from exc
        raise EC2Error(f"{type(exc).__name__}: {exc}\n{note}") from exc
    save_record(records, replace(record, status="up"))
    return cluster


def _header(spec: EC2Spec) -> str:
    """The first line of the inventory ``up`` writes for ``spec``'s cluster."""
    return f"Written by 'sshcluster ec2 up' for cluster {spec.name} in {spec.region} "


def _refuse_foreign_output(output: Path, spec: EC2Spec) -> None:
    """Raise OutputExistsError if ``output`` exists and is not an inventory ``up`` wrote
    for this cluster (a hand-written inventory, another cluster's)."""
    try:
        with output.open(encoding="utf-8", errors="replace") as f:
            first = f.readline(4096)
    except FileNotFoundError:
        return
    except OSError:
        first = ""
    if first.startswith(f"# {_header(spec)}"):
        return  # a retried or repeated up of the same cluster: its own file
    raise OutputExistsError(
        f"{output} exists and is not an inventory 'sshcluster ec2 up' wrote for cluster "
        f"{spec.name} in {spec.region}; not overwritten, nothing started",
        path=str(output), hint=f"write the inventory elsewhere (-o other.yaml), or pass "
                               f"--force to replace {output}")


def _console_reader(client: EC2Client) -> ConsoleText:
    def read(instance_id: str) -> str:
        with aws_errors("GetConsoleOutput"):
            return client.get_console_output(InstanceId=instance_id).get("Output", "")

    return read


def _up(spec: EC2Spec, *, client: EC2Client, record: Record, vcpus: int, deadline: float,
        poll: float, accept_new: bool, address_of: AddressOf, console_text: ConsoleText,
        report: Progress, batch_size: int, started: _Started) -> Cluster:
    run_id, owner, expires = record.run_id, record.owner, record.expires
    key_file = Path(record.key_file) if record.key_file else None
    known_hosts = Path(record.known_hosts or "")
    output = Path(record.inventory or "")
    run_filter = make_filters(**{f"tag:{TAG_RUN}": run_id, f"tag:{TAG_CLUSTER}": spec.name})

    key_name = spec.key_name
    if key_name is None:
        assert key_file is not None
        with aws_errors("DescribeKeyPairs"):
            pairs = client.describe_key_pairs(Filters=run_filter)["KeyPairs"]
        if pairs and key_file.exists():
            key_name = pairs[0]["KeyName"]  # a retried up: the key of the first attempt
        else:
            key_name = f"sshcluster-{spec.name}-{run_id}"
            with aws_errors("CreateKeyPair"):
                made = client.create_key_pair(
                    KeyName=key_name, KeyType="ed25519",
                    TagSpecifications=tag_specifications(spec, owner, expires, run_id, "key-pair"))
            started.key_pair = key_name
            _write_private_key(key_file, made["KeyMaterial"])
            started.files.append(key_file)

    groups = [spec.security_group_id] if spec.security_group_id else []
    if spec.security_group_id is None:
        with aws_errors("DescribeSecurityGroups"):
            found = client.describe_security_groups(Filters=run_filter)["SecurityGroups"]
        if found:
            groups = [found[0]["GroupId"]]
        else:
            vpc = _vpc_of(client, spec)
            with aws_errors("CreateSecurityGroup"):
                group = client.create_security_group(
                    GroupName=f"sshcluster-{spec.name}-{run_id}", VpcId=vpc,
                    Description=f"sshcluster cluster {spec.name}",
                    TagSpecifications=tag_specifications(spec, owner, expires, run_id,
                                                         "security-group"))
            started.security_group = group["GroupId"]
            groups = [group["GroupId"]]
            with aws_errors("AuthorizeSecurityGroupIngress"):
                client.authorize_security_group_ingress(
                    GroupId=group["GroupId"], IpPermissions=_ingress(spec, group["GroupId"]))

    _launch(client, spec, run_id=run_id, owner=owner, expires=expires, groups=groups,
            key_name=key_name, batch_size=batch_size, started=started, report=report)
    instances = cluster_instances(client, spec.name, run_id=run_id)
    started.instance_ids = sorted({*started.instance_ids, *(i.id for i in instances)})
    ids = [i.id for i in instances]

    report(Step("running", 0, len(ids), "waiting for the instances to run"))
    delay = max(1, round(poll))
    with aws_errors("waiting for instance_running"):
        client.get_waiter("instance_running").wait(
            InstanceIds=ids, WaiterConfig={
                "Delay": delay, "MaxAttempts": max(1, int(_remaining(deadline) // delay))})
    instances = cluster_instances(client, spec.name, run_id=run_id)
    report(Step("running", len(ids), len(ids), "all instances running"))

    endpoints = {i.id: address_of(i) for i in instances}
    _wait_ssh(endpoints, deadline=deadline, poll=poll, report=report)
    keys = _host_keys(instances, endpoints, console_text=console_text, accept_new=accept_new,
                      deadline=deadline, poll=poll, report=report)
    write_known_hosts(known_hosts, [(endpoints[i].host, endpoints[i].port, k)
                                    for i, ks in keys.items() for k in ks])

    # primary.user is who the workers ssh to on the primary (the reverse_ssh check). Only
    # when the primary is one of the instances is that the image's login user; 'auto' or
    # an address is a machine outside the cluster (usually this one), whose user the
    # check takes to be the one running it when the inventory names none.
    first = instances[0].private_ip if spec.primary == "first" else None
    if first:
        primary, primary_user = first, spec.user
    else:
        primary, primary_user = "auto" if spec.primary == "first" else spec.primary, None
    inventory = Inventory(
        primary=Primary(host=primary, user=primary_user),
        hosts=tuple(Host(host=endpoints[i.id].host, user=spec.user, ncore=vcpus,
                         ssh_port=endpoints[i.id].port if endpoints[i.id].port != 22
                         else None,
                         identity_file=str(key_file) if key_file else spec.identity_file)
                    for i in instances),
        port=spec.port, known_hosts=str(known_hosts), path=str(output))
    steps = next_steps(output, primary_instance=first)
    header = (f"{_header(spec)}(run {run_id}).\nIts instances power off at {format_time(expires)}; "
              f"'sshcluster ec2 down {spec.name}' ends them now. Next:\n"
              + "\n".join(f"  {step}" for step in steps))
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, dump_inventory(inventory, header=header))
    report(Step("done", len(ids), len(ids), f"wrote {output}"))
    return Cluster(spec.name, spec.region, run_id, expires, tuple(instances),
                   tuple(endpoints[i.id] for i in instances), inventory, output,
                   known_hosts, key_file, steps)


def next_steps(inventory: str | os.PathLike[str], *,
               primary_instance: str | None = None) -> tuple[str, ...]:
    """The shell commands from an inventory ``up`` wrote to R on the cluster.

    ``render --check`` is needed, not only advised: it fills in ``primary: auto`` (the
    address the workers see this machine at) and says whether the setup script has
    installed R yet. ``primary_instance`` is the first instance's address when it is the
    primary (``primary: first``): the check cannot run from here then (its callback
    listens on this machine), the inventory is complete as it is, and R runs there.
    """
    inventory = Path(inventory)
    cluster_r = str(inventory.parent / "cluster.R")
    if primary_instance:
        return (shell_join(["sshcluster", "render", str(inventory), "-o", cluster_r]),
                f"# then source({r_string(cluster_r)}) in R on the primary, the first "
                f"instance ({primary_instance}), with the key and known_hosts files at the "
                "same paths as here")
    return (shell_join(["sshcluster", "render", str(inventory), "--check", "-o", cluster_r]),
            shell_join(["Rscript", "-e",
                        f"source({r_string(cluster_r)}); print(parallelCluster)"]))


def _wait_ssh(endpoints: dict[str, Endpoint], *, deadline: float, poll: float,
              report: Progress) -> None:
    """Wait until every endpoint shows an SSH banner, probing them in parallel."""
    waiting = dict(endpoints)
    total = len(endpoints)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(32, total or 1)) as pool:
        while True:
            report(Step("ssh", total - len(waiting), total, "waiting for SSH"))
            if not waiting:
                return
            left = _remaining(deadline)
            if left <= 0:
                raise EC2Error(
                    f"{len(waiting)} of {total} instances did not answer on SSH before the "
                    f"deadline: " + ", ".join(f"{i} ({e.host}:{e.port})"
                                              for i, e in sorted(waiting.items())),
                    hint="check ssh_cidr and the subnet's route to the internet, or allow "
                         "more time (--timeout)")
            probe = min(5.0, max(0.5, left))
            answers = dict(zip(waiting, pool.map(functools.partial(_ssh_banner, timeout=probe),
                                                 waiting.values()), strict=True))
            waiting = {i: e for i, e in waiting.items() if not answers[i]}
            if waiting:
                time.sleep(min(poll, max(0.0, _remaining(deadline))))


def _host_keys(instances: Sequence[Instance], endpoints: dict[str, Endpoint], *,
               console_text: ConsoleText, accept_new: bool, deadline: float, poll: float,
               report: Progress) -> dict[str, tuple[HostKey, ...]]:
    """Every instance's host keys, from its console output; ``accept_new``: from the
    first connection for those whose console shows none."""
    keys: dict[str, tuple[HostKey, ...]] = {}
    total = len(instances)
    while True:
        for inst in instances:
            if inst.id not in keys:
                found = parse_console_host_keys(console_text(inst.id))
                if found:
                    keys[inst.id] = found
        report(Step("hostkeys", len(keys), total, "reading host keys from the console"))
        missing = [i for i in instances if i.id not in keys]
        if not missing:
            return keys
        if accept_new:
            for inst in missing:
                where = endpoints[inst.id]
                scanned = scan_host_key(where.host, where.port,
                                        max(1.0, min(10.0, _remaining(deadline))))
                if scanned is None:
                    raise EC2Error(f"instance {inst.id} showed no host key on "
                                   f"{endpoints[inst.id].host}:{endpoints[inst.id].port}")
                keys[inst.id] = (scanned,)
            report(Step("hostkeys", total, total, "recorded new host keys (--accept-new)"))
            return keys
        if _remaining(deadline) <= 0:
            raise EC2Error(
                f"the host keys of {len(missing)} of {total} instances could not be read "
                "from their console output: " + ", ".join(i.id for i in missing),
                hint="cloud-init prints them at first boot, and the console output can lag "
                     "by minutes: retry with more time (--timeout), or pass --accept-new to "
                     "record the key each instance shows on first connection")
        time.sleep(min(poll, max(0.0, _remaining(deadline))))


def _undo(client: EC2Client, name: str, run_id: str, started: _Started) -> str:
    """Remove everything of run ``run_id``: what ``started`` knows, plus anything tagged
    with the run (a RunInstances whose answer was lost still tagged its instances)."""
    try:
        report = remove_resources(client, name, run_id=run_id, known_ids=started.instance_ids)
    except SshclusterError as e:
        return (f"cleanup failed ({e.message}); run 'sshcluster ec2 down {name}' to remove "
                "what is left")
    for path in started.files:
        path.unlink(missing_ok=True)
    return f"cleaned up: {report.summary()}"


@contextmanager
def cluster(spec: EC2Spec, *, client: EC2Client, output: str | os.PathLike[str],
            records: Path | None = None, **options: Any) -> Iterator[Cluster]:
    """``up`` on entry, ``down`` on exit: also on an exception or Ctrl-C in the block.

    ``options`` are passed to :func:`up` (``accept_new``, ``timeout``, ``address_of``...).
    """
    started = up(spec, client=client, output=output, records=records, **options)
    try:
        yield started
    finally:
        down(spec.name, client=client, records=records)


__all__ = [
    "LIVE_STATES",
    "TAG_CLUSTER",
    "TAG_EXPIRES",
    "TAG_OWNER",
    "TAG_RUN",
    "AddressOf",
    "Cluster",
    "ClusterStatus",
    "ConsoleText",
    "DownReport",
    "Endpoint",
    "Garbage",
    "Instance",
    "Progress",
    "Record",
    "Step",
    "client_token",
    "cluster",
    "collect_garbage",
    "default_address",
    "default_owner",
    "down",
    "dry_run",
    "find_garbage",
    "format_duration",
    "format_time",
    "list_clusters",
    "load_records",
    "make_client",
    "next_steps",
    "resolve_region",
    "search_regions",
    "state_dir",
    "up",
    "utcnow",
]
