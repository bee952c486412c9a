"""What ``up`` asks AWS for, and what it checks first, against moto (and the fault proxy
where moto cannot show how real AWS answers).

moto shows: metadata options, block devices and the tags of volumes, SSM parameters
(seeded here, as moto has no Debian or Ubuntu ones), DescribeInstanceTypeOfferings, route
tables and internet gateways. The fault proxy stands in for what moto does not do: a
zone without capacity, the vCPU quota (moto's Service Quotas knows no EC2 codes), a
console that refuses ``Latest``, an instance that ends while it should start. moto keeps
no tags on network interfaces, so for those the request is checked.
"""

from __future__ import annotations

import datetime
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from sshcluster import ec2
from sshcluster.ec2.aws import make_service_client
from sshcluster.ec2.plan import LaunchCheckFailed
from sshcluster.ec2.wait import console_reader

from .faults import FaultProxy
from .helpers import REGION, SshHosts, do_up, live, make_spec, nothing_left, spec_text, state_files

ARM_TYPE = "c7g.large"  # arm64: 2 vCPUs, 2 cores


def seed_image_parameter(name: str, value: str, region: str = REGION) -> None:
    """Put an AWS public SSM parameter into moto (which refuses PutParameter under /aws/,
    as AWS does): straight into the in-process moto server's backend."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ssm.models import Parameter, ssm_backends

    ssm_backends[DEFAULT_ACCOUNT_ID][region]._parameters[name].append(Parameter(
        account_id=DEFAULT_ACCOUNT_ID, name=name, value=value, parameter_type="String",
        description=None, allowed_pattern=None, keyid=None,
        last_modified_date=datetime.datetime.now(), version=1, data_type="aws:ec2:image"))


@pytest.fixture(scope="session")
def arm_ami(moto_url: str) -> str:
    images = ec2.make_client(REGION).describe_images(Owners=["amazon"])["Images"]
    return str(next(i["ImageId"] for i in images if i.get("Architecture") == "arm64"))


def quota_answer(value: float) -> Any:
    """The fault proxy's stand-in for Service Quotas' GetServiceQuota."""
    def answer(params: dict[str, str]) -> tuple[int, bytes]:
        return 200, json.dumps({"Quota": {"ServiceCode": "ec2", "QuotaCode": params["QuotaCode"],
                                          "Value": value}}).encode()
    return answer


# --------------------------------------------------------------------------- each launch


def test_every_launch_sets_imdsv2_a_gp3_root_volume_and_tags_at_creation(
        client: Any, proxy: FaultProxy, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    c = do_up(make_spec(ami, count=2, disk_gb=40),
              ec2.make_client(REGION, endpoint_url=proxy.url), hosts, tmp_path)
    for inst in live(client):
        assert inst["MetadataOptions"]["HttpTokens"] == "required"
        (root,) = inst["BlockDeviceMappings"]
        assert root["DeviceName"] == inst["RootDeviceName"] and root["Ebs"]["DeleteOnTermination"]
    volumes = client.describe_volumes(Filters=[{"Name": "tag:sshcluster:run",
                                                "Values": [c.run_id]}])["Volumes"]
    assert len(volumes) == 2
    assert {(v["Size"], v["VolumeType"]) for v in volumes} == {(40, "gp3")}
    assert all({"sshcluster:cluster", "sshcluster:owner", "sshcluster:expires"}
               <= {t["Key"] for t in v["Tags"]} for v in volumes)
    # moto keeps no tags on network interfaces: what was asked for is checked instead
    (request,) = proxy.params("RunInstances")
    kinds = {v for k, v in request.items()
             if re.fullmatch(r"TagSpecification\.\d+\.ResourceType", k)}
    assert kinds == {"instance", "volume", "network-interface"}
    assert request["MetadataOptions.HttpTokens"] == "required"


def test_the_ids_runinstances_answered_are_waited_for(
        client: Any, proxy: FaultProxy, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    # A tag-filtered describe may not show new instances yet (eventual consistency); a
    # describe by id may not know them for a moment (NotFound): neither stops up.
    proxy.add("DescribeInstances", when=lambda p: any(v.startswith("tag:") for v in p.values()),
              rewrite=lambda body: re.sub(rb"<reservationSet>.*</reservationSet>",
                                          b"<reservationSet/>", body, flags=re.S))
    not_found = proxy.refuse("DescribeInstances", "InvalidInstanceID.NotFound",
                             when=lambda p: "InstanceId.1" in p, times=2)
    group_late = proxy.refuse("AuthorizeSecurityGroupIngress", "InvalidGroup.NotFound", times=1)
    c = do_up(make_spec(ami, count=2), ec2.make_client(REGION, endpoint_url=proxy.url), hosts,
              tmp_path)
    assert sorted(i.id for i in c.instances) == sorted(i["InstanceId"] for i in live(client))
    assert not_found.refused == 2 and group_late.refused == 1


def test_botocore_retries_a_longer_throttle() -> None:
    config = ec2.make_client(REGION).meta.config
    assert config.retries["mode"] == "standard"
    assert config.retries.get("max_attempts", config.retries.get("total_max_attempts")) >= 9


# --------------------------------------------------------------------------- checks first


def test_images_by_name_resolve_through_ssm_for_the_types_architecture(
        client: Any, ami: str, arm_ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    seed_image_parameter("/aws/service/debian/release/12/latest/amd64", ami)
    seed_image_parameter("/aws/service/debian/release/12/latest/arm64", arm_ami)
    spec = ec2.parse_spec(spec_text("x", image="debian-12", count=1)
                          .replace("  user: ubuntu\n", ""))
    assert spec.user == "admin"  # Debian's login user
    passed = ec2.dry_run(spec, client=client)
    assert f"debian-12 is {ami} (x86_64), type t3.medium: 2 vCPUs, 1 cores" in passed[0]
    c = do_up(spec, client, hosts, tmp_path)
    assert c.image == ami and ec2.load_records()[0].image == ami
    assert {i["ImageId"] for i in live(client)} == {ami}
    assert {h.user for h in c.inventory.hosts} == {"admin"}
    ec2.down("rwork", client=client)

    arm = ec2.parse_spec(spec_text("x", image="debian-12", count=1, instance_type=ARM_TYPE))
    c = do_up(arm, client, hosts, tmp_path)
    assert c.image == arm_ami  # the arm64 build for an arm64 type
    assert {h.ncore for h in c.inventory.hosts} == {2}  # 2 physical cores


def test_an_image_name_without_a_parameter_says_so(client: Any) -> None:
    spec = ec2.parse_spec(spec_text("x", image="ubuntu-24.04"))
    with pytest.raises(ec2.EC2Error) as e:
        ec2.dry_run(spec, client=client)
    assert e.value.code == "ParameterNotFound"
    assert ("/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/"
            "ami-id") in str(e.value) and "use an AMI id" in str(e.value)


def test_image_and_type_must_share_an_architecture(client: Any, ami: str, arm_ami: str,
                                                   tmp_path: Path) -> None:
    with pytest.raises(LaunchCheckFailed) as e:
        ec2.up(make_spec(ami, instance_type=ARM_TYPE), client=client,
               output=tmp_path / "h.yaml")
    assert e.value.failures == (
        f"the image image {ami} is for x86_64, the instance type {ARM_TYPE} runs arm64: "
        f"choose a x86_64 instance type or an image for arm64",)
    assert nothing_left(client) == {} and not state_files(tmp_path / "state")  # nothing started


def test_the_type_must_be_offered_in_the_subnets_zone(client: Any, ami: str,
                                                      tmp_path: Path) -> None:
    subnets = client.describe_subnets()["Subnets"]
    zone_e = next(s["SubnetId"] for s in subnets if s["AvailabilityZone"] == "us-east-1e")
    with pytest.raises(LaunchCheckFailed) as e:
        ec2.up(make_spec(ami, subnet_ids=(zone_e,)), client=client, output=tmp_path / "h.yaml")
    (line,) = e.value.failures
    assert line.startswith("the instance type t3.medium is not offered in us-east-1e (the "
                           "zones of the subnets); it is offered in us-east-1a, us-east-1b,")
    assert line.endswith("set subnet_id to a subnet there, or choose another type")
    assert nothing_left(client) == {}
    # by default the default subnets of the zones that offer it are used, never 1e
    plan = ec2.plan_launch(client, make_spec(ami))
    assert [s.zone for s in plan.subnets] == ["us-east-1a", "us-east-1b", "us-east-1c",
                                              "us-east-1d", "us-east-1f"]


def test_a_subnet_without_internet_is_found_before_launch(
        moto_url: str, client: Any, ami: str, tmp_path: Path) -> None:
    subnet = client.describe_subnets(Filters=[{"Name": "availability-zone",
                                               "Values": ["us-east-1a"]}])["Subnets"][0]
    client.modify_subnet_attribute(SubnetId=subnet["SubnetId"],
                                   MapPublicIpOnLaunch={"Value": False})
    spec = make_spec(ami, subnet_ids=(subnet["SubnetId"],))
    # no auto-assigned public IPs: up asks for one on the network interface
    assert any("assign no public IPs by themselves" in x
               for x in ec2.plan_launch(client, spec).passed)
    assert ec2.plan_launch(client, make_spec(ami, subnet_ids=(subnet["SubnetId"],),
                                             address="private")).subnets
    # moto's default VPC as it comes, without the internet gateway AWS's have
    bare = ec2.make_client("eu-west-1")
    with pytest.raises(LaunchCheckFailed) as e:
        ec2.plan_launch(bare, make_spec(ami, region="eu-west-1"))
    assert "has no route to an internet gateway (0.0.0.0/0 to igw-...)" in str(e.value)
    assert "or set 'address: private'" in str(e.value)


@pytest.mark.parametrize(("limit", "ok"), [(64.0, True), (7.0, False)])
def test_the_vcpu_quota_is_checked_with_what_runs(
        client: Any, proxy: FaultProxy, ami: str, tmp_path: Path, limit: float,
        ok: bool) -> None:
    client.run_instances(ImageId=ami, InstanceType="t3.medium", MinCount=1, MaxCount=1)
    asked = proxy.add("GetServiceQuota", answer=quota_answer(limit))
    quotas = make_service_client("service-quotas", REGION, endpoint_url=proxy.url)
    spec = make_spec(ami, count=3)  # 3 x 2 vCPUs, and 2 running
    if ok:
        plan = ec2.plan_launch(client, spec, quotas=quotas)
        assert "vCPUs: 6 needed + 2 running <= 64 (L-1216C47A)" in plan.passed
    else:
        with pytest.raises(LaunchCheckFailed) as e:
            ec2.up(spec, client=client, output=tmp_path / "h.yaml", quotas=quotas)
        assert e.value.failures == (
            "3 x t3.medium need 6 vCPUs and 2 are running, but the quota 'Running "
            "On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances' (L-1216C47A) is 7: "
            "ask for more in Service Quotas, end other instances, or start fewer or smaller "
            "ones",)
        assert len(live(client)) == 1  # only the one that ran before
    assert proxy.params("GetServiceQuota") == [{"ServiceCode": "ec2",
                                                "QuotaCode": "L-1216C47A"}]
    assert asked.count == 1
    spot = ec2.plan_launch(client, make_spec(ami, spot=True), quotas=quotas)
    assert spot.passed[-1].endswith("(L-34B43A08)"), spot.passed


def test_a_quota_that_cannot_be_read_is_a_note_not_a_failure(client: Any, ami: str) -> None:
    plan = ec2.plan_launch(client, make_spec(ami))  # moto: NoSuchResourceException
    assert plan.notes == ("the vCPU quota L-1216C47A was not checked "
                          "(NoSuchResourceException): look it up in Service Quotas (EC2)",)
    gpu = ec2.plan_launch(client, make_spec(ami, instance_type="g4dn.xlarge"))
    assert gpu.notes[0].startswith("the vCPU quota of the g4dn family is not checked")


def test_dry_run_shows_every_check(client: Any, ami: str) -> None:
    passed = ec2.dry_run(make_spec(ami), client=client)
    assert passed[0].startswith(f"image {ami} (x86_64), type t3.medium: 2 vCPUs, 1 cores")
    assert passed[1].startswith("t3.medium is offered in the zones of 5 subnet(s)")
    assert passed[1].endswith("public IPs and an internet gateway")
    assert passed[2].startswith("not checked: the vCPU quota L-1216C47A")
    assert passed[-3:] == ("may create a key pair", "may create a security group",
                           "may run 3 x t3.medium")


# --------------------------------------------------------------------------- capacity


UNSUPPORTED_HERE = ("Your requested instance type (t3.medium) is not supported in your "
                    "requested Availability Zone (us-east-1a).")


@pytest.mark.parametrize("code", ["InsufficientInstanceCapacity", "Unsupported",
                                  "InsufficientFreeAddressesInSubnet"])
def test_no_capacity_in_one_zone_tries_the_next(
        client: Any, proxy: FaultProxy, ami: str, hosts: SshHosts, tmp_path: Path,
        code: str) -> None:
    plan = ec2.plan_launch(client, make_spec(ami))
    first, second = plan.subnets[:2]
    refused = proxy.refuse("RunInstances", code, UNSUPPORTED_HERE,
                           when=lambda p: p.get("NetworkInterface.1.SubnetId") == first.id)
    steps: list[ec2.Step] = []
    c = do_up(make_spec(ami, count=3), ec2.make_client(REGION, endpoint_url=proxy.url), hosts,
              tmp_path, batch_size=2, progress=steps.append)
    assert refused.refused == 1  # the first batch there; the second went where it worked
    assert {i["SubnetId"] for i in live(client)} == {second.id}
    assert len(c.instances) == 3
    assert f"{code} in {first.zone}; trying {second.zone} ({second.id})" in [
        s.message for s in steps if s.stage == "note"]
    tokens = [p["ClientToken"] for p in proxy.params("RunInstances")]
    assert len(set(tokens)) == 3  # another subnet is another request


def test_no_capacity_anywhere_names_every_zone_tried_and_cleans_up(
        client: Any, proxy: FaultProxy, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    proxy.refuse("RunInstances", "Unsupported", UNSUPPORTED_HERE)
    with pytest.raises(ec2.EC2Error) as e:
        do_up(make_spec(ami), ec2.make_client(REGION, endpoint_url=proxy.url), hosts, tmp_path)
    text = str(e.value)
    assert text.startswith("RunInstances: no capacity for 3 x t3.medium in any subnet tried:")
    assert text.count(": Unsupported") == 5 + 1
    assert f"AWS said (last): Unsupported: {UNSUPPORTED_HERE}" in text
    assert "describe-instance-type-offerings" in (e.value.hint or "")
    assert "cleaned up: deleted security groups" in text
    assert nothing_left(client) == {}


# --------------------------------------------------------------------------- instances, console


def test_an_instance_that_ends_instead_of_running_says_why(
        client: Any, proxy: FaultProxy, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    # AWS: pending -> terminated, StateReason Client.InternalError (an EBS encryption key
    # the caller may not use, typically). moto cannot end an instance so; the proxy says it.
    reason = (b"<instanceState><code>48</code><name>terminated</name></instanceState>"
              b"<stateReason><code>Client.InternalError</code><message>Client.InternalError: "
              b"Client error on launch</message></stateReason>")
    proxy.add("DescribeInstances", when=lambda p: "InstanceId.1" in p,
              rewrite=lambda body: re.sub(
                  rb"<instanceState><code>16</code><name>running</name></instanceState>",
                  reason, re.sub(rb"<stateReason>.*?</stateReason>", b"", body)))
    with pytest.raises(ec2.EC2Error) as e:
        do_up(make_spec(ami, count=2), ec2.make_client(REGION, endpoint_url=proxy.url), hosts,
              tmp_path)
    assert e.value.code == "Client.InternalError"
    assert str(e.value).startswith("instance i-")
    assert "ended instead of running (2 of 2): Client.InternalError: Client error on launch" \
        in str(e.value)
    assert "KMS" in (e.value.hint or "")
    assert nothing_left(client) == {}


def test_the_console_is_read_latest_first_and_buffered_where_refused(
        client: Any, proxy: FaultProxy, ami: str) -> None:
    (inst,) = client.run_instances(ImageId=ami, InstanceType="t3.medium", MinCount=1,
                                   MaxCount=1)["Instances"]
    proxy.refuse("GetConsoleOutput", "UnsupportedOperation", "Latest is only for Nitro",
                 when=lambda p: p.get("Latest") == "true")
    read = console_reader(ec2.make_client(REGION, endpoint_url=proxy.url))
    read(inst["InstanceId"])
    read(inst["InstanceId"])
    asked = [p.get("Latest") for p in proxy.params("GetConsoleOutput")]
    assert asked == ["true", None, None]  # refused once, then the buffered output only
    assert [p.get("Latest") for p in proxy.params("GetConsoleOutput")] == asked


def test_every_console_is_polled_in_one_round(client: Any, ami: str, hosts: SshHosts,
                                              tmp_path: Path) -> None:
    # Three consoles that each answer only once all three are being read at once.
    address_of, console_text = hosts.seams()
    together = threading.Barrier(3, timeout=10)

    def slow_console(instance_id: str) -> str:
        together.wait()
        return console_text(instance_id)

    c = ec2.up(make_spec(ami, count=3), client=client, output=tmp_path / "h.yaml",
               address_of=address_of, console_text=slow_console, timeout=20, poll=0.1,
               setup_timeout=10)
    assert len(c.instances) == 3


# --------------------------------------------------------------------------- ready, inventory


def test_up_waits_for_the_setup_of_every_instance(client: Any, ami: str, hosts: SshHosts,
                                                  tmp_path: Path) -> None:
    hosts.status[:3] = ["running"] * 3
    steps: list[ec2.Step] = []

    def progress(step: ec2.Step) -> None:
        # The setups finish only once up has reported that it waits for them (a timer
        # raced a slow up on a busy machine).
        steps.append(step)
        if step.stage == "setup":
            hosts.status[:3] = ["ready R version 4.2.2 (2022-10-31)"] * 3

    try:
        c = do_up(make_spec(ami, r_packages=("foreach",)), client, hosts, tmp_path,
                  progress=progress)
    finally:
        hosts.status[:] = ["ready R version 4.2.2 (2022-10-31)"] * len(hosts.status)
    setup = [s for s in steps if s.stage == "setup"]
    assert setup[0].done == 0 and setup[-1].done == setup[-1].total == 3
    assert setup[0].message == "waiting for the setup: R and 1 R package"
    assert c.ready and c.inventory.r_packages == ("foreach",)
    assert "cat /var/lib/sshcluster/status" in hosts.commands[-1]


@pytest.mark.parametrize("keep", [False, True])
def test_a_failed_setup_shows_its_log_and_ends_the_cluster(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path, keep: bool) -> None:
    hosts.status[1] = ("failed: the setup script exited with status 3\n"
                       "E: Unable to locate package r-cran-nosuch\nexit 3")
    try:
        with pytest.raises(ec2.SetupFailed) as e:
            do_up(make_spec(ami, count=2), client, hosts, tmp_path, keep_on_failure=keep)
    finally:
        hosts.status[1] = hosts.status[0]
    text = str(e.value)
    (failed,) = e.value.failures
    assert text.startswith("the setup failed on 1 of 2 instances:\n"
                           f"{failed}: the setup script exited with status 3\n"
                           "  | E: Unable to locate package r-cran-nosuch\n  | exit 3\n")
    if keep:
        assert "kept (--keep-on-failure) to look at; 'sshcluster ec2 down rwork' ends it" in text
        assert len(live(client)) == 2 and [r.status for r in ec2.load_records()] == ["up"]
        assert (tmp_path / "hosts.yaml").exists()
    else:
        assert "up rwork failed; cleaned up: terminated: i-" in text
        assert nothing_left(client) == {} and not (tmp_path / "hosts.yaml").exists()


def test_no_wait_returns_without_asking_the_setup(client: Any, ami: str, hosts: SshHosts,
                                                  tmp_path: Path) -> None:
    hosts.status[0] = "running"
    before = len(hosts.commands)
    try:
        c = do_up(make_spec(ami, count=1), client, hosts, tmp_path, wait=False)
    finally:
        hosts.status[0] = hosts.status[1]
    assert not c.ready and len(hosts.commands) == before


def test_the_inventory_works_from_where_the_primary_is(client: Any, ami: str, hosts: SshHosts,
                                                       tmp_path: Path) -> None:
    c = do_up(make_spec(ami, count=2, primary="first"), client, hosts, tmp_path)
    data = yaml.safe_load((tmp_path / "hosts.yaml").read_text())
    private = [i.private_ip for i in c.instances]
    assert [h["host"] for h in data["hosts"]] == private  # the group allows members
    assert data["primary"]["host"] == private[0] and "tunnel" not in data
    names = {line.split()[0] for line in c.known_hosts.read_text().splitlines()}
    assert set(private) <= names  # the first instance verifies the others by those names
    ec2.down("rwork", client=client)

    do_up(make_spec(ami, count=1), client, hosts, tmp_path)
    data = yaml.safe_load((tmp_path / "hosts.yaml").read_text())
    assert data["tunnel"] == "reverse" and data["primary"] == {"host": "auto"}
    assert data["hosts"][0]["ncore"] == 1  # t3.medium: 1 physical core (2 vCPUs)
