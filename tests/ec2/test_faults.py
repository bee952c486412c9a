"""Faults: AWS refusing a request, an interrupt, a deadline, missing credentials. Each
leaves nothing running and says what to do.

The fault proxy (``faults.py``) in front of moto refuses the Nth RunInstances with the
error answer real EC2 would give.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.parsers import ResponseParserError

from sshcluster import ec2
from sshcluster.errors import EC2Error

from .faults import FaultProxy, batch_of
from .helpers import REGION, SshHosts, do_up, make_spec, nothing_left, state_files

CAPACITY = ("We currently do not have sufficient capacity in the Availability Zone you "
            "requested.")


def test_second_run_instances_refused_leaves_nothing_running(
        client: Any, proxy: FaultProxy, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    # The second batch finds no capacity in any zone (the first is tried in each subnet).
    rule = proxy.refuse("RunInstances", "InsufficientInstanceCapacity", CAPACITY,
                        when=lambda p: batch_of(p) == "1")
    via_proxy = ec2.make_client(REGION, endpoint_url=proxy.url)
    with pytest.raises(EC2Error) as e:
        do_up(make_spec(ami, count=3), via_proxy, hosts, tmp_path, batch_size=2)
    assert rule.count == rule.refused == 5  # the zones of us-east-1 that offer t3.medium
    assert len(proxy.params("RunInstances")) == 1 + 5
    assert e.value.code == "InsufficientInstanceCapacity"
    assert "try another type" in str(e.value)
    message = str(e.value)
    assert "failed; cleaned up: terminated: i-" in message
    assert "deleted security groups" in message and "deleted key pairs" in message
    assert nothing_left(client) == {}  # the first batch's 2 instances were terminated
    assert client.describe_key_pairs()["KeyPairs"] == []
    assert state_files(tmp_path / "state") == []


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
    assert nothing_left(client) == {}
    assert seen[-1].stage == "aborted"
    assert "interrupted; cleaned up: terminated: i-" in seen[-1].message
    assert not (tmp_path / "rwork.pem").exists()


def test_ssh_deadline_fails_and_cleans_up(client: Any, ami: str, tmp_path: Path) -> None:
    # port 9 on 127.0.0.1: nothing listens, the instance never answers
    with pytest.raises(EC2Error, match="did not answer on SSH before the deadline"):
        ec2.up(make_spec(ami, count=1), client=client, output=tmp_path / "h.yaml",
               address_of=lambda i: ec2.Endpoint("127.0.0.1", 9), timeout=1, poll=0.1)
    assert nothing_left(client) == {}


@pytest.mark.parametrize(("code", "hint"), [
    ("UnauthorizedOperation", "permission"),
    ("VcpuLimitExceeded", "Service Quotas"),
    ("InstanceLimitExceeded", "quota"),
    ("InvalidAMIID.NotFound", "per region"),
    ("AuthFailure", "credentials"),
    ("AuthFailure.ServiceLinkedRoleCreationNotPermitted",
     "aws iam create-service-linked-role --aws-service-name spot.amazonaws.com"),
    ("PendingVerification", "up to 4 hours"),
])
def test_aws_errors_come_with_a_hint(client: Any, proxy: FaultProxy, ami: str,
                                     hosts: SshHosts, tmp_path: Path, code: str,
                                     hint: str) -> None:
    proxy.refuse("RunInstances", code, CAPACITY)
    with pytest.raises(EC2Error) as e:
        do_up(make_spec(ami, count=1), ec2.make_client(REGION, endpoint_url=proxy.url),
              hosts, tmp_path)
    assert e.value.code == code and e.value.operation == "RunInstances"
    assert hint in (e.value.hint or "")
    assert nothing_left(client) == {}


def test_unknown_image_is_refused_before_anything_starts(client: Any, tmp_path: Path,
                                                         hosts: SshHosts) -> None:
    with pytest.raises(EC2Error) as e:
        do_up(make_spec("ami-00000000deadbeef0"), client, hosts, tmp_path)
    assert e.value.code == "InvalidAMIID.NotFound" and "per region" in str(e.value)
    assert nothing_left(client) == {}


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


def test_botocore_errors_become_ec2_errors() -> None:
    with pytest.raises(EC2Error, match="creating the EC2 client") as e:
        ec2.make_client("not a region!")  # botocore's own check: InvalidRegionError
    assert isinstance(e.value.__cause__, botocore.exceptions.BotoCoreError)
    err = ec2.aws_error(ResponseParserError("Unable to parse response: b'<html>'"),
                        "DescribeInstances")
    assert err.operation == "DescribeInstances" and "region" in (err.hint or "")


SSO_CONFIG = """\
[profile work]
sso_session = corp
sso_account_id = 123456789012
sso_role_name = Admin
region = us-east-1
[sso-session corp]
sso_start_url = https://example.awsapps.com/start
sso_region = us-east-1
"""


def test_an_expired_sso_session_says_aws_sso_login(root: None, tmp_path: Path) -> None:
    # An SSO profile without a cached token, as after the session expired. It runs in a
    # process of its own, in an empty network namespace: nothing can leave this machine
    # even if botocore tried to reach AWS's SSO endpoints.
    import os
    import subprocess
    import sys

    (tmp_path / "config").write_text(SSO_CONFIG)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AWS_PROFILE": "work",
           "AWS_CONFIG_FILE": str(tmp_path / "config"),
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}
    code = ("from sshcluster import ec2\n"
            "try:\n    ec2.list_clusters(client=ec2.make_client('us-east-1'))\n"
            "except ec2.EC2Error as e:\n    print(e.code)\n    print(e.hint)\n")
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    code_line, hint = out.stdout.splitlines()[:2]
    assert code_line == "SSOToken"
    assert hint.startswith("your AWS SSO session has expired or was never started: run "
                           "'aws sso login'")


def test_the_proxy_is_quiet_when_a_client_leaves_before_its_answer(
        capfd: pytest.CaptureFixture[str]) -> None:
    """A client killed while its answer is delayed: the proxy's thread finds it gone
    later, and must not print a traceback into whatever test runs by then."""
    proxy = FaultProxy("http://127.0.0.1:1")  # (never forwarded to)
    rule = proxy.add("DescribeInstances", delay=0.3,
                     answer=lambda params: (200, b"x" * (4 << 20)))
    port = int(proxy.url.rsplit(":", 1)[1])
    body = b"Action=DescribeInstances"
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(body), body))
        assert rule.seen.wait(5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    time.sleep(1.5)
    proxy.server.shutdown()
    assert "Traceback" not in capfd.readouterr().err
