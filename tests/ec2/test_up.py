"""``up`` against moto: what it starts, tags, writes and cleans up; the context manager."""

from __future__ import annotations

import base64
import shlex
import socket
import stat
import subprocess
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from sshcluster import ec2
from sshcluster.ec2.records import process_start, save_record
from sshcluster.errors import EC2Error, InventoryError, OutputExistsError
from sshcluster.inventory import load_inventory

from .helpers import HAND_WRITTEN, SshHosts, do_up, live, make_spec, nothing_left, state_files


def test_up_writes_an_inventory_check_can_read(client: Any, ami: str, hosts: SshHosts,
                                              tmp_path: Path) -> None:
    steps: list[ec2.Step] = []
    c = do_up(make_spec(ami, ncore="vcpus"), client, hosts, tmp_path, progress=steps.append)
    assert len(c.instances) == 3 and all(i.state == "running" for i in c.instances)

    inv = load_inventory(tmp_path / "hosts.yaml")
    assert [(h.host, h.ssh_port) for h in inv.hosts] == [
        ("127.0.0.1", p) for p in hosts.ports[:3]]
    assert {h.ncore for h in inv.hosts} == {2}  # t3.medium: 2 vCPU (DescribeInstanceTypes)
    assert {h.user for h in inv.hosts} == {"ubuntu"}
    assert inv.known_hosts == str(tmp_path / "rwork.known_hosts")
    assert inv.primary.host == "auto"

    # known_hosts holds exactly the keys the console showed, under the reached address
    lines = (tmp_path / "rwork.known_hosts").read_text().splitlines()
    assert lines == [f"[127.0.0.1]:{hosts.ports[i]} ssh-ed25519 {hosts.public(i)}"
                     for i in range(3)]

    # created key pair: private key 0600 next to the inventory, used as identity_file
    key_file = tmp_path / "rwork.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().startswith("-----BEGIN")
    assert {h.identity_file for h in inv.hosts} == {str(key_file)}

    stages = [s.stage for s in steps if s.stage != "note"]
    assert stages[0] == "launch" and stages[-1] == "done"
    assert {"running", "ssh", "hostkeys"} <= set(stages)


def test_everything_is_tagged_and_set_to_end_itself(client: Any, ami: str, hosts: SshHosts,
                                                   tmp_path: Path) -> None:
    c = do_up(make_spec(ami, count=2), client, hosts, tmp_path, owner="alice@laptop")
    expected = {"sshcluster:cluster": "rwork", "sshcluster:owner": "alice@laptop",
                "sshcluster:expires": ec2.format_time(c.expires), "sshcluster:run": c.run_id}
    for inst in live(client, **{"sshcluster:cluster": "rwork"}):
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert expected.items() <= tags.items()
        attr = client.describe_instance_attribute(
            InstanceId=inst["InstanceId"], Attribute="instanceInitiatedShutdownBehavior")
        assert attr["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
        assert inst["ClientToken"] == ec2.client_token("rwork", c.run_id, 0)
        data = client.describe_instance_attribute(InstanceId=inst["InstanceId"],
                                                  Attribute="userData")
        assert "shutdown -h" in base64.b64decode(
            data["UserData"]["Value"]).decode()
    lifetime = c.expires - ec2.utcnow()
    assert timedelta(hours=1, minutes=59) < lifetime <= timedelta(hours=2)

    tag_filter = [{"Name": "tag:sshcluster:cluster", "Values": ["rwork"]}]
    groups = client.describe_security_groups(Filters=tag_filter)["SecurityGroups"]
    assert len(groups) == 1
    perms = groups[0]["IpPermissions"]
    ssh = next(p for p in perms if p["FromPort"] == 22)
    assert [r["CidrIp"] for r in ssh["IpRanges"]] == ["203.0.113.7/32"]
    r_port = next(p for p in perms if p["FromPort"] == 11000)
    assert r_port["ToPort"] == 11999 and not r_port["IpRanges"]
    assert [g["GroupId"] for g in r_port["UserIdGroupPairs"]] == [groups[0]["GroupId"]]
    pairs = client.describe_key_pairs(Filters=tag_filter)["KeyPairs"]
    assert len(pairs) == 1


def test_existing_key_pair_and_security_group_are_used_and_kept(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    key = tmp_path / "mine.pem"
    key.write_text(client.create_key_pair(KeyName="mine")["KeyMaterial"])
    group = client.create_security_group(GroupName="mine", Description="mine")["GroupId"]
    spec = make_spec(ami, count=1, key_name="mine", security_group_id=group,
                     identity_file=str(key), ssh_cidr=())
    c = do_up(spec, client, hosts, tmp_path, wait=False)  # no key to read the setup with
    (inst,) = live(client)
    assert inst["KeyName"] == "mine"
    # on the network interface, where up asks for a public IP (moto shows the groups
    # only there; AWS on the instance too)
    (interface,) = inst["NetworkInterfaces"]
    assert [g["GroupId"] for g in interface["Groups"]] == [group]
    assert c.key_file is None and not (tmp_path / "rwork.pem").exists()
    assert c.inventory.hosts[0].identity_file == str(key)
    report = ec2.down("rwork", client=client)
    assert report.deleted_key_pairs == () and report.deleted_security_groups == ()
    assert client.describe_key_pairs(KeyNames=["mine"])["KeyPairs"]
    assert client.describe_security_groups(GroupIds=[group])["SecurityGroups"]


def test_spot_instances_and_their_requests(client: Any, ami: str, hosts: SshHosts,
                                           tmp_path: Path) -> None:
    # Spot goes through RunInstances' InstanceMarketOptions (one-time, terminate). moto
    # marks such instances as spot but keeps no spot request for them, so the request a
    # real EC2 would keep (or a persistent one left by other tools) is made here with
    # RequestSpotInstances, tagged as the cluster's, to check that down cancels it.
    c = do_up(make_spec(ami, count=2, spot=True), client, hosts, tmp_path)
    assert all(i.spot for i in c.instances)
    tags = [{"Key": "sshcluster:cluster", "Value": "rwork"},
            {"Key": "sshcluster:owner", "Value": ec2.default_owner()}]
    request = client.request_spot_instances(
        InstanceCount=1, Type="persistent",
        LaunchSpecification={"ImageId": ami, "InstanceType": "t3.medium"},
        TagSpecifications=[{"ResourceType": "spot-instances-request", "Tags": tags}],
    )["SpotInstanceRequests"][0]["SpotInstanceRequestId"]

    report = ec2.down("rwork", client=client)
    assert report.cancelled_spot_requests == (request,)
    open_requests = client.describe_spot_instance_requests(
        Filters=[{"Name": "state", "Values": ["open", "active"]}])["SpotInstanceRequests"]
    assert open_requests == []
    assert live(client, **{"sshcluster:cluster": "rwork"}) == []


def test_a_retried_up_does_not_start_a_second_fleet(client: Any, ami: str, hosts: SshHosts,
                                                   tmp_path: Path) -> None:
    # moto does not implement ClientToken idempotency (a repeated token starts new
    # instances there), so this checks sshcluster's own side: a retried up continues the
    # recorded run with the same ClientTokens instead of starting anything new.
    spec = make_spec(ami, count=3)
    first = do_up(spec, client, hosts, tmp_path, batch_size=2)
    second = do_up(spec, client, hosts, tmp_path, batch_size=2)
    assert second.run_id == first.run_id
    assert [i.id for i in second.instances] == [i.id for i in first.instances]
    assert len(live(client)) == 3
    tokens = {i["InstanceId"]: i["ClientToken"] for i in live(client)}
    assert sorted(set(tokens.values())) == sorted(
        ec2.client_token("rwork", first.run_id, b) for b in (0, 1))


def test_a_failed_retry_leaves_a_finished_cluster_alone(client: Any, ami: str,
                                                       hosts: SshHosts, tmp_path: Path) -> None:
    first = do_up(make_spec(ami, count=2), client, hosts, tmp_path)
    with pytest.raises(EC2Error, match="left as it was"):
        ec2.up(make_spec(ami, count=2), client=client, output=tmp_path / "hosts.yaml",
               address_of=lambda i: ec2.Endpoint("127.0.0.1", 9), timeout=1, poll=0.1)
    assert sorted(i["InstanceId"] for i in live(client)) == sorted(
        i.id for i in first.instances)
    assert (tmp_path / "rwork.pem").exists()
    assert [r.status for r in ec2.load_records()] == ["up"]


def test_an_up_of_a_cluster_whose_up_still_runs_here_is_refused(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    """Another up of the same cluster runs on this machine (its record says starting,
    its process lives): a second up neither continues its run nor, failing, ends what
    that one is starting; it refuses and touches nothing."""
    first = do_up(make_spec(ami, count=1), client, hosts, tmp_path)
    other = subprocess.Popen(["sleep", "60"])
    try:
        identity = {"host": socket.gethostname(), "pid": str(other.pid),
                    "start": process_start(other.pid) or ""}
        (record,) = ec2.load_records()
        save_record(tmp_path / "state", replace(record, status="starting", process=identity))
        with pytest.raises(EC2Error, match=f"still running on this machine .pid {other.pid}"):
            do_up(make_spec(ami, count=2), client, hosts, tmp_path)
        assert [i["InstanceId"] for i in live(client)] == [i.id for i in first.instances]
        assert ec2.load_records()[0].process == identity
    finally:
        other.kill()
        other.wait()
    # once that process is gone, the run is continued as before
    second = do_up(make_spec(ami, count=1), client, hosts, tmp_path)
    assert second.run_id == first.run_id


def test_a_cluster_of_another_run_is_not_adopted(client: Any, ami: str, hosts: SshHosts,
                                                tmp_path: Path) -> None:
    do_up(make_spec(ami, count=1), client, hosts, tmp_path)
    for record in state_files(tmp_path / "state"):
        record.unlink()  # as if started from another machine
    with pytest.raises(EC2Error, match="already has 1 instance") as e:
        do_up(make_spec(ami, count=1), client, hosts, tmp_path)
    assert "ec2 down rwork" in str(e.value)
    assert len(live(client)) == 1  # and the refusal removed nothing


def test_dry_run_starts_nothing(client: Any, ami: str) -> None:
    passed = ec2.dry_run(make_spec(ami, spot=True), client=client)
    assert any("may run 3" in p for p in passed)
    assert nothing_left(client) == {}
    assert client.describe_key_pairs()["KeyPairs"] == []
    names = [g["GroupName"] for g in client.describe_security_groups()["SecurityGroups"]]
    assert names == ["default"]


def test_a_key_file_that_cannot_be_read_is_refused_before_anything_starts(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    """key_name with an identity_file that is not there: refused at once (exit 2 from the
    CLI), instead of a fleet waiting out the setup's deadline for logins that cannot
    work."""
    spec = make_spec(ami, key_name="mine", identity_file=str(tmp_path / "missing.pem"))
    with pytest.raises(InventoryError, match=r"missing\.pem cannot be read here") as e:
        do_up(spec, client, hosts, tmp_path)
    assert "key pair mine" in str(e.value.hint) and e.value.exit_code == 2
    assert e.value.field == "ec2.identity_file"
    assert nothing_left(client) == {} and state_files(tmp_path / "state") == []


def test_the_context_manager_ends_everything_on_an_exception(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    address_of, console_text = hosts.seams()
    with pytest.raises(ZeroDivisionError), ec2.cluster(
            make_spec(ami, count=2), client=client, output=tmp_path / "hosts.yaml",
            address_of=address_of, console_text=console_text, timeout=20, poll=0.1) as c:
        assert len(live(client)) == 2 == len(c.instances)
        1 / 0  # noqa: B018 - the failure inside the block
    assert nothing_left(client) == {}
    assert client.describe_key_pairs()["KeyPairs"] == []


def test_unreadable_host_keys_fail_with_a_hint_and_clean_up(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    address_of, _ = hosts.seams()
    with pytest.raises(EC2Error) as e:
        # the default console reader: moto's console output has no host keys, so up
        # waits out its deadline; long enough for the SSH servers to have answered on a
        # busy machine (1.5 s was not: the error then named SSH instead)
        ec2.up(make_spec(ami, count=2), client=client, output=tmp_path / "hosts.yaml",
               address_of=address_of, timeout=6, poll=0.1)
    assert "could not be read from their console output" in str(e.value)
    assert "--accept-new" in str(e.value)
    assert "cleaned up: terminated" in str(e.value)
    assert nothing_left(client) == {}
    assert not (tmp_path / "hosts.yaml").exists() and not (tmp_path / "rwork.pem").exists()


def test_accept_new_records_the_key_shown_on_first_connection(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    address_of, _ = hosts.seams()
    c = ec2.up(make_spec(ami, count=2), client=client, output=tmp_path / "hosts.yaml",
               address_of=address_of, accept_new=True, timeout=20, poll=0.1)
    lines = c.known_hosts.read_text().splitlines()
    assert lines == [f"[127.0.0.1]:{hosts.ports[i]} ssh-ed25519 {hosts.public(i)}"
                     for i in range(2)]


def test_up_output_is_plain_yaml(client: Any, ami: str, hosts: SshHosts,
                                 tmp_path: Path) -> None:
    c = do_up(make_spec(ami, count=1, port=11234, primary="first"), client, hosts, tmp_path)
    text = (tmp_path / "hosts.yaml").read_text()
    assert text.startswith("# Written by 'sshcluster ec2 up' for cluster rwork")
    data = yaml.safe_load(text)
    assert data["port"] == 11234
    assert data["primary"]["host"] == c.instances[0].private_ip  # the first instance


@pytest.mark.parametrize(("primary", "user"), [("auto", None), ("203.0.113.9", None),
                                               ("first", "ubuntu")])
def test_primary_user_only_when_the_primary_is_an_instance(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path, primary: str,
        user: str | None) -> None:
    # primary.user is who the workers ssh back to on the primary: the image's login user
    # is right only when the primary is one of the instances ('first'); 'auto' or an
    # address is a machine outside the cluster, usually this one.
    c = do_up(make_spec(ami, count=1, primary=primary), client, hosts, tmp_path)
    data = yaml.safe_load((tmp_path / "hosts.yaml").read_text())
    assert data["primary"].get("user") == user
    assert c.inventory.primary.user == user
    assert data["hosts"][0]["user"] == "ubuntu"


def test_next_steps_are_the_commands_that_work(tmp_path: Path) -> None:
    assert ec2.next_steps("hosts.yaml") == (
        "sshcluster render hosts.yaml --check -o cluster.R",
        "Rscript -e 'source(\"cluster.R\"); print(parallelCluster)'")
    odd = tmp_path / "it's here" / "h.yaml"
    render, rscript = ec2.next_steps(odd)
    assert shlex.split(render) == ["sshcluster", "render", str(odd), "--check", "-o",
                                   str(odd.parent / "cluster.R")]
    assert shlex.split(rscript)[2] == (
        f'source("{odd.parent}/cluster.R"); print(parallelCluster)')
    # primary: first: the inventory is complete, no check from here, R runs there
    render, note = ec2.next_steps("hosts.yaml", primary_instance="10.0.0.5")
    assert render == "sshcluster render hosts.yaml -o cluster.R"
    assert note.startswith("# ") and "10.0.0.5" in note


@pytest.mark.parametrize("existing", [
    HAND_WRITTEN,
    "# Written by 'sshcluster ec2 up' for cluster other in us-east-1 (run 0123).\nhosts: []\n",
    "# Written by 'sshcluster ec2 up' for cluster rwork in us-west-2 (run 0123).\nhosts: []\n",
], ids=["hand-written", "another-cluster", "same-name-another-region"])
def test_up_leaves_a_file_it_did_not_write_for_this_cluster_alone(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path, existing: str) -> None:
    output = tmp_path / "hosts.yaml"
    output.write_text(existing)
    with pytest.raises(OutputExistsError) as e:
        do_up(make_spec(ami, count=1), client, hosts, tmp_path)
    assert e.value.path == str(output) and e.value.exit_code == 2
    assert "not overwritten, nothing started" in str(e.value)
    assert output.read_text() == existing
    assert nothing_left(client) == {}
    assert not state_files(tmp_path / "state") and not (tmp_path / "rwork.pem").exists()

    c = do_up(make_spec(ami, count=1), client, hosts, tmp_path, overwrite=True)
    assert load_inventory(output).hosts[0].ssh_port == c.endpoints[0].port


def test_up_rewrites_its_own_inventory_of_the_same_cluster(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    first = do_up(make_spec(ami, count=1), client, hosts, tmp_path)
    retried = do_up(make_spec(ami, count=1), client, hosts, tmp_path)  # continues the run
    assert retried.run_id == first.run_id
    ec2.down("rwork", client=client)
    again = do_up(make_spec(ami, count=1), client, hosts, tmp_path)  # a new run
    assert again.run_id != first.run_id
    assert f"(run {again.run_id})" in (tmp_path / "hosts.yaml").read_text()
