"""Waiting for new instances: until they answer on SSH, and until their host keys can be
read from the console. Every wait has a deadline and reports its progress."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sshcluster.ec2.aws import aws_errors
from sshcluster.ec2.instances import Endpoint, Instance
from sshcluster.errors import EC2Error
from sshcluster.hostkeys import HostKey, parse_console_host_keys, scan_host_key
from sshcluster.net import ssh_banner

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client


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
    """The default console seam: GetConsoleOutput."""

    def read(instance_id: str) -> str:
        with aws_errors("GetConsoleOutput"):
            return client.get_console_output(InstanceId=instance_id).get("Output", "")

    return read


def wait_ssh(endpoints: dict[str, Endpoint], *, deadline: float, poll: float,
             report: Progress) -> None:
    """Wait until every endpoint shows an SSH banner, probing them in parallel."""
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
                time.sleep(min(poll, max(0.0, remaining(deadline))))
    finally:
        # An interrupt must not wait for probes still running.
        pool.shutdown(wait=False, cancel_futures=True)


def host_keys(instances: Sequence[Instance], endpoints: dict[str, Endpoint], *,
              console_text: ConsoleText, accept_new: bool, deadline: float, poll: float,
              report: Progress) -> dict[str, tuple[HostKey, ...]]:
    """Every instance's host keys, from its console output; ``accept_new``: from the
    first connection for those whose console shows none."""
    keys: dict[str, tuple[HostKey, ...]] = {}
    total = len(instances)
    while True:
        for inst in instances:
            if inst.id not in keys:
                found = parse_console_host_keys(console_text(inst.id))
                if found:
                    keys[inst.id] = found
        report(Step("hostkeys", len(keys), total, "reading host keys from the console"))
        missing = [i for i in instances if i.id not in keys]
        if not missing:
            return keys
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
            return keys
        if remaining(deadline) <= 0:
            raise EC2Error(
                f"the host keys of {len(missing)} of {total} instances could not be read "
                "from their console output: " + ", ".join(i.id for i in missing),
                hint="cloud-init prints them at first boot, and the console output can lag "
                     "by minutes: retry with more time (--timeout), or pass --accept-new to "
                     "record the key each instance shows on first connection")
        time.sleep(min(poll, max(0.0, remaining(deadline))))


__all__ = [
    "AddressOf",
    "ConsoleText",
    "Progress",
    "Step",
    "console_reader",
    "host_keys",
    "remaining",
    "wait_ssh",
]
