"""What a real account answers and moto does not, through the fault proxy: an instance
reclaimed while ``up`` waits, refusals that are not capacity, subnets without public
addresses, Xen instance types, private subnets without a route out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sshcluster import ec2
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
