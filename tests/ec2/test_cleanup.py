"""Nothing is left behind: cleanup that survives AWS's timing, a killed ``up`` collected at
once, the leftovers of ended clusters, two owners with one cluster name, and signals in
the library (``up`` and the ``cluster()`` context manager).

AWS's timing comes from the fault proxy in front of moto: ``DependencyViolation`` while
a security group's interfaces are being released, an instance that still reads
``pending`` after TerminateInstances, describe answers that do not show new instances
yet (eventual consistency).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from sshcluster import ec2
from sshcluster.ec2.launch import Run, create_key_pair, create_security_group
from sshcluster.ec2.records import save_record, this_process
from sshcluster.ec2.signals import SignalGuard
from sshcluster.errors import ForeignCluster

from .faults import FaultProxy, batch_of
from .helpers import REGION, SshHosts, do_up, live, make_spec, nothing_left, run, state_files


def key_pairs(client: Any) -> list[str]:
    return [k["KeyName"] for k in client.describe_key_pairs()["KeyPairs"]]


def groups(client: Any) -> list[str]:
    return sorted(g["GroupName"] for g in client.describe_security_groups()["SecurityGroups"])


def assert_nothing_left(client: Any, state: Path) -> None:
    assert nothing_left(client) == {}
    assert key_pairs(client) == []
    assert groups(client) == ["default"]
    assert state_files(state) == []


def default_vpc(client: Any) -> str:
    return str(client.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])
               ["Vpcs"][0]["VpcId"])


def dead_process() -> dict[str, str]:
    """The identity of a process of this machine that has exited."""
    proc = subprocess.Popen(["true"])
    me = this_process()
    start = me["start"]
    proc.wait()
    return {**me, "pid": str(proc.pid), "start": start}


# --------------------------------------------------------------------------- AWS's timing


def test_a_security_group_in_use_is_retried_until_released(
        client: Any, proxy: FaultProxy, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    do_up(make_spec(ami, count=2), client, hosts, tmp_path)
    rule = proxy.refuse("DeleteSecurityGroup", "DependencyViolation",
                        "resource sg-1 has a dependent object", times=3)
    via_proxy = ec2.make_client(REGION, endpoint_url=proxy.url)
    report = ec2.down("rwork", client=via_proxy, poll=0.05)
    assert rule.refused == 3 and rule.count == 4  # three refusals, then deleted
    assert report.complete and len(report.deleted_security_groups) == 1
    assert_nothing_left(client, tmp_path / "state")


def test_a_group_still_in_use_at_the_deadline_is_reported_and_the_rest_removed(
        client: Any, proxy: FaultProxy, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    c = do_up(make_spec(ami, count=2), client, hosts, tmp_path)
    proxy.refuse("DeleteSecurityGroup", "DependencyViolation",
                 "resource sg-1 has a dependent object")
    via_proxy = ec2.make_client(REGION, endpoint_url=proxy.url)
    with pytest.raises(ec2.CleanupIncomplete) as e:
        ec2.down("rwork", client=via_proxy, timeout=1.0, poll=0.05)
    report = e.value.report
    (group,) = [g["GroupId"] for g in client.describe_security_groups(
        Filters=[{"Name": "tag:sshcluster:cluster", "Values": ["rwork"]}])["SecurityGroups"]]
    assert report.left == (f"security group {group} (still in use (DependencyViolation) at "
                           "the deadline)",)
    assert sorted(report.terminated) == sorted(i.id for i in c.instances)
    assert f"sshcluster ec2 down rwork --region {REGION}" in str(e.value)
    # the key pair and the instances went; the record stays (it tells a later down,
    # ls and gc the region), and so does the key file, until nothing is left
    assert set(nothing_left(client)) == {"security groups", "records"}
    assert [r.region for r in ec2.load_records()] == [REGION]
    # and the command it names finishes the job, record and all
    again = ec2.down("rwork", client=client)
    assert again.deleted_security_groups == (group,) and again.complete
    assert not (tmp_path / "rwork.pem").exists() and ec2.load_records() == []
    assert_nothing_left(client, tmp_path / "state")


def test_a_failed_up_whose_cleanup_fails_keeps_its_record(
        client: Any, proxy: FaultProxy, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    """The up fails (no capacity for its second batch), and so does its cleanup (the
    credentials expired, say): the record stays, with the instances it made, so that the
    command it names (with --region), ls and gc find them; once the process is gone, gc
    counts them orphaned."""
    proxy.refuse("RunInstances", "InsufficientInstanceCapacity", "no capacity",
                 when=lambda p: batch_of(p) == "1")
    proxy.refuse("TerminateInstances", "ExpiredToken", "The security token included in "
                 "the request is expired")
    via_proxy = ec2.make_client(REGION, endpoint_url=proxy.url)
    with pytest.raises(ec2.EC2Error) as e:
        do_up(make_spec(ami, count=3), via_proxy, hosts, tmp_path, batch_size=2)
    assert f"'sshcluster ec2 down rwork --region {REGION}'" in str(e.value)
    (record,) = ec2.load_records()
    assert record.region == REGION and record.status == "starting"
    running = [i["InstanceId"] for i in live(client, **{"sshcluster:cluster": "rwork"})]
    assert len(running) == 2 and sorted(record.instance_ids) == sorted(running)
    assert [c.name for c in ec2.list_clusters(client=client)] == ["rwork"]
    report = ec2.down("rwork", client=client)
    assert sorted(report.terminated) == sorted(running) and report.complete
    assert_nothing_left(client, tmp_path / "state")


def pending_after_terminate(terminated: FaultProxy, answers: int) -> Any:
    """A rewrite of DescribeInstances answers: after TerminateInstances, the first
    ``answers`` still say ``pending``, as AWS can right after a launch."""
    left = [answers]
    rule = next(r for r in terminated.rules if r.action == "TerminateInstances")

    def rewrite(body: bytes) -> bytes:
        if not rule.seen.is_set() or left[0] <= 0:
            return body
        left[0] -= 1
        return re.sub(rb"<code>48</code>(\s*)<name>terminated</name>",
                      rb"<code>0</code>\1<name>pending</name>", body)

    return rewrite


def test_termination_is_waited_for_through_transitional_states(
        client: Any, proxy: FaultProxy, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    c = do_up(make_spec(ami, count=2), client, hosts, tmp_path)
    ids = [i.id for i in c.instances]
    proxy.add("TerminateInstances")
    proxy.add("DescribeInstances", when=lambda p: "InstanceId.1" in p,
              rewrite=pending_after_terminate(proxy, 4))
    via_proxy = ec2.make_client(REGION, endpoint_url=proxy.url)
    via_proxy.terminate_instances(InstanceIds=ids)
    # boto3's own waiter gives up at once on such an answer...
    with pytest.raises(botocore.exceptions.WaiterError, match="pending"):
        via_proxy.get_waiter("instance_terminated").wait(InstanceIds=ids)
    # ...sshcluster's waits through it, and then deletes the group
    report = ec2.down("rwork", client=via_proxy, poll=0.05)
    assert report.complete and len(report.deleted_security_groups) == 1
    described = proxy.params("DescribeInstances")
    # boto3's waiter saw one 'pending', sshcluster's three more and then 'terminated'
    assert sum(1 for p in described if p.get("InstanceId.1") in ids) >= 5
    assert_nothing_left(client, tmp_path / "state")


def test_a_failed_up_ends_what_it_recorded_even_if_tags_are_not_visible_yet(
        client: Any, proxy: FaultProxy, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    # Right after RunInstances a tag-filtered DescribeInstances may not show the new
    # instances yet: the cleanup must use the ids RunInstances answered with.
    proxy.refuse("RunInstances", "InsufficientInstanceCapacity",
                 when=lambda p: batch_of(p) == "1")  # the second batch, in every zone
    proxy.add("DescribeInstances", when=lambda p: any(v.startswith("tag:") for v in p.values()),
              rewrite=lambda body: re.sub(rb"<reservationSet>.*</reservationSet>",
                                          b"<reservationSet/>", body, flags=re.S))
    via_proxy = ec2.make_client(REGION, endpoint_url=proxy.url)
    with pytest.raises(ec2.EC2Error, match="InsufficientInstanceCapacity"):
        do_up(make_spec(ami, count=3), via_proxy, hosts, tmp_path, batch_size=2)
    terminated = proxy.params("TerminateInstances")
    assert len(terminated) == 1 and terminated[0].get("InstanceId.2")  # batch 1's two ids
    assert_nothing_left(client, tmp_path / "state")


# --------------------------------------------------------------------------- gc


def test_a_killed_up_is_collected_at_once(client: Any, ami: str, hosts: SshHosts,
                                          tmp_path: Path) -> None:
    c = do_up(make_spec(ami, count=2), client, hosts, tmp_path)
    (record,) = ec2.load_records()
    assert record.process == this_process() and sorted(record.instance_ids) == sorted(
        i.id for i in c.instances) and record.key_pair and record.security_group
    save_record(tmp_path / "state", ec2.Record(**{**record.__dict__, "status": "starting",
                                                  "process": dead_process()}))
    (status,) = ec2.list_clusters(client=client)
    assert status.orphaned
    table = ec2.format_clusters([status])
    assert "rwork (orphaned)" in table and "end it with: sshcluster ec2 gc" in table
    (garbage,) = ec2.find_garbage(client=client)  # long before its expiry
    assert "gone (killed)" in garbage.reason
    assert sorted(garbage.instance_ids) == sorted(i.id for i in c.instances)
    ec2.collect_garbage([garbage], client=client)
    assert_nothing_left(client, tmp_path / "state")
    assert not (tmp_path / "rwork.pem").exists()


@pytest.mark.parametrize(("process", "orphaned"), [
    ({"pid": str(os.getpid()), "start": "1"}, True),  # a pid reused by another process
    ({"boot_id": "another-boot"}, True),  # the machine rebooted since
    ({"machine": "another-machine"}, False),  # cannot tell from here: not garbage
    ({"machine": "", "host": "another-machine"}, False),  # (an older record: by name)
    ({"host": "renamed"}, False),  # this very process, on a machine renamed since: alive
    ({"host": "renamed", "pid": "dead"}, True),  # gone, on a machine renamed since
    # a clone of this machine (same machine id, another name and boot): cannot tell
    ({"host": "clone", "boot_id": "another-boot"}, False),
    ({}, False),  # this very process: alive
])
def test_only_a_gone_owner_process_makes_an_orphan(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path, process: dict[str, str],
        orphaned: bool) -> None:
    do_up(make_spec(ami, count=1), client, hosts, tmp_path)
    (record,) = ec2.load_records()
    identity = {**this_process(), **process}
    if identity["pid"] == "dead":
        identity = {**dead_process(), **{k: v for k, v in process.items() if k != "pid"}}
    identity = {k: v for k, v in identity.items() if v}
    save_record(tmp_path / "state", ec2.Record(**{**record.__dict__, "status": "starting",
                                                  "process": identity}))
    assert ec2.load_records()[0].owner_gone() is orphaned
    assert len(ec2.find_garbage(client=client)) == (1 if orphaned else 0)


def test_an_up_killed_before_its_instances_leaves_nothing_after_gc(
        client: Any, ami: str, tmp_path: Path) -> None:
    spec = make_spec(ami)
    run_ = Run("0123456789ab", ec2.default_owner(), ec2.utcnow() + spec.max_lifetime)
    made = create_key_pair(client, spec, run_)
    group = create_security_group(client, spec, run_, default_vpc(client))
    assert made and group
    save_record(tmp_path / "state", ec2.Record(
        "rwork", REGION, run_.run_id, run_.owner, run_.expires, "starting",
        key_pair=made[0], security_group=group, process=dead_process()))
    (garbage,) = ec2.find_garbage(client=client)
    assert garbage.instance_ids == () and garbage.security_groups == (group,)
    assert garbage.key_pairs == (made[0],) and garbage.record
    assert garbage.what == f"{group}, key pair {made[0]}, its record here"
    ec2.collect_garbage([garbage], client=client)
    assert_nothing_left(client, tmp_path / "state")


def test_gc_removes_what_is_left_of_clusters_that_ended_on_their_own(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    c = do_up(make_spec(ami, count=2), client, hosts, tmp_path)
    client.terminate_instances(InstanceIds=[i.id for i in c.instances])  # their own timer
    (garbage,) = ec2.find_garbage(client=client)
    assert "instances are gone" in garbage.reason and len(garbage.security_groups) == 1
    ec2.collect_garbage([garbage], client=client)
    assert_nothing_left(client, tmp_path / "state")


def test_a_running_up_is_not_garbage(client: Any, ami: str, tmp_path: Path) -> None:
    # between CreateSecurityGroup and RunInstances: record 'starting', owner alive
    spec = make_spec(ami)
    run_ = Run("0123456789ab", ec2.default_owner(), ec2.utcnow() + spec.max_lifetime)
    group = create_security_group(client, spec, run_, default_vpc(client))
    save_record(tmp_path / "state", ec2.Record(
        "rwork", REGION, run_.run_id, run_.owner, run_.expires, "starting",
        security_group=group, process=this_process()))
    assert ec2.find_garbage(client=client) == ()


def test_a_starting_record_past_its_expiry_is_garbage(client: Any, ami: str,
                                                      tmp_path: Path) -> None:
    """A record still 'starting' whose up cannot be judged from here (another machine's,
    by its id) is left alone while the cluster may live, and collected once its expiry
    has passed (it was skipped for ever)."""
    spec = make_spec(ami)
    run_ = Run("0123456789ab", ec2.default_owner(), ec2.utcnow() - timedelta(minutes=1))
    group = create_security_group(client, spec, run_, default_vpc(client))
    save_record(tmp_path / "state", ec2.Record(
        "rwork", REGION, run_.run_id, run_.owner, run_.expires, "starting",
        security_group=group, process={**this_process(), "machine": "another-machine"}))
    (garbage,) = ec2.find_garbage(client=client)
    assert garbage.security_groups == (group,) and garbage.record
    ec2.collect_garbage([garbage], client=client)
    assert_nothing_left(client, tmp_path / "state")


# --------------------------------------------------------------------------- two owners


def test_two_owners_with_the_same_cluster_name(client: Any, ami: str, hosts: SshHosts,
                                               tmp_path: Path) -> None:
    alice = do_up(make_spec(ami, count=1), client, hosts, tmp_path / "alice",
                  owner="alice@laptop", records=tmp_path / "alice-state")
    bob = do_up(make_spec(ami, count=1), client, hosts, tmp_path / "bob", owner="bob@box",
                records=tmp_path / "bob-state")
    assert alice.run_id != bob.run_id and len(live(client)) == 2

    (mine,) = ec2.list_clusters(client=client, owner="alice@laptop")
    assert [i.id for i in mine.instances] == [alice.instances[0].id]
    both = ec2.list_clusters(client=client, any_owner=True)
    assert sorted((c.name, c.owner) for c in both) == [("rwork", "alice@laptop"),
                                                       ("rwork", "bob@box")]
    with pytest.raises(ForeignCluster) as e:
        ec2.down("rwork", client=client, owner="carol@desk")
    assert e.value.owners == ("alice@laptop", "bob@box") and "--any-owner" in str(e.value)
    assert len(live(client)) == 2  # and nothing was touched

    report = ec2.down("rwork", client=client, owner="alice@laptop",
                      records=tmp_path / "alice-state")
    assert report.terminated == (alice.instances[0].id,)
    assert [i["InstanceId"] for i in live(client)] == [bob.instances[0].id]
    assert len(report.deleted_key_pairs) == len(report.deleted_security_groups) == 1
    assert len(key_pairs(client)) == 1  # bob's
    assert ec2.find_garbage(client=client, owner="alice@laptop") == ()

    # the CLI: this machine's user owns neither; bob's cluster is named, not ended
    result = run("ec2", "down", "rwork")
    assert result.exit_code == 1
    assert ("error: cluster rwork in us-east-1 belongs to bob@box, not to "
            f"{ec2.default_owner()}; nothing was touched") in result.stderr
    assert "Traceback" not in result.output and len(live(client)) == 1
    assert run("ec2", "ls").output.strip() == "no clusters in us-east-1"
    assert "bob@box" not in run("ec2", "ls").output
    assert bob.instances[0].id in run("ec2", "ls", "--any-owner").output
    assert run("ec2", "down", "rwork", "--any-owner").exit_code == 0
    assert nothing_left(client) == {}


# --------------------------------------------------------------------------- signals


def test_sigterm_in_the_cluster_block_ends_the_cluster(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    address_of, console_text = hosts.seams()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ec2.Interrupted) as e, ec2.cluster(
            make_spec(ami, count=2), client=client, output=tmp_path / "hosts.yaml",
            address_of=address_of, console_text=console_text, timeout=20, poll=0.1):
        assert len(live(client)) == 2
        os.kill(os.getpid(), signal.SIGTERM)
    assert e.value.signum == signal.SIGTERM and e.value.exit_status == 143
    assert_nothing_left(client, tmp_path / "state")
    assert signal.getsignal(signal.SIGTERM) == before  # the handlers are put back


def test_a_second_signal_during_the_cleanup_is_noted_not_obeyed(
        client: Any, proxy: FaultProxy, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    # SIGTERM while waiting for SSH, then SIGINT while TerminateInstances is under way:
    # the cleanup runs to its end, and says why it does not stop at once.
    me = os.getpid()
    proxy.add("TerminateInstances", when=lambda p: os.kill(me, signal.SIGINT) is None,
              delay=0.3)
    steps: list[ec2.Step] = []

    def progress(step: ec2.Step) -> None:
        steps.append(step)
        if step.stage == "ssh" and not any(s.stage == "aborted" for s in steps):
            os.kill(me, signal.SIGTERM)

    with pytest.raises(ec2.Interrupted) as e:
        do_up(make_spec(ami, count=2), ec2.make_client(REGION, endpoint_url=proxy.url),
              hosts, tmp_path, progress=progress)
    assert e.value.signum == signal.SIGTERM
    notes = [s.message for s in steps if s.stage == "note" and "received" in s.message]
    assert notes == ["SIGINT received: finishing the cleanup first (at most 300 s)"]
    assert steps[-1].stage == "aborted"
    assert steps[-1].message.startswith("up rwork interrupted by SIGTERM; cleaned up: "
                                        "terminated: i-")
    assert_nothing_left(client, tmp_path / "state")


def test_signals_outside_the_main_thread_are_left_alone() -> None:
    import threading

    outcome: list[bool] = []
    guard = SignalGuard()
    t = threading.Thread(target=lambda: outcome.append(guard.install()))
    t.start()
    t.join()
    assert outcome == [False]


def test_a_cluster_block_whose_down_fails_says_it_may_still_run(
        client: Any, proxy: FaultProxy, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    """ec2.cluster()'s down at the block's end fails (the credentials expired during a
    long job): the error says the cluster may still be running and names the command,
    with its region, that ends it (it said only AWS's words before)."""
    address_of, console_text = hosts.seams()
    via_proxy = ec2.make_client(REGION, endpoint_url=proxy.url)
    with pytest.raises(ec2.EC2Error, match="may still be running") as e, ec2.cluster(
            make_spec(ami, count=1), client=via_proxy, output=tmp_path / "hosts.yaml",
            address_of=address_of, console_text=console_text, timeout=20, poll=0.1):
        proxy.refuse("TerminateInstances", "ExpiredToken", "The security token included in "
                     "the request is expired")
    assert f"sshcluster ec2 down rwork --region {REGION}" in str(e.value.hint)
    assert len(live(client)) == 1
    assert ec2.down("rwork", client=client).complete
    assert_nothing_left(client, tmp_path / "state")
