"""EC2 lifecycle against moto's EC2 server over HTTP on 127.0.0.1 (never real AWS).

What stands in for what:
- EC2 is moto's server (``ThreadedMotoServer``), reached by boto3 through
  ``AWS_ENDPOINT_URL``; it is reset through ``/moto-api/reset`` before each test.
- The instances' sshd are small asyncssh servers on 127.0.0.1, one per instance, reached
  through ``up``'s ``address_of`` seam (moto's instance IPs are made up).
- moto's console output holds no host keys, so ``up`` gets console text through its
  ``console_text`` seam (a realistic cloud-init block with the test server's real key), or
  uses ``accept_new`` (the key is then scanned from the test server).
- Faults: a small HTTP proxy on 127.0.0.1 in front of moto refuses the Nth RunInstances.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import shlex
import stat
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncssh
import boto3
import botocore.exceptions
import pytest
import yaml
from botocore.parsers import ResponseParserError
from click.testing import CliRunner
from conftest import REGION

from sshcluster import ec2
from sshcluster.cli import cli
from sshcluster.ec2spec import EC2Spec, parse_spec, user_data
from sshcluster.errors import EC2Error, InventoryError, OutputExistsError
from sshcluster.inventory import load_inventory

# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def client(moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset",
                                                  method="POST")).read()
    monkeypatch.setenv("SSHCLUSTER_STATE_DIR", str(tmp_path / "state"))
    return ec2.make_client(REGION)


@pytest.fixture(scope="session")
def ubuntu_ami(moto_url: str) -> str:
    # moto's stock images are the same after every reset; listing them is slow, so once.
    images = ec2.make_client(REGION).describe_images(
        Owners=["amazon"], Filters=[{"Name": "name", "Values": ["*ubuntu*"]}])
    return str(images["Images"][0]["ImageId"])


@pytest.fixture
def ami(client: Any, ubuntu_ami: str) -> str:
    return ubuntu_ami


def make_spec(ami: str, **changes: Any) -> EC2Spec:
    base = EC2Spec(name="rwork", region=REGION, image=ami, instance_type="t3.medium",
                   count=3, user="ubuntu", max_lifetime=timedelta(hours=2),
                   ssh_cidr=("203.0.113.7/32",), setup="apt-get install -y r-base-core\n")
    return replace(base, **changes)


class SshHosts:
    """asyncssh servers on 127.0.0.1, one per instance: SSH banner and a real host key."""

    def __init__(self, n: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.keys = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(n)]
        self.servers = [self._run(self._listen(k)) for k in self.keys]
        self.ports = [s.sockets[0].getsockname()[1] for s in self.servers]

    @staticmethod
    async def _listen(key: asyncssh.SSHKey) -> asyncssh.SSHAcceptor:
        return await asyncssh.listen("127.0.0.1", 0, server_host_keys=[key])

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        for s in self.servers:
            s.close()
            self._run(s.wait_closed())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def public(self, i: int) -> str:
        return self.keys[i].export_public_key("openssh").decode().split()[1]

    def seams(self) -> tuple[ec2.AddressOf, ec2.ConsoleText]:
        """``address_of`` mapping instances onto these servers in order, and a console
        that prints each server's real key the way cloud-init does."""
        assigned: dict[str, int] = {}

        def address_of(inst: ec2.Instance) -> ec2.Endpoint:
            index = assigned.setdefault(inst.id, len(assigned))
            return ec2.Endpoint("127.0.0.1", self.ports[index])

        def console_text(instance_id: str) -> str:
            key = self.public(assigned[instance_id])
            return ("[   11.9] cloud-init[564]: Generating public/private ed25519 key pair.\r\n"
                    "-----BEGIN SSH HOST KEY KEYS-----\r\n"
                    f"ssh-ed25519 {key} root@ip-172-31-20-5\r\n"
                    "-----END SSH HOST KEY KEYS-----\r\n")

        return address_of, console_text


@pytest.fixture(scope="session")
def hosts() -> Iterator[SshHosts]:
    h = SshHosts(4)
    yield h
    h.close()


def live(client: Any, **tags: str) -> list[dict[str, Any]]:
    filters = [{"Name": "instance-state-name",
                "Values": ["pending", "running", "stopping", "stopped", "shutting-down"]}]
    filters += [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
    pages = client.get_paginator("describe_instances").paginate(Filters=filters)
    return [i for p in pages for r in p["Reservations"] for i in r["Instances"]]


def use_seams_in_cli(hosts: SshHosts, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point ``sshcluster ec2 up`` at the local SSH servers: the CLI takes up's default
    seams, so they are replaced where up looks them up (never moto's made-up IPs)."""
    address_of, console_text = hosts.seams()
    monkeypatch.setattr(ec2, "default_address", lambda spec: address_of)
    monkeypatch.setattr(ec2, "_console_reader", lambda client: console_text)


def spec_text(ami: str, **fields: Any) -> str:
    """A spec file for moto: the image ``ami``, t3.medium, and ``fields`` over SPEC's."""
    text = SPEC.replace("ami-0123456789abcdef0", ami).replace("c7i.large", "t3.medium")
    for key, value in fields.items():
        lines = [x for x in text.splitlines(keepends=True) if not x.startswith(f"  {key}:")]
        text = "".join(lines) + f"  {key}: {value}\n"
    return text


def do_up(spec: EC2Spec, client: Any, hosts: SshHosts, tmp_path: Path,
          **kwargs: Any) -> ec2.Cluster:
    address_of, console_text = hosts.seams()
    options: dict[str, Any] = {"address_of": address_of, "console_text": console_text,
                               "timeout": 20, "poll": 0.1, **kwargs}
    return ec2.up(spec, client=client, output=tmp_path / "hosts.yaml", **options)


# --------------------------------------------------------------------------- lifecycle


def test_up_writes_an_inventory_check_can_read(client: Any, ami: str, hosts: SshHosts,
                                              tmp_path: Path) -> None:
    steps: list[ec2.Step] = []
    c = do_up(make_spec(ami), client, hosts, tmp_path, progress=steps.append)
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

    stages = [s.stage for s in steps]
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
        assert "shutdown -h" in __import__("base64").b64decode(
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


def test_user_data_arms_the_dead_mans_switch_before_the_setup(ami: str) -> None:
    spec = make_spec(ami, setup="#!/bin/bash\nset -e\napt-get install -y r-base-core\n")
    expires = ec2.utcnow() + timedelta(hours=2)
    text = user_data(spec, expires)
    assert text.startswith("#!/bin/sh\n")
    assert f"expires={int(expires.timestamp())}" in text
    assert text.index("shutdown -h") < text.index("apt-get install")
    assert "/var/lib/cloud/scripts/per-boot/" in text  # re-armed after a reboot


def test_ls_down_and_down_again(client: Any, ami: str, hosts: SshHosts,
                                tmp_path: Path) -> None:
    c = do_up(make_spec(ami, count=2), client, hosts, tmp_path)
    ids = sorted(i.id for i in c.instances)
    client.stop_instances(InstanceIds=[ids[0]])  # a stopped instance must not escape

    (status,) = ec2.list_clusters(client=client)
    assert status.name == "rwork" and status.known
    assert sorted(i.id for i in status.live) == ids
    assert {i.state for i in status.instances} == {"running", "stopped"}
    data = status.to_dict(ec2.utcnow())
    assert 0 < data["time_left_seconds"] <= 7200
    assert all(i["age_seconds"] >= 0 for i in data["instances"])

    report = ec2.down("rwork", client=client)
    assert sorted(report.terminated) == ids
    assert len(report.deleted_security_groups) == 1
    assert len(report.deleted_key_pairs) == 1
    assert report.removed_files == (str(tmp_path / "rwork.pem"),)
    assert live(client) == []
    tag_filter = [{"Name": "tag:sshcluster:cluster", "Values": ["rwork"]}]
    assert client.describe_security_groups(Filters=tag_filter)["SecurityGroups"] == []
    assert client.describe_key_pairs(Filters=tag_filter)["KeyPairs"] == []
    (status,) = ec2.list_clusters(client=client)  # terminated instances are still listed
    assert not status.live and not status.known

    again = ec2.down("rwork", client=client)
    assert again.summary() == "nothing left to remove" and again.found
    assert not ec2.down("rwrok", client=client).found  # never was a cluster


def test_existing_key_pair_and_security_group_are_used_and_kept(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    client.create_key_pair(KeyName="mine")
    group = client.create_security_group(GroupName="mine", Description="mine")["GroupId"]
    spec = make_spec(ami, count=1, key_name="mine", security_group_id=group,
                     identity_file="/home/me/.ssh/mine.pem", ssh_cidr=())
    c = do_up(spec, client, hosts, tmp_path)
    (inst,) = live(client)
    assert inst["KeyName"] == "mine"
    assert [g["GroupId"] for g in inst["SecurityGroups"]] == [group]
    assert c.key_file is None and not (tmp_path / "rwork.pem").exists()
    assert c.inventory.hosts[0].identity_file == "/home/me/.ssh/mine.pem"
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
    tags = [{"Key": "sshcluster:cluster", "Value": "rwork"}]
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


def test_a_cluster_of_another_run_is_not_adopted(client: Any, ami: str, hosts: SshHosts,
                                                tmp_path: Path) -> None:
    do_up(make_spec(ami, count=1), client, hosts, tmp_path)
    for record in (tmp_path / "state").iterdir():
        record.unlink()  # as if started from another machine
    with pytest.raises(EC2Error, match="already has 1 instance") as e:
        do_up(make_spec(ami, count=1), client, hosts, tmp_path)
    assert "ec2 down rwork" in str(e.value)
    assert len(live(client)) == 1  # and the refusal removed nothing


def test_dry_run_starts_nothing(client: Any, ami: str) -> None:
    passed = ec2.dry_run(make_spec(ami, spot=True), client=client)
    assert any("may run 3" in p for p in passed)
    assert live(client) == []
    assert client.describe_key_pairs()["KeyPairs"] == []
    names = [g["GroupName"] for g in client.describe_security_groups()["SecurityGroups"]]
    assert names == ["default"]


def test_the_context_manager_ends_everything_on_an_exception(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    address_of, console_text = hosts.seams()
    with pytest.raises(ZeroDivisionError), ec2.cluster(
            make_spec(ami, count=2), client=client, output=tmp_path / "hosts.yaml",
            address_of=address_of, console_text=console_text, timeout=20, poll=0.1) as c:
        assert len(live(client)) == 2 == len(c.instances)
        1 / 0  # noqa: B018 - the failure inside the block
    assert live(client) == []
    assert client.describe_key_pairs()["KeyPairs"] == []


# --------------------------------------------------------------------------- host keys


def test_unreadable_host_keys_fail_with_a_hint_and_clean_up(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    address_of, _ = hosts.seams()
    with pytest.raises(EC2Error) as e:
        # the default console reader: moto's console output has no host keys
        ec2.up(make_spec(ami, count=2), client=client, output=tmp_path / "hosts.yaml",
               address_of=address_of, timeout=1.5, poll=0.1)
    assert "could not be read from their console output" in str(e.value)
    assert "--accept-new" in str(e.value)
    assert "cleaned up: terminated" in str(e.value)
    assert live(client) == []
    assert not (tmp_path / "hosts.yaml").exists() and not (tmp_path / "rwork.pem").exists()


def test_accept_new_records_the_key_shown_on_first_connection(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    address_of, _ = hosts.seams()
    c = ec2.up(make_spec(ami, count=2), client=client, output=tmp_path / "hosts.yaml",
               address_of=address_of, accept_new=True, timeout=20, poll=0.1)
    lines = c.known_hosts.read_text().splitlines()
    assert lines == [f"[127.0.0.1]:{hosts.ports[i]} ssh-ed25519 {hosts.public(i)}"
                     for i in range(2)]


# --------------------------------------------------------------------------- faults


class RefusingProxy:
    """An HTTP proxy on 127.0.0.1 in front of moto that refuses the Nth RunInstances
    with an EC2 error answer (and passes everything else through)."""

    def __init__(self, upstream: str, refuse: int, code: str = "InsufficientInstanceCapacity"):
        self.calls = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if urllib.parse.parse_qs(body.decode()).get("Action") == ["RunInstances"]:
                    proxy.calls += 1
                    if proxy.calls == refuse:
                        self._answer(400, (
                            f"<Response><Errors><Error><Code>{code}</Code><Message>We "
                            "currently do not have sufficient capacity in the Availability "
                            "Zone you requested.</Message></Error></Errors>"
                            "<RequestID>proxy</RequestID></Response>").encode())
                        return
                request = urllib.request.Request(
                    upstream + self.path, data=body, method="POST",
                    headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
                try:
                    with urllib.request.urlopen(request) as answer:
                        self._answer(answer.status, answer.read())
                except urllib.error.HTTPError as err:
                    self._answer(err.code, err.read())

            def _answer(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_second_run_instances_refused_leaves_nothing_running(
        client: Any, moto_url: str, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    proxy = RefusingProxy(moto_url, refuse=2)
    try:
        via_proxy = ec2.make_client(REGION, endpoint_url=proxy.url)
        with pytest.raises(EC2Error) as e:
            do_up(make_spec(ami, count=3), via_proxy, hosts, tmp_path, batch_size=2)
    finally:
        proxy.close()
    assert proxy.calls == 2
    assert e.value.code == "InsufficientInstanceCapacity"
    assert "try another type" in str(e.value)
    message = str(e.value)
    assert "failed; cleaned up: terminated: i-" in message
    assert "deleted security groups" in message and "deleted key pairs" in message
    assert live(client) == []  # the first batch's 2 instances were terminated
    assert client.describe_key_pairs()["KeyPairs"] == []
    assert list((tmp_path / "state").iterdir()) == []


def test_interrupt_while_waiting_leaves_nothing_running(client: Any, ami: str,
                                                        hosts: SshHosts,
                                                        tmp_path: Path) -> None:
    seen: list[ec2.Step] = []

    def progress(step: ec2.Step) -> None:
        seen.append(step)
        if step.stage == "ssh":
            raise KeyboardInterrupt  # Ctrl-C while waiting for SSH

    with pytest.raises(KeyboardInterrupt):
        do_up(make_spec(ami), client, hosts, tmp_path, progress=progress)
    assert live(client) == []
    assert seen[-1].stage == "aborted"
    assert "interrupted; cleaned up: terminated: i-" in seen[-1].message
    assert not (tmp_path / "rwork.pem").exists()


def test_ssh_deadline_fails_and_cleans_up(client: Any, ami: str, tmp_path: Path) -> None:
    # port 9 on 127.0.0.1: nothing listens, the instance never answers
    with pytest.raises(EC2Error, match="did not answer on SSH before the deadline"):
        ec2.up(make_spec(ami, count=1), client=client, output=tmp_path / "h.yaml",
               address_of=lambda i: ec2.Endpoint("127.0.0.1", 9), timeout=1, poll=0.1)
    assert live(client) == []


@pytest.mark.parametrize(("code", "hint"), [
    ("UnauthorizedOperation", "permission"),
    ("VcpuLimitExceeded", "Service Quotas"),
    ("InstanceLimitExceeded", "quota"),
    ("InvalidAMIID.NotFound", "per region"),
    ("AuthFailure", "credentials"),
])
def test_aws_errors_come_with_a_hint(client: Any, moto_url: str, ami: str, hosts: SshHosts,
                                     tmp_path: Path, code: str, hint: str) -> None:
    proxy = RefusingProxy(moto_url, refuse=1, code=code)
    try:
        with pytest.raises(EC2Error) as e:
            do_up(make_spec(ami, count=1), ec2.make_client(REGION, endpoint_url=proxy.url),
                  hosts, tmp_path)
    finally:
        proxy.close()
    assert e.value.code == code and e.value.operation == "RunInstances"
    assert hint in (e.value.hint or "")
    assert live(client) == []


def test_unknown_image_is_refused_before_anything_starts(client: Any, tmp_path: Path,
                                                         hosts: SshHosts) -> None:
    with pytest.raises(EC2Error) as e:
        do_up(make_spec("ami-00000000deadbeef0"), client, hosts, tmp_path)
    assert e.value.code == "InvalidAMIID.NotFound" and "per region" in str(e.value)
    assert live(client) == [] and client.describe_key_pairs()["KeyPairs"] == []


def test_no_credentials(moto_url: str, monkeypatch: pytest.MonkeyPatch, ami: str) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var)
    for var in ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask 169.254.169.254
    # a fresh session: boto3's default one has cached the test credentials
    with pytest.raises(EC2Error) as e:
        ec2.list_clusters(client=boto3.session.Session().client("ec2", region_name=REGION))
    assert e.value.code == "NoCredentials" and "aws configure" in str(e.value)


# --------------------------------------------------------------------------- gc


def test_gc_finds_expired_and_orphaned_clusters(client: Any, ami: str, hosts: SshHosts,
                                                tmp_path: Path) -> None:
    mine = do_up(make_spec(ami, count=1), client, hosts, tmp_path / "a", owner="me@here")
    do_up(make_spec(ami, name="other", count=1), client, hosts, tmp_path / "b",
          owner="me@here")
    assert ec2.find_garbage(client=client, owner="me@here") == ()

    later = mine.expires + timedelta(minutes=1)
    expired = ec2.find_garbage(client=client, owner="me@here", now=later)
    assert {g.name for g in expired} == {"rwork", "other"}
    assert all(g.reason.startswith("expired at") for g in expired)

    (tmp_path / "state" / f"{REGION}--other.json").unlink()  # its up died, say
    (orphan,) = ec2.find_garbage(client=client, owner="me@here")
    assert orphan.name == "other" and "no record" in orphan.reason
    # someone else's unexpired cluster without a record here is theirs, not garbage
    assert ec2.find_garbage(client=client, owner="you@there") == ()

    reports = ec2.collect_garbage([orphan], client=client)
    assert reports[0].terminated == orphan.instance_ids
    assert [i["InstanceId"] for i in live(client)] == [mine.instances[0].id]


def test_gc_judges_a_cluster_by_its_live_run(client: Any, ami: str, hosts: SshHosts,
                                            tmp_path: Path) -> None:
    short = do_up(make_spec(ami, count=1, max_lifetime=timedelta(minutes=10)), client, hosts,
                  tmp_path)
    ec2.down("rwork", client=client)
    do_up(make_spec(ami, count=1), client, hosts, tmp_path)  # same name, a new run
    # the first run's terminated instance is still listed, with its earlier expiry
    assert ec2.find_garbage(client=client, now=short.expires + timedelta(minutes=1)) == ()


# --------------------------------------------------------------------------- spec


SPEC = """\
ec2:
  name: rwork
  region: us-east-1
  image: ami-0123456789abcdef0
  instance_type: c7i.large
  count: 4
  user: ubuntu
  max_lifetime: 1h30m
  ssh_cidr: 203.0.113.7/32
"""


def test_the_example_spec_is_valid() -> None:
    spec = parse_spec((Path(__file__).parent.parent / "ec2.example.yaml").read_text(),
                      "ec2.example.yaml")
    assert spec.name and spec.ssh_cidr and spec.max_lifetime >= timedelta(minutes=10)


def test_spec_fields() -> None:
    spec = parse_spec(SPEC, "c.yaml")
    assert spec.count == 4 and spec.max_lifetime == timedelta(hours=1, minutes=30)
    assert spec.ssh_cidr == ("203.0.113.7/32",) and not spec.spot and spec.port is None


@pytest.mark.parametrize(("change", "text"), [
    ("  count: 0\n", "ec2.count: expected a number of instances"),
    ("  max_lifetime: 2 hours\n", "ec2.max_lifetime: expected a duration"),
    ("  max_lifetime: 30d\n", "ec2.max_lifetime: 30d is outside"),
    ("  spot: maybe\n", "ec2.spot: expected true or false"),
    ("  image: ubuntu-22.04\n", "ec2.image: expected an AMI id"),
    ("  ssh_cidr: 0.0.0.0/0\n", "lets the whole internet"),
    ("  ssh_cidr: 203.0.113.7\n", "has no prefix length"),
    ("  instance_typo: x\n", "unknown key 'instance_typo'"),
])
def test_spec_errors_name_file_line_and_field(change: str, text: str) -> None:
    key = change.split(":")[0]
    spec = "".join(x for x in SPEC.splitlines(keepends=True) if not x.startswith(key + ":"))
    spec += change
    with pytest.raises(InventoryError) as e:
        parse_spec(spec, "c.yaml")
    assert e.value.path == "c.yaml" and e.value.line == len(spec.splitlines())
    assert text in str(e.value)


def test_ssh_from_anywhere_only_when_said_so() -> None:
    text = SPEC.replace("203.0.113.7/32", "0.0.0.0/0") + "  allow_ssh_from_anywhere: true\n"
    assert parse_spec(text).ssh_cidr == ("0.0.0.0/0",)
    no_cidr = "".join(x for x in SPEC.splitlines(keepends=True) if "ssh_cidr" not in x)
    with pytest.raises(InventoryError, match="'ssh_cidr' is required"):
        parse_spec(no_cidr)


# --------------------------------------------------------------------------- CLI


def run(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


@pytest.mark.parametrize("command", [[], ["up"], ["ls"], ["down"], ["gc"]])
def test_help(command: list[str]) -> None:
    result = run("ec2", *command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output
    assert len(result.output.splitlines()) > 4


def test_cli_bad_spec_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.replace("count: 4", "count: -1"))
    result = CliRunner().invoke(cli, ["ec2", "up", str(bad)])
    assert result.exit_code == 2
    assert f"{bad} line 6: ec2.count" in result.output
    assert "Traceback" not in result.output


def test_cli_aws_error_exits_1(client: Any, tmp_path: Path) -> None:
    spec = tmp_path / "c.yaml"
    spec.write_text(SPEC.replace("ami-0123456789abcdef0", "ami-00000000deadbeef0"))
    result = CliRunner().invoke(cli, ["ec2", "up", str(spec), "-o", str(tmp_path / "h.yaml")])
    assert result.exit_code == 1
    assert "InvalidAMIID.NotFound" in result.output and "hint:" in result.output
    assert "Traceback" not in result.output


def test_cli_dry_run_ls_json_down_gc(client: Any, ami: str, hosts: SshHosts,
                                     tmp_path: Path) -> None:
    spec = tmp_path / "c.yaml"
    spec.write_text(SPEC.replace("ami-0123456789abcdef0", ami).replace("c7i.large",
                                                                       "t3.medium"))
    result = run("ec2", "up", str(spec), "--dry-run")
    assert result.exit_code == 0 and "nothing was started" in result.output
    assert live(client) == []

    do_up(make_spec(ami, count=2), client, hosts, tmp_path)
    result = run("ec2", "ls", "--json")
    assert result.exit_code == 0
    (cluster,) = json.loads(result.output)
    assert cluster["name"] == "rwork" and len(cluster["instances"]) == 2
    assert {i["state"] for i in cluster["instances"]} == {"running"}
    table = run("ec2", "ls").output
    assert "rwork" in table and "running" in table
    assert "1h59m" in table or "2h00m" in table  # time left, to the minute

    result = run("ec2", "gc")
    assert result.output.strip() == "nothing to collect in us-east-1"

    result = run("ec2", "down", "rwork")
    assert result.exit_code == 0 and "terminated" in result.output
    assert run("ec2", "down", "rwork").output.strip() == "rwork: nothing left to remove"


def test_cli_gc_asks_first(client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    do_up(make_spec(ami, count=1), client, hosts, tmp_path, owner=ec2.default_owner())
    for record in (tmp_path / "state").iterdir():
        record.unlink()
    result = run("ec2", "gc", input="n\n")
    assert "no record of it is left here" in result.output
    assert "nothing terminated" in result.output and len(live(client)) == 1
    result = run("ec2", "gc", "--yes")
    assert "rwork (us-east-1): terminated" in result.output and live(client) == []


def test_up_output_is_plain_yaml(client: Any, ami: str, hosts: SshHosts,
                                 tmp_path: Path) -> None:
    do_up(make_spec(ami, count=1, port=11234, primary="first"), client, hosts, tmp_path)
    text = (tmp_path / "hosts.yaml").read_text()
    assert text.startswith("# Written by 'sshcluster ec2 up' for cluster rwork")
    data = yaml.safe_load(text)
    assert data["port"] == 11234
    assert data["primary"]["host"].startswith("10.")  # the first instance's private IP


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


def test_cli_up_prints_the_next_commands(client: Any, ami: str, hosts: SshHosts,
                                         tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    use_seams_in_cli(hosts, monkeypatch)
    monkeypatch.chdir(tmp_path)
    Path("ec2.yaml").write_text(spec_text(ami, count=2))
    result = run("ec2", "up", "ec2.yaml", "--timeout", "20")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1:] == [
        "next:",
        "  sshcluster render hosts.yaml --check -o cluster.R",
        "  Rscript -e 'source(\"cluster.R\"); print(parallelCluster)'",
        "end it with: sshcluster ec2 down rwork"]
    text = Path("hosts.yaml").read_text()
    assert "#   sshcluster render hosts.yaml --check -o cluster.R\n" in text
    assert yaml.safe_load(text)["primary"] == {"host": "auto"}
    # plain render refuses primary: auto; that is why the commands say --check
    plain = CliRunner().invoke(cli, ["render", "hosts.yaml", "-o", "cluster.R"])
    assert plain.exit_code == 2 and "primary.host is 'auto'" in plain.output


def test_the_docs_show_the_commands_that_work() -> None:
    root = Path(__file__).parent.parent
    readme = (root / "README.md").read_text()
    example = (root / "ec2.example.yaml").read_text()
    help_text = run("ec2", "up", "--help").output
    render, rscript = ec2.next_steps("hosts.yaml")
    for text in (readme, example, help_text):
        assert render in text
        assert "sshcluster check hosts.yaml && sshcluster render hosts.yaml -o" not in text
        assert "take it as it is" not in text and "take as it is" not in text
    assert rscript in readme and rscript in help_text


# --------------------------------------------------------------------------- regions


def test_search_regions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    records = tmp_path / "state"
    records.mkdir()
    for name in ("us-west-2--west.json", "eu-central-1--a--b.json", "us-west-2--other.json",
                 "not a region--x.json", "us-west-2--x.tmp"):
        (records / name).write_text("not even JSON")  # unreadable records count too
    assert ec2.search_regions(records=records) == ("eu-central-1", "us-east-1", "us-west-2")
    assert ec2.search_regions("ap-south-1", records=records) == ("ap-south-1",)
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert ec2.search_regions(records=records) == ("eu-central-1", "us-west-2")
    with pytest.raises(EC2Error, match="no AWS region given"):
        ec2.search_regions(records=tmp_path / "none")


def test_cli_ls_and_gc_look_in_every_region_with_a_record(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    # moto serves every region on one endpoint; the default region here is us-east-1.
    west = ec2.make_client("us-west-2")
    do_up(make_spec(ami, count=1, region="us-west-2", name="west"), west, hosts,
          tmp_path / "w")
    do_up(make_spec(ami, count=1), client, hosts, tmp_path / "e")

    found = json.loads(run("ec2", "ls", "--json").output)
    assert sorted((c["name"], c["region"]) for c in found) == [
        ("rwork", "us-east-1"), ("west", "us-west-2")]
    table = run("ec2", "ls").output
    assert "west" in table and "us-west-2" in table and "rwork" in table
    only = json.loads(run("ec2", "ls", "--region", "us-west-2", "--json").output)
    assert [(c["name"], c["region"]) for c in only] == [("west", "us-west-2")]

    # the cluster in us-west-2 is past its expiry: gc finds it there and ends it there
    (inst,) = live(west)
    west.create_tags(Resources=[inst["InstanceId"]],
                     Tags=[{"Key": "sshcluster:expires", "Value": "2020-01-01T00:00:00Z"}])
    result = run("ec2", "gc", "--yes")
    assert result.exit_code == 0, result.output
    assert f"west (us-west-2): expired at 2020-01-01T00:00:00Z: {inst['InstanceId']}" \
        in result.output
    assert f"west (us-west-2): terminated: {inst['InstanceId']}" in result.output
    assert live(west) == [] and len(live(client)) == 1
    assert [r.name for r in ec2.load_records()] == ["rwork"]
    assert run("ec2", "gc").output.strip() == "nothing to collect in us-east-1"


def test_garbage_is_collected_with_a_client_for_its_region(client: Any) -> None:
    garbage = ec2.Garbage("west", "expired", ("i-0123456789abcdef0",), "us-west-2")
    with pytest.raises(EC2Error, match="found in us-west-2 cannot be collected with a "
                                       "client for us-east-1"):
        ec2.collect_garbage([garbage], client=client)


# --------------------------------------------------------------------------- the output file

HAND_WRITTEN = "# my lab machines\nprimary: auto\nhosts: [node1, node2]\n"


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
    assert live(client) == [] and client.describe_key_pairs()["KeyPairs"] == []
    assert not (tmp_path / "state").exists() and not (tmp_path / "rwork.pem").exists()

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


def test_cli_up_refuses_to_overwrite_unless_forced(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    use_seams_in_cli(hosts, monkeypatch)
    monkeypatch.chdir(tmp_path)
    Path("ec2.yaml").write_text(spec_text(ami, count=1))
    Path("hosts.yaml").write_text(HAND_WRITTEN)
    result = CliRunner().invoke(cli, ["ec2", "up", "ec2.yaml"])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: hosts.yaml exists and is not an inventory 'sshcluster ec2 up' wrote for "
        "cluster rwork in us-east-1; not overwritten, nothing started\n"
        "hint: write the inventory elsewhere (-o other.yaml), or pass --force to replace "
        "hosts.yaml\n")
    assert Path("hosts.yaml").read_text() == HAND_WRITTEN and live(client) == []

    result = CliRunner().invoke(cli, ["ec2", "up", "ec2.yaml", "--force", "--timeout", "20"])
    assert result.exit_code == 0, result.output
    assert Path("hosts.yaml").read_text().startswith(
        "# Written by 'sshcluster ec2 up' for cluster rwork in us-east-1")
    assert run("ec2", "up", "ec2.yaml", "--timeout", "20").exit_code == 0  # its own file
    assert len(live(client)) == 1


# --------------------------------------------------------------------------- down NAME


def test_cli_down_of_no_such_cluster_says_so_and_lists_the_clusters(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    c = do_up(make_spec(ami, count=1), client, hosts, tmp_path)
    result = CliRunner().invoke(cli, ["ec2", "down", "rwrok"])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == ("error: no cluster rwrok in us-east-1: no record of it on this "
                        "machine, and nothing in us-east-1 is tagged with it")
    assert lines[1] == "the clusters sshcluster started, as 'sshcluster ec2 ls' lists them:"
    assert lines[2].split()[:3] == ["cluster", "region", "instance"]
    assert lines[3].split()[:4] == ["rwork", "us-east-1", c.instances[0].id, "running"]
    assert lines[-1].startswith("hint: check the name")
    assert len(live(client)) == 1  # and nothing was removed

    # a cluster that existed: down, and down again, both succeed
    assert run("ec2", "down", "rwork").exit_code == 0
    again = run("ec2", "down", "rwork")
    assert again.exit_code == 0 and again.output == "rwork: nothing left to remove\n"

    result = CliRunner().invoke(cli, ["ec2", "down", "rwrok"])
    assert result.exit_code == 1 and "the clusters sshcluster started" in result.stderr


def test_cli_down_with_no_cluster_anywhere(client: Any) -> None:
    result = CliRunner().invoke(cli, ["ec2", "down", "nosuch"])
    assert result.exit_code == 1
    assert "error: no cluster nosuch in us-east-1" in result.stderr
    assert "there are no clusters in us-east-1" in result.stderr


@pytest.mark.parametrize("name", ["Bad Name", "-x", "rwork-", "a" * 33, "UPPER"])
def test_cli_down_refuses_an_invalid_name(client: Any, name: str) -> None:
    result = CliRunner().invoke(cli, ["ec2", "down", "--", name])
    assert result.exit_code == 2
    assert "Invalid value for 'NAME': expected a cluster name of lower-case letters" \
        in result.stderr
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- --region


@pytest.mark.parametrize("command", [["ls"], ["gc"], ["down", "rwork"]])
@pytest.mark.parametrize("region", ["nowhere-1", "US-EAST-1", "us-east-1\n", "us east 1"])
def test_cli_malformed_region_exits_2(client: Any, command: list[str], region: str) -> None:
    result = CliRunner().invoke(cli, ["ec2", *command, "--region", region])
    assert result.exit_code == 2
    assert (f"Invalid value for '--region': expected an AWS region such as us-east-1, "
            f"got {region!r}") in result.stderr


@pytest.mark.parametrize("command", [["ls"], ["ls", "--json"], ["gc"], ["down", "rwork"]])
def test_cli_an_unknown_region_is_an_error_not_a_traceback(client: Any,
                                                           command: list[str]) -> None:
    # Well-formed but unknown: moto answers with an HTML error page (real AWS: no such
    # endpoint). catch_exceptions=False: an exception that escapes fails the test.
    result = run("ec2", *command, "--region", "xx-nowhere-9")
    assert result.exit_code == 1
    assert "DescribeInstances: the endpoint's answer is not an EC2 answer" in result.stderr
    assert "hint: check the region" in result.stderr


def test_cli_ls_goes_on_past_a_region_that_fails(client: Any, ami: str, hosts: SshHosts,
                                                 tmp_path: Path) -> None:
    do_up(make_spec(ami, count=1), client, hosts, tmp_path)
    (tmp_path / "state" / "xx-nowhere-9--ghost.json").write_text("{}")
    result = run("ec2", "ls", "--json")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: xx-nowhere-9: DescribeInstances: ")
    assert [c["name"] for c in json.loads(result.stdout)] == ["rwork"]
    result = run("ec2", "gc")
    assert result.exit_code == 1 and "nothing to collect in us-east-1" in result.stdout


def test_botocore_errors_become_ec2_errors() -> None:
    with pytest.raises(EC2Error, match="creating the EC2 client") as e:
        ec2.make_client("not a region!")  # botocore's own check: InvalidRegionError
    assert isinstance(e.value.__cause__, botocore.exceptions.BotoCoreError)
    err = ec2.aws_error(ResponseParserError("Unable to parse response: b'<html>'"),
                        "DescribeInstances")
    assert err.operation == "DescribeInstances" and "region" in (err.hint or "")
