"""What the EC2 tests share: the spec they start, local SSH servers standing in for the
instances' sshd, and small queries against moto.

What stands in for what:
- EC2 is moto's server (``ThreadedMotoServer``), reached by boto3 through
  ``AWS_ENDPOINT_URL``; it is reset through ``/moto-api/reset`` before each test.
- The instances' sshd are small asyncssh servers on 127.0.0.1, one per instance, reached
  through ``up``'s ``address_of`` seam (moto's instance IPs are made up and never
  contacted).
- moto's console output holds no host keys, so ``up`` gets console text through its
  ``console_text`` seam (a realistic cloud-init block with the test server's real key), or
  uses ``accept_new`` (the key is then scanned from the test server).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncssh
from click.testing import CliRunner, Result

from sshcluster import ec2
from sshcluster.cli import cli
from sshcluster.testing.sshserver import LocalServer, ServerThread, Session

REGION = "us-east-1"

#: The repository: README.md, ec2.example.yaml.
ROOT = Path(__file__).resolve().parents[2]

HAND_WRITTEN = "# my lab machines\nprimary: auto\nhosts: [node1, node2]\n"

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


def make_spec(ami: str, **changes: Any) -> ec2.EC2Spec:
    base = ec2.EC2Spec(name="rwork", region=REGION, image=ami, instance_type="t3.medium",
                       count=3, user="ubuntu", max_lifetime=timedelta(hours=2),
                       ssh_cidr=("203.0.113.7/32",), setup="apt-get install -y r-base-core\n")
    return replace(base, **changes)


def spec_text(ami: str, **fields: Any) -> str:
    """A spec file for moto: the image ``ami``, t3.medium, and ``fields`` over SPEC's."""
    text = SPEC.replace("ami-0123456789abcdef0", ami).replace("c7i.large", "t3.medium")
    for key, value in fields.items():
        lines = [x for x in text.splitlines(keepends=True) if not x.startswith(f"  {key}:")]
        text = "".join(lines) + f"  {key}: {value}\n"
    return text


READY = "ready R version 4.2.2 (2022-10-31)"


class SshHosts:
    """asyncssh servers on 127.0.0.1, one per instance: SSH banner and a real host key;
    any command run there prints ``status[i]``, as the setup's status file would (by
    default: ready), after the dead man's switch's record (armed, unless ``armed[i]`` is
    False)."""

    def __init__(self, n: int) -> None:
        self.thread = ServerThread()
        self.keys = [asyncssh.generate_private_key("ssh-ed25519") for _ in range(n)]
        self.status = [READY] * n
        self.armed = [True] * n  # the dead man's switch scheduled the shutdown
        self.commands: list[str] = []
        self.servers = [self.thread.start(LocalServer(k, None, session=self._answer(i)))
                        for i, k in enumerate(self.keys)]
        self.ports = [s.port for s in self.servers]

    def _answer(self, index: int) -> Session:
        def answer(process: asyncssh.SSHServerProcess[str]) -> None:
            self.commands.append(process.command or "")
            expiry = "armed 1767225600" if self.armed[index] else "none"
            process.stdout.write(f"expiry: {expiry}\n{self.status[index]}\n")
            process.exit(0)

        return answer

    def close(self) -> None:
        self.thread.close(join=5)

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

    def cli_seams(self) -> ec2.Seams:
        """The seams for ``sshcluster ec2 up`` run through click (``obj=``), so that the
        command never waits on moto's made-up addresses."""
        address_of, console_text = self.seams()
        return ec2.Seams(address_of=address_of, console_text=console_text)


def live(client: Any, **tags: str) -> list[dict[str, Any]]:
    """moto's live instances, with ``tags`` (``{"sshcluster:cluster": "rwork"}``)."""
    filters = [{"Name": "instance-state-name",
                "Values": ["pending", "running", "stopping", "stopped", "shutting-down"]}]
    filters += [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
    pages = client.get_paginator("describe_instances").paginate(Filters=filters)
    return [i for p in pages for r in p["Reservations"] for i in r["Instances"]]


def nothing_left(client: Any) -> dict[str, list[str]]:
    """What is left of sshcluster's clusters in moto and on this machine, by kind: live
    instances, sshcluster's security groups and key pairs, open or active spot requests,
    and cluster records (in this test's state directory). ``{}``: nothing."""
    groups = [g["GroupName"] for g in client.describe_security_groups()["SecurityGroups"]
              if g["GroupName"].startswith("sshcluster-")]
    keys = [k["KeyName"] for k in client.describe_key_pairs()["KeyPairs"]
            if k["KeyName"].startswith("sshcluster-")]
    spot = [r["SpotInstanceRequestId"] for r in client.describe_spot_instance_requests(
        Filters=[{"Name": "state", "Values": ["open", "active"]}])["SpotInstanceRequests"]]
    left = {"instances": [i["InstanceId"] for i in live(client)], "security groups": groups,
            "key pairs": keys, "spot requests": spot,
            "records": [r.name for r in ec2.load_records()]}
    return {kind: names for kind, names in left.items() if names}


def do_up(spec: ec2.EC2Spec, client: Any, hosts: SshHosts, tmp_path: Path,
          **kwargs: Any) -> ec2.Cluster:
    address_of, console_text = hosts.seams()
    options: dict[str, Any] = {"address_of": address_of, "console_text": console_text,
                               "timeout": 20, "setup_timeout": 20, "poll": 0.1, **kwargs}
    return ec2.up(spec, client=client, output=tmp_path / "hosts.yaml", **options)


def run(*args: str, input: str | None = None, obj: Any = None) -> Result:
    """``sshcluster ARGS`` in this process; an exception that escapes fails the test."""
    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False, obj=obj)


def internet_gateway(client: Any) -> str:
    """Give moto's default VPC what a real account's default VPC has and moto's lacks: an
    internet gateway, and a route 0.0.0.0/0 to it in the main route table. Its id."""
    vpc = client.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]
    gateway = client.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    client.attach_internet_gateway(InternetGatewayId=gateway, VpcId=vpc["VpcId"])
    (main,) = client.describe_route_tables(Filters=[
        {"Name": "vpc-id", "Values": [vpc["VpcId"]]},
        {"Name": "association.main", "Values": ["true"]}])["RouteTables"]
    client.create_route(RouteTableId=main["RouteTableId"], DestinationCidrBlock="0.0.0.0/0",
                        GatewayId=gateway)
    return str(gateway)


def state_files(state: Path) -> list[Path]:
    """What the record directory holds besides the owner id (kept there for good)."""
    return [p for p in state.iterdir() if p.name != "owner-id"] if state.is_dir() else []
