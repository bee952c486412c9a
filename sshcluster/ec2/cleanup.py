"""Removing what a cluster consists of: its instances, spot requests, security groups and
key pairs. ``down``, ``gc`` and a failed or interrupted ``up`` all end a cluster here.

Real AWS is slower than its stand-ins, and the removal is written for it:

* it starts from the ids that were recorded as AWS created them, and adds what is tagged
  (a RunInstances whose answer was lost still tagged its instances);
* an instance id that AWS does not know yet right after RunInstances is retried for a
  short, bounded time (``InvalidInstanceID.NotFound`` is eventually consistent);
* the key pairs go first: nothing depends on them;
* the wait for termination tolerates an instance that still reads ``pending`` or
  ``stopping`` after TerminateInstances, where boto3's ``instance_terminated`` waiter
  gives up at once, and has a deadline;
* the security group is deleted with retries and backoff while AWS answers
  ``DependencyViolation`` (its network interfaces are released after the instances);
* whatever is still there at the deadline is reported, with the command that finishes
  the job, instead of stopping half-way.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sshcluster.ec2.aws import aws_errors, make_filters, region_of, retry
from sshcluster.ec2.instances import cluster_filters, cluster_instances, describe_instances
from sshcluster.errors import EC2Error, SshclusterError

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client

    from sshcluster.ec2.launch import Started

#: Seconds a cleanup may take, in all, by default (AWS usually needs one or two minutes
#: to terminate instances and release their network interfaces).
CLEANUP_TIMEOUT = 300.0
#: Longest pause between two tries of a security group that is still in use.
MAX_BACKOFF = 15.0


@dataclass(frozen=True)
class DownReport:
    """What was removed of cluster ``name``; all empty when there was nothing left.

    ``left`` names what is still there after the cleanup's deadline (a security group
    whose interfaces AWS had not released yet, instances not terminated), each with why;
    :attr:`complete` is False then, and :attr:`next_command` finishes the job.
    """

    name: str
    terminated: tuple[str, ...] = ()
    cancelled_spot_requests: tuple[str, ...] = ()
    deleted_security_groups: tuple[str, ...] = ()
    deleted_key_pairs: tuple[str, ...] = ()
    removed_files: tuple[str, ...] = ()
    left: tuple[str, ...] = ()
    #: The region it is in (named in :attr:`next_command`: without it, ``down`` would
    #: look in the default region once no record of the cluster is left).
    region: str | None = None

    @property
    def removed_anything(self) -> bool:
        """True if down terminated, cancelled or deleted anything."""
        return bool(self.terminated or self.cancelled_spot_requests
                    or self.deleted_security_groups or self.deleted_key_pairs
                    or self.removed_files)

    @property
    def complete(self) -> bool:
        """True if nothing of the cluster is left."""
        return not self.left

    @property
    def next_command(self) -> str:
        """The command that removes what is left."""
        return f"sshcluster ec2 down {self.name}" + (f" --region {self.region}"
                                                     if self.region else "")

    def summary(self) -> str:
        """One line for people."""
        parts = [f"{what}: {', '.join(ids)}" for what, ids in (
            ("terminated", self.terminated),
            ("cancelled spot requests", self.cancelled_spot_requests),
            ("deleted security groups", self.deleted_security_groups),
            ("deleted key pairs", self.deleted_key_pairs),
            ("still there", self.left),
        ) if ids]
        return "; ".join(parts) if parts else "nothing left to remove"


class CleanupIncomplete(EC2Error):
    """A cleanup ended at its deadline with something still there: ``report`` says what
    was removed and what is left (``report.left``)."""

    def __init__(self, report: DownReport) -> None:
        self.report = report
        super().__init__(f"{report.name}: {report.summary()}",
                         hint=f"AWS may need a few more minutes; run '{report.next_command}'"
                              " again (it is safe to repeat)")


def wait_terminated(client: EC2Client, ids: list[str], *, deadline: float,
                    poll: float) -> list[str]:
    """Wait until every instance of ``ids`` reads ``terminated``; the ids that do not by
    the deadline. Transitional states (``pending``, ``stopping``, ``shutting-down``) and
    a NotFound answer are waited through, not failures as for boto3's own waiter."""
    from botocore.exceptions import WaiterError
    from botocore.waiter import WaiterModel, create_waiter_with_client

    delay = max(1, round(poll))
    attempts = max(1, int(max(0.0, deadline - time.monotonic()) // delay) + 1)
    model = WaiterModel({"version": 2, "waiters": {"InstancesTerminated": {
        "operation": "DescribeInstances", "delay": delay, "maxAttempts": attempts,
        "acceptors": [
            {"state": "success", "matcher": "pathAll", "expected": "terminated",
             "argument": "Reservations[].Instances[].State.Name"},
            {"state": "retry", "matcher": "error", "expected": "InvalidInstanceID.NotFound"},
        ]}}})
    try:
        create_waiter_with_client("InstancesTerminated", model, client).wait(InstanceIds=ids)
    except WaiterError:
        states = {i.id: i.state for i in describe_instances(
            client, make_filters(**{"instance-id": ids}))}
        return [i for i in ids if states.get(i) != "terminated"]
    return []


def _terminate(client: EC2Client, ids: list[str], *, deadline: float, poll: float) -> None:
    # Ids straight from RunInstances may not be known to TerminateInstances for a moment.
    nf_deadline = min(deadline, time.monotonic() + 30)
    retry(lambda: client.terminate_instances(InstanceIds=ids), "TerminateInstances",
          codes=("InvalidInstanceID.NotFound",), deadline=nf_deadline, poll=poll,
          max_pause=MAX_BACKOFF)


def remove_resources(client: EC2Client, name: str, *, run_id: str | None = None,
                     owner: str | Sequence[str] | None = None,
                     instance_ids: Iterable[str] = (),
                     security_groups: Iterable[str | None] = (),
                     key_pairs: Iterable[str | None] = (), timeout: float = CLEANUP_TIMEOUT,
                     poll: float = 5.0) -> DownReport:
    """Terminate the instances, cancel the spot requests, delete the security groups and
    key pairs of cluster ``name`` (of one run only, if ``run_id``; of one owner only, if
    ``owner``): those given by id, and those tagged as the cluster's. Bounded by
    ``timeout`` seconds; what is still there then is in the report's ``left``."""
    deadline = time.monotonic() + timeout
    tag_filters = cluster_filters(name, run_id=run_id, owner=owner)
    instances = cluster_instances(client, name, run_id=run_id, owner=owner)
    ids = sorted({*(i.id for i in instances), *instance_ids})
    left: list[str] = []
    if ids:
        try:
            _terminate(client, ids, deadline=deadline, poll=poll)
        except EC2Error as e:
            if e.code != "InvalidInstanceID.NotFound":
                raise
            # Terminate those AWS can see; the others are reported, not guessed at.
            seen = [i.id for i in describe_instances(
                client, make_filters(**{"instance-id": ids}))]
            left += [f"instance {i} (AWS does not know it yet)" for i in ids if i not in seen]
            ids = seen
            if ids:
                _terminate(client, ids, deadline=deadline, poll=poll)
    with aws_errors("DescribeSpotInstanceRequests"):
        spot = client.describe_spot_instance_requests(
            Filters=[*tag_filters, *make_filters(state=["open", "active", "disabled"])],
        )["SpotInstanceRequests"]
    spot_ids = sorted({*(r["SpotInstanceRequestId"] for r in spot),
                       *(i.spot_request_id for i in instances if i.spot_request_id)})
    if spot_ids:
        with aws_errors("CancelSpotInstanceRequests"):
            client.cancel_spot_instance_requests(SpotInstanceRequestIds=spot_ids)

    # Key pairs first: nothing depends on them, so a late security group never keeps one.
    with aws_errors("DescribeKeyPairs"):
        pairs = sorted({*(k["KeyName"] for k in
                          client.describe_key_pairs(Filters=tag_filters)["KeyPairs"]),
                        *(k for k in key_pairs if k)})
    for pair in pairs:
        with aws_errors("DeleteKeyPair"):  # deleting a missing key pair is not an error
            client.delete_key_pair(KeyName=pair)

    with aws_errors("DescribeSecurityGroups"):
        groups = sorted({*(g["GroupId"] for g in client.describe_security_groups(
            Filters=tag_filters)["SecurityGroups"]), *(g for g in security_groups if g)})
    deleted: list[str] = []
    if groups:
        # A security group cannot be deleted while an instance, even one shutting down,
        # still uses it.
        running = wait_terminated(client, ids, deadline=deadline, poll=poll) if ids else []
        left += [f"instance {i} (not terminated yet)" for i in running]
        for group in groups:
            outcome = _delete_group(client, group, deadline=deadline, poll=poll)
            if outcome is None:
                deleted.append(group)
            elif outcome:
                left.append(f"security group {group} ({outcome})")
    return DownReport(name, tuple(ids), tuple(spot_ids), tuple(deleted), tuple(pairs),
                      left=tuple(left), region=region_of(client))


def _delete_group(client: EC2Client, group: str, *, deadline: float,
                  poll: float) -> str | None:
    """Delete security group ``group``, retrying while it is in use; None when deleted,
    ``""`` when it was gone already, else why it is still there."""
    try:
        retry(lambda: client.delete_security_group(GroupId=group), "DeleteSecurityGroup",
              codes=("DependencyViolation",), deadline=deadline, poll=poll,
              max_pause=MAX_BACKOFF)
    except EC2Error as e:
        if e.code == "InvalidGroup.NotFound":
            return ""
        if e.code == "DependencyViolation":
            return "still in use (DependencyViolation) at the deadline"
        raise
    return None


def undo_run(client: EC2Client, name: str, run_id: str, owner: str, started: Started, *,
             timeout: float, poll: float) -> tuple[str, bool]:
    """Remove everything of run ``run_id``: the ids ``started`` recorded, plus anything
    tagged with the run (a RunInstances whose answer was lost still tagged its
    instances). Returns what to tell the user, and whether nothing is left."""
    try:
        report = remove_resources(client, name, run_id=run_id, owner=owner,
                                  instance_ids=started.instance_ids,
                                  security_groups=(started.security_group,),
                                  key_pairs=(started.key_pair,), timeout=timeout, poll=poll)
    except SshclusterError as e:
        return (f"cleanup failed ({e.message}); run 'sshcluster ec2 down {name} --region "
                f"{region_of(client)}' to remove what is left", False)
    if not report.complete:
        return (f"cleaned up in part: {report.summary()}; run '{report.next_command}' in a "
                "minute to remove the rest", False)
    for path in started.files:
        path.unlink(missing_ok=True)
    return f"cleaned up: {report.summary()}", True


__all__ = ["CLEANUP_TIMEOUT", "CleanupIncomplete", "DownReport", "remove_resources",
           "undo_run", "wait_terminated"]
