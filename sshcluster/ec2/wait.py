"""Waiting for new instances: until they run, until they answer on SSH, and until their
host keys can be read from the console. Every wait has a deadline and reports its
progress; an instance that ends instead of running says why (its ``StateReason``)."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sshcluster.ec2.aws import STATE_REASON_HINTS, aws_error, aws_errors, is_boto_error, retry
from sshcluster.ec2.hostkeys import HostKey, parse_console_host_keys, scan_host_key
from sshcluster.ec2.instances import Endpoint, Instance
from sshcluster.errors import EC2Error
from sshcluster.net import ssh_banner

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client
    from mypy_boto3_ec2.type_defs import InstanceTypeDef


@dataclass(frozen=True)
class Step:
    """A progress report from :func:`~sshcluster.ec2.up`: ``done`` of ``total`` at
    ``stage`` (``launch``, ``running``, ``ssh``, ``hostkeys``, ``done``, ``aborted``)."""

    stage: str
    done: int
    total: int
    message: str = ""


#: Maps an instance to where this machine reaches its sshd.
AddressOf = Callable[[Instance], Endpoint]
#: Returns an instance's console output, by instance id.
ConsoleText = Callable[[str], str]
#: Called with a :class:`Step` as ``up`` goes on.
Progress = Callable[[Step], None]


def remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (a ``time.monotonic()`` value)."""
    return deadline - time.monotonic()


def console_reader(client: EC2Client) -> ConsoleText:
    """The default console seam: GetConsoleOutput with ``Latest=True`` (the output as it
    is now, not a snapshot that can lag by minutes), falling back to the buffered output
    when AWS refuses ``Latest``, whatever its code (only Nitro instances keep the latest
    output, and the codes of the refusal are not documented); once the buffered output
    was read that way, ``Latest`` is not asked for again."""
    latest = [True]

    def read(instance_id: str) -> str:
        if latest[0]:
            try:
                with aws_errors("GetConsoleOutput"):
                    return client.get_console_output(InstanceId=instance_id,
                                                     Latest=True).get("Output", "")
            except EC2Error:
                pass  # the buffered output below; its own refusal is the one raised
        with aws_errors("GetConsoleOutput"):
            text = client.get_console_output(InstanceId=instance_id).get("Output", "")
        latest[0] = False
        return text

    return read


def wait_running(client: EC2Client, ids: list[str], *, deadline: float,
                 poll: float) -> list[Instance]:
    """Wait until the instances ``ids`` (as RunInstances answered) run; return them.
    An instance that goes from pending to terminated instead raises EC2Error with its
    ``StateReason`` (a KMS key the caller may not use, a volume quota, ...)."""
    from botocore.exceptions import WaiterError

    delay = max(1, round(poll))
    try:
        client.get_waiter("instance_running").wait(
            InstanceIds=ids, WaiterConfig={
                "Delay": delay, "MaxAttempts": max(1, int(remaining(deadline) // delay))})
    except WaiterError as e:
        ended = [i for i in _describe(client, ids, deadline, poll)
                 if i.get("State", {}).get("Name") in ("shutting-down", "terminated")]
        if ended:
            raise _ended(ended, len(ids), "ended instead of running") from e
        raise aws_error(e, "waiting for instance_running") from e
    except Exception as e:
        if is_boto_error(e):
            raise aws_error(e, "waiting for instance_running") from e
        raise
    instances = [Instance.from_aws(i) for i in _describe(client, ids, deadline, poll)]
    return sorted(instances, key=lambda i: (i.batch, i.launch_index, i.id))


def _ended(ended: list[InstanceTypeDef], total: int, what: str) -> EC2Error:
    """The error for instances that ended: the first one's ``StateReason``, AWS's words."""
    reason = ended[0].get("StateReason", {})
    code = reason.get("Code", "unknown")
    return EC2Error(f"instance {ended[0]['InstanceId']} {what}"
                    + (f" ({len(ended)} of {total})" if len(ended) > 1 else "")
                    + f": {reason.get('Message', code)}", code=code,
                    operation="RunInstances", hint=STATE_REASON_HINTS.get(code))


#: States of an instance that has stopped serving the cluster: reclaimed (spot), stopped
#: or terminated by AWS or someone else.
_GONE = ("shutting-down", "terminated", "stopping", "stopped")

#: Called once a round by the waits that follow the launch; raises if an instance ended.
Watch = Callable[[], None]


def instance_watch(client: EC2Client, ids: list[str]) -> Watch:
    """One DescribeInstances of ``ids`` per call, raising EC2Error with the
    ``StateReason`` of any instance that ended: a spot instance reclaimed, capacity taken
    back, a KMS key the caller may not use. The waits for SSH, the host keys and the setup
    call it every round, so ``up`` fails at the next poll, not at its deadline."""

    def watch() -> None:
        with aws_errors("DescribeInstances"):
            answer = client.describe_instances(InstanceIds=ids)
        ended = [i for r in answer["Reservations"] for i in r["Instances"]
                 if i.get("State", {}).get("Name") in _GONE]
        if ended:
            state = ended[0].get("State", {}).get("Name", "terminated")
            raise _ended(ended, len(ids), f"went {state} while up waited")

    return watch


def _describe(client: EC2Client, ids: list[str], deadline: float,
              poll: float) -> list[InstanceTypeDef]:
    """DescribeInstances by id, retrying a NotFound right after RunInstances."""
    answer = retry(lambda: client.describe_instances(InstanceIds=ids), "DescribeInstances",
                   codes=("InvalidInstanceID.NotFound",),
                   deadline=min(deadline, time.monotonic() + 30), poll=poll)
    return [i for r in answer["Reservations"] for i in r["Instances"]]


def wait_ssh(endpoints: dict[str, Endpoint], *, deadline: float, poll: float,
             report: Progress, watch: Watch = lambda: None) -> None:
    """Wait until every endpoint shows an SSH banner, probing them in parallel;
    ``watch`` is called before each further round."""
    waiting = dict(endpoints)
    total = len(endpoints)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(32, total or 1))
    try:
        while True:
            report(Step("ssh", total - len(waiting), total, "waiting for SSH"))
            if not waiting:
                return
            left = remaining(deadline)
            if left <= 0:
                raise EC2Error(
                    f"{len(waiting)} of {total} instances did not answer on SSH before the "
                    f"deadline: " + ", ".join(f"{i} ({e.host}:{e.port})"
                                              for i, e in sorted(waiting.items())),
                    hint="check ssh_cidr and the subnet's route to the internet, or allow "
                         "more time (--timeout)")
            probe = min(5.0, max(0.5, left))
            answers = dict(zip(waiting, pool.map(
                ssh_banner, [e.host for e in waiting.values()],
                [e.port for e in waiting.values()], [probe] * len(waiting)), strict=True))
            waiting = {i: e for i, e in waiting.items() if not answers[i]}
            if waiting:
                watch()  # before waiting on: an instance that ended will never answer
                time.sleep(min(poll, max(0.0, remaining(deadline))))
    finally:
        # An interrupt must not wait for probes still running.
        pool.shutdown(wait=False, cancel_futures=True)


def host_keys(instances: Sequence[Instance], endpoints: dict[str, Endpoint], *,
              console_text: ConsoleText, accept_new: bool, deadline: float, poll: float,
              report: Progress, watch: Watch = lambda: None
              ) -> dict[str, tuple[HostKey, ...]]:
    """Every instance's host keys, from its console output; ``accept_new``: from the
    first connection for those whose console shows none. ``watch`` is called before each
    further round."""
    keys: dict[str, tuple[HostKey, ...]] = {}
    total = len(instances)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(16, total or 1))
    try:
        while True:
            # Every console that still lacks its keys, in one round, at the same time.
            waiting = [i.id for i in instances if i.id not in keys]
            for ident, text in zip(waiting, pool.map(console_text, waiting), strict=True):
                found = parse_console_host_keys(text)
                if found:
                    keys[ident] = found
            if _keys_done(instances, endpoints, keys, accept_new=accept_new,
                          deadline=deadline, report=report):
                return keys
            watch()
            time.sleep(min(poll, max(0.0, remaining(deadline))))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _keys_done(instances: Sequence[Instance], endpoints: dict[str, Endpoint],
               keys: dict[str, tuple[HostKey, ...]], *, accept_new: bool, deadline: float,
               report: Progress) -> bool:
    """True when every instance has its keys (scanning the missing ones with
    ``accept_new``); raises at the deadline."""
    total = len(instances)
    report(Step("hostkeys", len(keys), total, "reading host keys from the console"))
    missing = [i for i in instances if i.id not in keys]
    if not missing:
        return True
    if accept_new:
        for inst in missing:
            where = endpoints[inst.id]
            scanned = scan_host_key(where.host, where.port,
                                    max(1.0, min(10.0, remaining(deadline))))
            if scanned is None:
                raise EC2Error(f"instance {inst.id} showed no host key on "
                               f"{where.host}:{where.port}")
            keys[inst.id] = (scanned,)
        report(Step("hostkeys", total, total, "recorded new host keys (--accept-new)"))
        return True
    if remaining(deadline) <= 0:
        raise EC2Error(
            f"the host keys of {len(missing)} of {total} instances could not be read "
            "from their console output: " + ", ".join(i.id for i in missing),
            hint="cloud-init prints them at first boot, and the console output can lag "
                 "by minutes: retry with more time (--timeout), or pass --accept-new to "
                 "record the key each instance shows on first connection")
    return False


__all__ = [
    "AddressOf",
    "ConsoleText",
    "Progress",
    "Step",
    "Watch",
    "console_reader",
    "host_keys",
    "instance_watch",
    "remaining",
    "wait_running",
    "wait_ssh",
]
