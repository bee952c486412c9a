"""What a real account answers and moto does not, through the fault proxy: an instance
reclaimed while ``up`` waits, refusals that are not capacity, subnets without public
addresses, Xen instance types, private subnets without a route out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sshcluster import ec2
from sshcluster.ec2.wait import console_reader
from sshcluster.errors import EC2Error

from .faults import FaultProxy
from .helpers import READY, REGION, SshHosts, do_up, live, make_spec

SPOT_REASON = "Server.SpotInstanceTermination: Spot instance termination"


def first_terminated(xml: bytes) -> bytes:
    """A DescribeInstances answer whose first instance AWS has just reclaimed."""
    return xml.replace(
        b"<stateReason><code/><message/></stateReason>",
        f"<stateReason><code>Server.SpotInstanceTermination</code><message>{SPOT_REASON}"
        "</message></stateReason>".encode(), 1).replace(
        b"<instanceState><code>16</code><name>running</name></instanceState>",
        b"<instanceState><code>48</code><name>terminated</name></instanceState>", 1)


def test_an_instance_terminated_while_up_waits_fails_up_at_the_next_poll(
        client: Any, proxy: FaultProxy, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    via_proxy = ec2.make_client(REGION, endpoint_url=proxy.url)
    steps: list[ec2.Step] = []

    def progress(step: ec2.Step) -> None:
        steps.append(step)
        if step.stage == "setup" and not proxy.rules:
            proxy.add("DescribeInstances", rewrite=first_terminated)

    hosts.status[:2] = ["running"] * 2  # the setup goes on: up waits
    try:
        with pytest.raises(EC2Error) as e:
            do_up(make_spec(ami, count=2), via_proxy, hosts, tmp_path, progress=progress,
                  setup_timeout=60)
    finally:
        hosts.status[:2] = [READY] * 2
    assert e.value.code == "Server.SpotInstanceTermination"
    assert "went terminated while up waited: " + SPOT_REASON in str(e.value)
    assert "try again, or use 'spot: false'" in (e.value.hint or "")
    # one round of the setup's wait, then the next describe ended it
    assert [s.stage for s in steps].count("setup") == 1
    assert "failed; cleaned up: terminated: i-" in str(e.value)
    assert live(client) == []


def test_an_instance_without_a_scheduled_shutdown_fails_up_and_is_cleaned_up(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    hosts.armed[1] = False  # its image did not run the dead man's switch, or shutdown failed
    try:
        with pytest.raises(EC2Error) as e:
            # not a failed setup: --keep-on-failure must not keep it
            do_up(make_spec(ami, count=2), client, hosts, tmp_path, keep_on_failure=True)
    finally:
        hosts.armed[1] = True
    assert e.value.code == "LifetimeNotArmed"
    assert "1 of 2 instances have no scheduled shutdown" in str(e.value)
    assert "failed; cleaned up: terminated: i-" in str(e.value)
    assert live(client) == []


def test_a_subnet_without_auto_assigned_public_ips_gets_one_asked_for(
        client: Any, proxy: FaultProxy, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    subnet = client.describe_subnets(Filters=[{"Name": "availability-zone",
                                               "Values": ["us-east-1a"]}])["Subnets"][0]
    client.modify_subnet_attribute(SubnetId=subnet["SubnetId"],
                                   MapPublicIpOnLaunch={"Value": False})
    via_proxy = ec2.make_client(REGION, endpoint_url=proxy.url)
    c = do_up(make_spec(ami, count=2, subnet_ids=(subnet["SubnetId"],)), via_proxy, hosts,
              tmp_path)
    (request,) = proxy.params("RunInstances")
    assert request["NetworkInterface.1.AssociatePublicIpAddress"] == "true"
    assert request["NetworkInterface.1.SubnetId"] == subnet["SubnetId"]
    assert request["NetworkInterface.1.SecurityGroupId.1"].startswith("sg-")
    assert "SubnetId" not in request and "SecurityGroupId.1" not in request
    assert all(i["SubnetId"] == subnet["SubnetId"] and i.get("PublicIpAddress")
               for i in live(client))
    ec2.down(c.name, client=client)


def test_unsupported_that_is_not_the_zone_fails_at_once_with_aws_words(
        client: Any, proxy: FaultProxy, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    said = ("The requested configuration is currently not supported. Please check the "
            "documentation for supported configurations.")
    proxy.refuse("RunInstances", "Unsupported", said)
    with pytest.raises(EC2Error) as e:
        do_up(make_spec(ami), ec2.make_client(REGION, endpoint_url=proxy.url), hosts, tmp_path)
    assert len(proxy.params("RunInstances")) == 1  # no other subnet changes that
    assert str(e.value).startswith(f"RunInstances: Unsupported: {said}")
    assert e.value.hint is None  # not "the type is not offered in that zone"
    assert live(client) == []


def test_any_refusal_of_latest_falls_back_to_the_buffered_console(
        client: Any, proxy: FaultProxy, ami: str) -> None:
    (inst,) = client.run_instances(ImageId=ami, InstanceType="t2.medium", MinCount=1,
                                   MaxCount=1)["Instances"]
    proxy.refuse("GetConsoleOutput", "OperationNotPermitted", "not on this instance type",
                 when=lambda p: p.get("Latest") == "true")  # a code nobody guessed
    read = console_reader(ec2.make_client(REGION, endpoint_url=proxy.url))
    read(inst["InstanceId"])
    read(inst["InstanceId"])
    assert [p.get("Latest") for p in proxy.params("GetConsoleOutput")] == ["true", None, None]


def test_a_xen_type_is_warned_about_before_launch(client: Any, ami: str) -> None:
    plan = ec2.plan_launch(client, make_spec(ami, instance_type="t2.medium"))
    (warning,) = plan.warnings
    assert warning.startswith("t2.medium is a Xen type: its console output is buffered")
    assert ec2.plan_launch(client, make_spec(ami)).warnings == ()  # t3: Nitro


def test_a_private_subnet_without_a_way_out_is_warned_about(client: Any, ami: str) -> None:
    # the default VPC with its internet gateway and public IPs: the setup reaches out
    assert ec2.plan_launch(client, make_spec(ami, address="private")).warnings == ()
    # moto's default VPC as it comes: no route out at all
    bare = ec2.make_client("eu-west-1")
    spec = make_spec(ami, region="eu-west-1", address="private", r_packages=("foreach",))
    (warning,) = ec2.plan_launch(bare, spec).warnings
    assert "reaches the internet (0.0.0.0/0 to a NAT gateway" in warning
    assert "the image must already have R and foreach; or add a NAT gateway" in warning
    # a NAT gateway for 0.0.0.0/0: no warning
    vpc = bare.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnet = bare.describe_subnets()["Subnets"][0]["SubnetId"]
    eip = bare.allocate_address(Domain="vpc")["AllocationId"]
    nat = bare.create_nat_gateway(SubnetId=subnet, AllocationId=eip)["NatGateway"]
    (main,) = bare.describe_route_tables(Filters=[
        {"Name": "vpc-id", "Values": [vpc]},
        {"Name": "association.main", "Values": ["true"]}])["RouteTables"]
    bare.create_route(RouteTableId=main["RouteTableId"], DestinationCidrBlock="0.0.0.0/0",
                      NatGatewayId=nat["NatGatewayId"])
    assert ec2.plan_launch(bare, spec).warnings == ()
