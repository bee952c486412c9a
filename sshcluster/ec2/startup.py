"""Starting a cluster: :func:`up`, and the :func:`cluster` context manager around it.

``up`` writes this machine's record of the cluster before it starts anything, creates the
key pair and security group, launches the instances, waits until they run and answer on
SSH, reads their host keys from the console and writes an inventory. Anything that goes
wrong on the way, Ctrl-C included, terminates what that ``up`` started before the error
propagates.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sshcluster.ec2.aws import aws_errors, make_client
from sshcluster.ec2.cleanup import CLEANUP_TIMEOUT, remove_resources
from sshcluster.ec2.clusters import down
from sshcluster.ec2.instances import Endpoint, Instance, cluster_instances, format_time, utcnow
from sshcluster.ec2.launch import (
    Run,
    Started,
    allow_ingress,
    check_image_and_type,
    create_key_pair,
    create_security_group,
    launch,
    run_filters,
)
from sshcluster.ec2.records import (
    Record,
    default_owner,
    find_record,
    remove_record,
    save_record,
    state_dir,
    this_process,
)
from sshcluster.ec2.signals import Interrupted, SignalGuard, signal_guard, signal_name
from sshcluster.ec2.wait import (
    AddressOf,
    ConsoleText,
    Progress,
    Step,
    console_reader,
    host_keys,
    remaining,
    wait_ssh,
)
from sshcluster.errors import EC2Error, OutputExistsError, SshclusterError
from sshcluster.files import atomic_write
from sshcluster.hostkeys import write_known_hosts
from sshcluster.inventory import Host, Inventory, Primary, dump_inventory
from sshcluster.quoting import r_string, shell_join

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client

    from sshcluster.ec2.spec import EC2Spec


@dataclass(frozen=True)
class Cluster:
    """What :func:`up` started and wrote."""

    name: str
    region: str
    run_id: str
    expires: datetime
    instances: tuple[Instance, ...]
    endpoints: tuple[Endpoint, ...]
    inventory: Inventory
    inventory_path: Path
    known_hosts: Path
    key_file: Path | None
    #: The shell commands that take the inventory to a running R cluster (see
    #: :func:`next_steps`); ``sshcluster ec2 up`` prints them.
    next_steps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Seams:
    """Where :func:`up` reaches the instances and reads their console, when not EC2's own
    way: a program that drives ``sshcluster ec2 up`` through click passes one as the
    context object (``cli.main(args, obj=Seams(...))``), as the tests do to send the SSH
    waits to local test servers."""

    address_of: AddressOf | None = None
    console_text: ConsoleText | None = None


def default_address(spec: EC2Spec) -> AddressOf:
    """The address seam's default: the public or private IP (``spec.address``), port 22."""

    def address_of(instance: Instance) -> Endpoint:
        ip = instance.public_ip if spec.address == "public" else instance.private_ip
        if not ip:
            raise EC2Error(
                f"instance {instance.id} has no {spec.address} IP address",
                hint="use a subnet that assigns public IPs, or 'address: private' when this "
                     "machine is inside the VPC")
        return Endpoint(ip)

    return address_of


def up(spec: EC2Spec, *, client: EC2Client | None = None, output: str | os.PathLike[str],
       accept_new: bool = False, timeout: float = 900.0, poll: float = 5.0,
       address_of: AddressOf | None = None, console_text: ConsoleText | None = None,
       progress: Progress | None = None, owner: str | None = None,
       records: Path | None = None, batch_size: int = 10,
       run_id: str | None = None, overwrite: bool = False,
       cleanup_timeout: float = CLEANUP_TIMEOUT) -> Cluster:
    """Start the cluster, wait until every instance runs and answers on SSH, record its
    host keys and write an inventory to ``output``.

    ``client`` defaults to one for ``spec.region``. ``timeout`` is one deadline for the
    whole wait (seconds). ``address_of`` maps an instance to where this machine reaches
    its sshd (default :func:`default_address`); ``console_text`` returns an instance's
    console output (default GetConsoleOutput). Host keys come from that console output;
    if they cannot be read before the deadline, ``up`` fails, unless ``accept_new``
    records the key each instance shows on its first connection. ``progress`` is called
    with a :class:`Step` as the wait goes on.

    ``output`` is not overwritten unless it is an inventory ``up`` wrote for this
    cluster (its header says so), or ``overwrite``: else :class:`OutputExistsError` is
    raised before anything starts.

    A retried ``up`` of a cluster whose record and instances are still there continues
    that run (same ClientTokens) instead of starting a second fleet. On any failure,
    Ctrl-C, SIGTERM or SIGHUP (in the main thread; see :mod:`sshcluster.ec2.signals`)
    everything this run started is terminated and deleted, within ``cleanup_timeout``
    seconds and without obeying a further signal half-way, before the error (an
    :class:`EC2Error` saying what was removed) or the KeyboardInterrupt
    (:class:`~sshcluster.ec2.signals.Interrupted` for a signal, with its ``signum``)
    propagates; only a cluster that an earlier ``up`` finished is left as it is.
    """
    report: Progress = progress or (lambda step: None)

    def note(signum: int) -> None:
        report(Step("note", 0, 0, f"{signal_name(signum)} received: finishing the cleanup "
                                  f"first (at most {cleanup_timeout:.0f} s)"))

    with signal_guard(note) as guard:
        return _guarded_up(spec, client=client or make_client(spec.region), output=output,
                           accept_new=accept_new, deadline=time.monotonic() + timeout,
                           poll=poll, address_of=address_of, console_text=console_text,
                           report=report, owner=owner or default_owner(),
                           records=records or state_dir(), batch_size=batch_size,
                           run_id=run_id, overwrite=overwrite,
                           cleanup_timeout=cleanup_timeout, guard=guard)


def _guarded_up(spec: EC2Spec, *, client: EC2Client, output: str | os.PathLike[str],
                accept_new: bool, deadline: float, poll: float,
                address_of: AddressOf | None, console_text: ConsoleText | None,
                report: Progress, owner: str, records: Path, batch_size: int,
                run_id: str | None, overwrite: bool, cleanup_timeout: float,
                guard: SignalGuard) -> Cluster:
    output = Path(output)
    if not overwrite:
        _refuse_foreign_output(output, spec)
    vcpus = check_image_and_type(client, spec)

    earlier = find_record(records, spec.region, spec.name)
    # Only the caller's own instances of this name count: a colleague's cluster of the
    # same name in a shared account is theirs. Instances already shutting down (a down
    # just before) are on their way out.
    existing = [i for i in cluster_instances(client, spec.name, owner=owner)
                if i.state != "shutting-down"]
    key_file = output.parent / f"{spec.name}.pem" if spec.key_name is None else None
    finished = False  # the run being continued was finished by an earlier up
    if existing:
        runs = {i.run_id for i in existing}
        if earlier is None or runs != {earlier.run_id} or run_id not in (None,
                                                                          earlier.run_id):
            raise EC2Error(
                f"cluster {spec.name} already has {len(existing)} instance(s) in "
                f"{spec.region} from another run", hint=f"run 'sshcluster ec2 down "
                f"{spec.name}' first, or give this cluster another name")
        run_id, expires = earlier.run_id, earlier.expires
        finished = earlier.status == "up"
        if earlier.key_file and key_file:
            key_file = Path(earlier.key_file)  # the key the running instances were given
    else:
        run_id = run_id or secrets.token_hex(6)
        expires = utcnow() + spec.max_lifetime
    known_hosts = output.parent / f"{spec.name}.known_hosts"
    record = Record(spec.name, spec.region, run_id, owner, expires, "starting",
                    key_file=str(key_file.absolute()) if key_file else None,
                    known_hosts=str(known_hosts.absolute()),
                    inventory=str(output.absolute()),
                    instance_ids=earlier.instance_ids if existing and earlier else (),
                    process=this_process())
    started = Started(instance_ids=list(record.instance_ids), critical=guard.critical)

    def remember() -> None:
        """Write the ids created so far into the record: a killed up leaves them for gc."""
        save_record(records, replace(record, instance_ids=tuple(started.instance_ids),
                                     security_group=started.security_group,
                                     key_pair=started.key_pair))

    started.changed = remember
    # Written before anything exists, so that gc on this machine never mistakes a
    # cluster that is still starting for an orphan.
    save_record(records, record)
    try:
        cluster = _up(spec, client=client, record=record, output=output,
                      known_hosts=known_hosts, key_file=key_file, vcpus=vcpus,
                      deadline=deadline,
                      poll=poll, accept_new=accept_new,
                      address_of=address_of or default_address(spec),
                      console_text=console_text or console_reader(client),
                      report=report, batch_size=batch_size, started=started)
    except BaseException as exc:
        with guard.cleanup():  # first: a signal from here on is only noted
            if finished:
                save_record(records, replace(record, status="up"))
                undone = (f"the cluster an earlier up started is left as it was; "
                          f"'sshcluster ec2 down {spec.name}' ends it")
            else:
                if key_file:
                    started.files.append(key_file)  # its key pair goes with the run
                undone = _undo(client, spec.name, run_id, owner, started,
                               timeout=cleanup_timeout, poll=poll)
                remove_record(records, spec.region, spec.name)
            if isinstance(exc, Interrupted):
                what = f"interrupted by {signal_name(exc.signum)}"
            else:
                what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            note = f"up {spec.name} {what}; {undone}"
            with contextlib.suppress(Exception):  # a terminal that is gone cannot be told
                report(Step("aborted", 0, spec.count, note))
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        guard.raise_noted()  # a signal during the cleanup of a failure: its exit status
        if isinstance(exc, EC2Error):
            raise EC2Error(f"{exc.message}\n{note}", code=exc.code, operation=exc.operation,
                           hint=exc.hint) from exc
        if isinstance(exc, SshclusterError):
            raise EC2Error(f"{exc.message}\n{note}", hint=exc.hint) from exc
        raise EC2Error(f"{type(exc).__name__}: {exc}\n{note}") from exc
    save_record(records, replace(record, status="up", instance_ids=tuple(started.instance_ids),
                                 security_group=started.security_group,
                                 key_pair=started.key_pair))
    return cluster


def _header(spec: EC2Spec) -> str:
    """The first line of the inventory ``up`` writes for ``spec``'s cluster."""
    return f"Written by 'sshcluster ec2 up' for cluster {spec.name} in {spec.region} "


def _refuse_foreign_output(output: Path, spec: EC2Spec) -> None:
    """Raise OutputExistsError if ``output`` exists and is not an inventory ``up`` wrote
    for this cluster (a hand-written inventory, another cluster's)."""
    try:
        with output.open(encoding="utf-8", errors="replace") as f:
            first = f.readline(4096)
    except FileNotFoundError:
        return
    except OSError:
        first = ""
    if first.startswith(f"# {_header(spec)}"):
        return  # a retried or repeated up of the same cluster: its own file
    raise OutputExistsError(
        f"{output} exists and is not an inventory 'sshcluster ec2 up' wrote for cluster "
        f"{spec.name} in {spec.region}; not overwritten, nothing started",
        path=str(output), hint=f"write the inventory elsewhere (-o other.yaml), or pass "
                               f"--force to replace {output}")


def _up(spec: EC2Spec, *, client: EC2Client, record: Record, output: Path,
        known_hosts: Path, key_file: Path | None, vcpus: int, deadline: float,
        poll: float, accept_new: bool, address_of: AddressOf, console_text: ConsoleText,
        report: Progress, batch_size: int, started: Started) -> Cluster:
    run = Run(record.run_id, record.owner, record.expires)
    filters = run_filters(spec, run)

    key_name = spec.key_name
    if key_name is None:
        assert key_file is not None
        with aws_errors("DescribeKeyPairs"):
            pairs = client.describe_key_pairs(Filters=filters)["KeyPairs"]
        if pairs and key_file.exists():
            key_name = pairs[0]["KeyName"]  # a retried up: the key of the first attempt
        else:
            with started.critical():
                made = create_key_pair(client, spec, run)
                assert made is not None
                key_name, material = made
                started.key_pair = key_name
                started.changed()
                key_file.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(key_file, material if material.endswith("\n")
                             else material + "\n", mode=0o600)
                started.files.append(key_file)

    groups = [spec.security_group_id] if spec.security_group_id else []
    if spec.security_group_id is None:
        with aws_errors("DescribeSecurityGroups"):
            found = client.describe_security_groups(Filters=filters)["SecurityGroups"]
        if found:
            groups = [found[0]["GroupId"]]
        else:
            with started.critical():
                group = create_security_group(client, spec, run)
                assert group is not None
                started.security_group = group
                started.changed()
            groups = [group]
            allow_ingress(client, spec, group)

    launch(client, spec, run, groups=groups, key_name=key_name, batch_size=batch_size,
           started=started, report=lambda n: report(Step("launch", n, spec.count,
                                                         f"started {n} of {spec.count}")))
    instances = cluster_instances(client, spec.name, run_id=run.run_id, owner=run.owner)
    started.instance_ids = sorted({*started.instance_ids, *(i.id for i in instances)})
    started.changed()
    ids = [i.id for i in instances]

    report(Step("running", 0, len(ids), "waiting for the instances to run"))
    delay = max(1, round(poll))
    with aws_errors("waiting for instance_running"):
        client.get_waiter("instance_running").wait(
            InstanceIds=ids, WaiterConfig={
                "Delay": delay, "MaxAttempts": max(1, int(remaining(deadline) // delay))})
    instances = cluster_instances(client, spec.name, run_id=run.run_id, owner=run.owner)
    report(Step("running", len(ids), len(ids), "all instances running"))

    endpoints = {i.id: address_of(i) for i in instances}
    wait_ssh(endpoints, deadline=deadline, poll=poll, report=report)
    keys = host_keys(instances, endpoints, console_text=console_text, accept_new=accept_new,
                     deadline=deadline, poll=poll, report=report)
    write_known_hosts(known_hosts, [(endpoints[i].host, endpoints[i].port, k)
                                    for i, ks in keys.items() for k in ks])

    # primary.user is who the workers ssh to on the primary (the reverse_ssh check). Only
    # when the primary is one of the instances is that the image's login user; 'auto' or
    # an address is a machine outside the cluster (usually this one), whose user the
    # check takes to be the one running it when the inventory names none.
    first = instances[0].private_ip if spec.primary == "first" else None
    if first:
        primary, primary_user = first, spec.user
    else:
        primary, primary_user = "auto" if spec.primary == "first" else spec.primary, None
    inventory = Inventory(
        primary=Primary(host=primary, user=primary_user),
        hosts=tuple(Host(host=endpoints[i.id].host, user=spec.user, ncore=vcpus,
                         ssh_port=endpoints[i.id].port if endpoints[i.id].port != 22
                         else None,
                         identity_file=str(key_file) if key_file else spec.identity_file)
                    for i in instances),
        port=spec.port, known_hosts=str(known_hosts), path=str(output))
    steps = next_steps(output, primary_instance=first)
    header = (f"{_header(spec)}(run {run.run_id}).\nIts instances power off at "
              f"{format_time(run.expires)}; 'sshcluster ec2 down {spec.name}' ends them "
              "now. Next:\n" + "\n".join(f"  {step}" for step in steps))
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, dump_inventory(inventory, header=header))
    report(Step("done", len(ids), len(ids), f"wrote {output}"))
    return Cluster(spec.name, spec.region, run.run_id, run.expires, tuple(instances),
                   tuple(endpoints[i.id] for i in instances), inventory, output,
                   known_hosts, key_file, steps)


def next_steps(inventory: str | os.PathLike[str], *,
               primary_instance: str | None = None) -> tuple[str, ...]:
    """The shell commands from an inventory ``up`` wrote to R on the cluster.

    ``render --check`` is needed, not only advised: it fills in ``primary: auto`` (the
    address the workers see this machine at) and says whether the setup script has
    installed R yet. ``primary_instance`` is the first instance's address when it is the
    primary (``primary: first``): the check cannot run from here then (its callback
    listens on this machine), the inventory is complete as it is, and R runs there.
    """
    inventory = Path(inventory)
    cluster_r = str(inventory.parent / "cluster.R")
    if primary_instance:
        return (shell_join(["sshcluster", "render", str(inventory), "-o", cluster_r]),
                f"# then source({r_string(cluster_r)}) in R on the primary, the first "
                f"instance ({primary_instance}), with the key and known_hosts files at the "
                "same paths as here")
    return (shell_join(["sshcluster", "render", str(inventory), "--check", "-o", cluster_r]),
            shell_join(["Rscript", "-e",
                        f"source({r_string(cluster_r)}); print(parallelCluster)"]))


def _undo(client: EC2Client, name: str, run_id: str, owner: str, started: Started, *,
          timeout: float, poll: float) -> str:
    """Remove everything of run ``run_id``: the ids ``started`` recorded, plus anything
    tagged with the run (a RunInstances whose answer was lost still tagged its
    instances). Returns what to tell the user."""
    try:
        report = remove_resources(client, name, run_id=run_id, owner=owner,
                                  instance_ids=started.instance_ids,
                                  security_groups=(started.security_group,),
                                  key_pairs=(started.key_pair,), timeout=timeout, poll=poll)
    except SshclusterError as e:
        return (f"cleanup failed ({e.message}); run 'sshcluster ec2 down {name}' to remove "
                "what is left")
    for path in started.files:
        path.unlink(missing_ok=True)
    if not report.complete:
        return (f"cleaned up in part: {report.summary()}; run '{report.next_command}' in a "
                "minute to remove the rest")
    return f"cleaned up: {report.summary()}"


@contextmanager
def cluster(spec: EC2Spec, *, client: EC2Client | None = None,
            output: str | os.PathLike[str], records: Path | None = None,
            **options: Any) -> Iterator[Cluster]:
    """``up`` on entry, ``down`` on exit: also on an exception, Ctrl-C, SIGTERM or SIGHUP
    in the block (in the main thread), and a further signal during ``down`` is noted, not
    obeyed half-way; it is raised once ``down`` is done.

    ``options`` are passed to :func:`up` (``accept_new``, ``timeout``, ``address_of``...).
    """
    client = client or make_client(spec.region)
    report: Progress = options.get("progress") or (lambda step: None)

    def note(signum: int) -> None:
        report(Step("note", 0, 0, f"{signal_name(signum)} received: ending the cluster "
                                  "first"))

    with signal_guard(note) as guard:
        started = up(spec, client=client, output=output, records=records, **options)
        try:
            yield started
        finally:
            with guard.cleanup():
                down(spec.name, client=client, records=records, owner=options.get("owner"),
                     timeout=options.get("cleanup_timeout", CLEANUP_TIMEOUT))
        guard.raise_noted()


__all__ = ["Cluster", "Seams", "cluster", "default_address", "next_steps", "up"]
