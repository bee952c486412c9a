"""Starting a cluster: :func:`up`, and the :func:`cluster` context manager around it.

``up`` checks everything it can before it starts anything (:mod:`sshcluster.ec2.plan`),
writes this machine's record of the cluster, creates the key pair and security group,
launches the instances (trying other subnets when a zone has no capacity), waits until
they run and answer on SSH, reads their host keys from the console, writes an inventory,
and waits until every instance's setup has R and the packages ready. Anything that goes
wrong on the way, Ctrl-C, SIGTERM and SIGHUP included, terminates what that ``up``
started before the error propagates.
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
from sshcluster.ec2.cleanup import CLEANUP_TIMEOUT, undo_run
from sshcluster.ec2.clusters import down
from sshcluster.ec2.instances import Endpoint, Instance, cluster_instances, utcnow
from sshcluster.ec2.launch import (
    Run,
    Started,
    allow_ingress,
    create_key_pair,
    create_security_group,
    launch,
    run_filters,
)
from sshcluster.ec2.output import next_steps, refuse_foreign_output, write_output
from sshcluster.ec2.plan import LaunchPlan, plan_launch
from sshcluster.ec2.prebuilt import by_sync, primary_reference, send_packages
from sshcluster.ec2.ready import ReadStatus, SetupFailed, ssh_status_reader, wait_ready
from sshcluster.ec2.records import (
    Record,
    default_owner,
    find_record,
    my_owners,
    on_this_machine,
    process_alive,
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
    instance_watch,
    wait_running,
    wait_ssh,
)
from sshcluster.errors import EC2Error, InventoryError, SshclusterError
from sshcluster.files import atomic_write
from sshcluster.inventory import Inventory

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client

    from sshcluster.ec2.spec import EC2Spec
    from sshcluster.packages.reference import Reference

#: Seconds ``up`` waits, by default, for the setup (R and the packages) on every instance.
SETUP_TIMEOUT = 30 * 60.0


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
    #: :func:`~sshcluster.ec2.output.next_steps`); ``sshcluster ec2 up`` prints them.
    next_steps: tuple[str, ...] = ()
    #: The AMI the instances run (an image name resolved).
    image: str = ""
    #: True when ``up`` waited until every instance's setup said ready.
    ready: bool = False


@dataclass(frozen=True)
class Seams:
    """Where :func:`up` reaches the instances, reads their console and their setup's
    status, when not EC2's own way: a program that drives ``sshcluster ec2 up`` through
    click passes one as the context object (``cli.main(args, obj=Seams(...))``), as the
    tests do to send the SSH waits to local test servers."""

    address_of: AddressOf | None = None
    console_text: ConsoleText | None = None
    read_status: ReadStatus | None = None
    #: Where the instances reach each other's sshd (a detached job's primary instance
    #: reaches the others there); by default their private IP, port 22.
    inner_address_of: AddressOf | None = None


@dataclass(frozen=True)
class _Job:
    """One ``up``'s settings, past its argument list."""

    deadline: float
    poll: float
    accept_new: bool
    address_of: AddressOf | None
    console_text: ConsoleText | None
    read_status: ReadStatus | None
    report: Progress
    batch_size: int
    wait: bool
    setup_timeout: float
    keep_on_failure: bool
    cleanup_timeout: float
    verify: bool = False


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
       read_status: ReadStatus | None = None, progress: Progress | None = None,
       owner: str | None = None, records: Path | None = None, batch_size: int = 10,
       run_id: str | None = None, overwrite: bool = False, wait: bool = True,
       setup_timeout: float = SETUP_TIMEOUT, keep_on_failure: bool = False,
       cleanup_timeout: float = CLEANUP_TIMEOUT, quotas: Any = None,
       ssm: Any = None, verify: bool = False, job_id: str | None = None) -> Cluster:
    """Start the cluster, wait until every instance runs and answers on SSH, record its
    host keys, write an inventory to ``output``, and wait until every instance's setup
    has R and the spec's ``r_packages`` ready.

    ``client`` defaults to one for ``spec.region`` (``quotas``, ``ssm``: Service Quotas and
    SSM clients for the checks before the launch). ``timeout``: one deadline (s) for the
    launch, SSH and the host keys; ``setup_timeout`` the setup's (``wait=False``: no wait
    for it). ``address_of`` maps an instance to where this machine reaches its sshd
    (default :func:`default_address`), ``console_text`` gives its console output (default
    GetConsoleOutput), ``read_status`` its setup's status (default: over SSH). Host keys
    come from the console output; ``up`` fails if they cannot be read before the
    deadline, unless ``accept_new`` records the key an instance shows at first.
    ``progress`` is called with a :class:`~sshcluster.ec2.wait.Step` as ``up`` goes on.
    ``verify`` ends with the written inventory passing the preflight check and one R
    computation on every instance (:mod:`sshcluster.ec2.verify`); else ``up`` fails.
    ``job_id`` marks the cluster (tags and record) as started for that detached job;
    such an ``up`` refuses (:class:`~sshcluster.errors.EC2Error`) a name whose cluster
    exists (instances or a record here), as the job's fetch or stop ends its fleet.

    ``output`` is not overwritten unless ``up`` wrote it for this cluster (its header says
    so), or ``overwrite``: else :class:`OutputExistsError`, before anything starts.

    A retried ``up`` (its record and instances still there) continues that run, same
    ClientTokens, instead of starting a second fleet. On any failure, Ctrl-C, SIGTERM or
    SIGHUP (main thread; :mod:`sshcluster.ec2.signals`) what this run started is ended
    within ``cleanup_timeout`` s, a further signal noted, before the error (saying what
    was removed; a cleanup that failed keeps the record) or the KeyboardInterrupt
    (:class:`~sshcluster.ec2.signals.Interrupted` for a signal) propagates; a cluster an
    earlier ``up`` finished is left as it is, and, with ``keep_on_failure``, one whose
    setup failed (:class:`~sshcluster.ec2.ready.SetupFailed`).
    """
    report: Progress = progress or (lambda step: None)

    def note(signum: int) -> None:
        report(Step("note", 0, 0, f"{signal_name(signum)} received: finishing the cleanup "
                                  f"first (at most {cleanup_timeout:.0f} s)"))

    job = _Job(time.monotonic() + timeout, poll, accept_new, address_of, console_text,
               read_status, report, batch_size, wait, setup_timeout, keep_on_failure,
               cleanup_timeout, verify)
    if spec.identity_file and not os.access(spec.identity_file, os.R_OK):  # (before anything)
        raise InventoryError(f"{spec.identity_file} cannot be read here",
                             field="ec2.identity_file", hint=f"name the private key of key "
                             f"pair {spec.key_name}" if spec.key_name else None)
    with signal_guard(note) as guard:
        client = client or make_client(spec.region)
        output = Path(output)
        if not overwrite:
            refuse_foreign_output(output, spec)
        records = records or state_dir()
        return _guarded_up(spec, client=client, output=output,
                           owner=owner or default_owner(records), records=records,
                           run_id=run_id, job=job, job_id=job_id,
                           guard=guard, quotas=quotas, ssm=ssm)


def _guarded_up(spec: EC2Spec, *, client: EC2Client, output: Path, owner: str,
                records: Path, run_id: str | None, job: _Job, guard: SignalGuard,
                quotas: Any, ssm: Any, job_id: str | None = None) -> Cluster:
    earlier = find_record(records, spec.region, spec.name)
    if (earlier is not None and earlier.status == "starting" and earlier.process
            and on_this_machine(earlier.process)
            and earlier.process.get("pid") != str(os.getpid())
            and process_alive(earlier.process)):
        # Another up of this cluster runs here: continuing its run, or failing over it,
        # would end or orphan what it is starting.
        raise EC2Error(f"an 'sshcluster ec2 up' of cluster {spec.name} is still running on "
                       f"this machine (pid {earlier.process['pid']})",
                       hint="wait for it to finish, or stop it (Ctrl-C in its terminal, or "
                            f"kill {earlier.process['pid']}): it ends what it started")
    # Only the caller's own instances of this name count: a colleague's cluster of the
    # same name in a shared account is theirs. Instances already shutting down (a down
    # just before) are on their way out.
    existing = [i for i in cluster_instances(client, spec.name,
                                             owner=my_owners(owner, records))
                if i.state != "shutting-down"]
    if job_id is not None and (existing or earlier is not None):  # (its fetch ends it)
        raise EC2Error(f"cluster {spec.name} already exists in {spec.region} ("
                       f"{f'{len(existing)} instance(s)' if existing else 'a record here'}"
                       "); a job's fleet must be a cluster of its own", hint="give the spec "
                       f"another name, or end it first: sshcluster ec2 down {spec.name}")
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
    plan = plan_launch(client, spec, quotas=quotas, ssm=ssm, running_here=len(existing))
    for text in [*plan.warnings, *(f"not checked: {n}" for n in plan.notes)]:
        job.report(Step("note", 0, 0, text))
    reference = primary_reference(spec) if job.wait else None
    why = by_sync(spec, plan.image, reference)
    if why:
        job.report(Step("note", 0, 0, why))
    known_hosts = output.parent / f"{spec.name}.known_hosts"
    record = Record(spec.name, spec.region, run_id, owner, expires, "starting",
                    key_file=str(key_file.absolute()) if key_file else None,
                    known_hosts=str(known_hosts.absolute()),
                    inventory=str(output.absolute()),
                    instance_ids=tuple(i.id for i in existing), image=plan.image.id,
                    process=this_process(), job=job_id)
    started = Started(instance_ids=list(record.instance_ids), critical=guard.critical)

    def remember(status: str = "starting") -> None:
        """Write the ids created so far into the record: a killed up leaves them for gc."""
        save_record(records, replace(record, status=status,
                                     instance_ids=tuple(started.instance_ids),
                                     security_group=started.security_group,
                                     key_pair=started.key_pair))

    started.changed = remember
    # Written before anything exists, so that gc on this machine never mistakes a
    # cluster that is still starting for an orphan.
    save_record(records, record)
    try:
        cluster = _up(spec, client=client, run=Run(run_id, owner, expires, job_id),
                      plan=plan,
                      output=output, known_hosts=known_hosts, key_file=key_file,
                      started=started, job=job, sync_from=reference if why else None)
    except BaseException as caught:
        exc = guard.as_interrupt(caught)
        with guard.cleanup():  # first: a signal from here on is only noted
            keep = job.keep_on_failure and isinstance(exc, SetupFailed)
            if finished or keep:
                remember("up")
                kept = ("kept (--keep-on-failure) to look at" if keep else
                        "the cluster an earlier up started is left as it was")
                undone = f"{kept}; 'sshcluster ec2 down {spec.name}' ends it"
            else:
                if key_file:
                    started.files.append(key_file)  # its key pair goes with the run
                undone, complete = undo_run(client, spec.name, run_id, owner, started,
                                         timeout=job.cleanup_timeout, poll=job.poll)
                if complete:
                    remove_record(records, spec.region, spec.name)
                else:
                    # (kept as it is, "starting", with what was made: once this process
                    # has ended, ls shows it orphaned and gc ends it; down finds its region)
                    remember()
            if isinstance(exc, Interrupted):
                what = f"interrupted by {signal_name(exc.signum)}"
            else:
                what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            note = f"up {spec.name} {what}; {undone}"
            with contextlib.suppress(Exception):  # a terminal that is gone cannot be told
                job.report(Step("aborted", 0, spec.count, note))
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            if exc is caught:
                raise
            raise exc from None
        guard.raise_noted()  # a signal during the cleanup of a failure: its exit status
        if isinstance(exc, SshclusterError):
            # The same error, with what became of the cluster: its type and data stay.
            exc.message = f"{exc.message}\n{note}"
            exc.args = (exc.message,)
            raise
        raise EC2Error(f"{type(exc).__name__}: {exc}\n{note}") from exc
    remember("up")
    return cluster


def _up(spec: EC2Spec, *, client: EC2Client, run: Run, plan: LaunchPlan, output: Path,
        known_hosts: Path, key_file: Path | None, started: Started, job: _Job,
        sync_from: Reference | None = None) -> Cluster:
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
                group = create_security_group(client, spec, run, plan.vpc)
                assert group is not None
                started.security_group = group
                started.changed()
            groups = [group]
            allow_ingress(client, spec, group, poll=min(job.poll, 1.0))

    report = job.report
    # (packages sent by sync are not built at first boot: R alone is installed there)
    launch(client, replace(spec, r_packages=()) if sync_from else spec, run, plan,
           groups=groups, key_name=key_name,
           batch_size=job.batch_size, started=started, deadline=job.deadline,
           poll=min(job.poll, 1.0),
           report=lambda n: report(Step("launch", n, spec.count, f"started {n} of {spec.count}")),
           note=lambda text: report(Step("note", 0, 0, text)))
    ids = sorted(started.instance_ids)  # as RunInstances answered (and a retried run's)
    report(Step("running", 0, len(ids), "waiting for the instances to run"))
    instances = wait_running(client, ids, deadline=job.deadline, poll=job.poll)
    report(Step("running", len(ids), len(ids), "all instances running"))

    address_of = job.address_of or default_address(spec)
    endpoints = {i.id: address_of(i) for i in instances}
    watch = instance_watch(client, ids)  # an instance that ends while up waits fails it
    wait_ssh(endpoints, deadline=job.deadline, poll=job.poll, report=report, watch=watch)
    keys = host_keys(instances, endpoints, console_text=job.console_text or
                     console_reader(client), accept_new=job.accept_new,
                     deadline=job.deadline, poll=job.poll, report=report, watch=watch)
    inventory, steps = write_output(
        spec, run_id=run.run_id, expires=run.expires, output=output, known_hosts=known_hosts,
        key_file=key_file, ncore=plan.ncore(spec), instances=instances, endpoints=endpoints,
        keys=keys)
    started.files += [output, known_hosts]  # they describe this run only
    if job.wait:
        read_status = job.read_status or ssh_status_reader(
            spec.user, known_hosts=known_hosts,
            identity_file=str(key_file) if key_file else spec.identity_file)
        wait_ready(instances, endpoints, read_status=read_status,
                   deadline=time.monotonic() + job.setup_timeout, poll=job.poll,
                   report=report, packages=() if sync_from else spec.r_packages,
                   watch=watch)
        if sync_from:
            send_packages(inventory, sync_from, {endpoints[i.id].host: i.id for i in instances},
                          report=lambda text: report(Step("sync", 0, len(ids), text)))
    if job.verify:
        from sshcluster.ec2.verify import verify_inventory

        report(Step("verify", 0, len(ids), "checking the inventory and computing in R"))
        verify_inventory(output, len(ids))
    report(Step("done", len(ids), len(ids), f"wrote {output}"))
    return Cluster(spec.name, spec.region, run.run_id, run.expires, tuple(instances),
                   tuple(endpoints[i.id] for i in instances), inventory, output,
                   known_hosts, key_file, steps, image=plan.image.id, ready=job.wait)


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
        report(Step("note", 0, 0, f"{signal_name(signum)} received: ending the cluster first"))

    with signal_guard(note) as guard:
        started = up(spec, client=client, output=output, records=records, **options)
        try:
            yield started
        finally:
            with guard.cleanup():
                try:
                    down(spec.name, client=client, records=records, owner=options.get(
                        "owner"), timeout=options.get("cleanup_timeout", CLEANUP_TIMEOUT))
                except SshclusterError as e:  # (expired credentials, say: it still runs)
                    raise EC2Error(f"cluster {spec.name} may still be running: ending it "
                                   f"failed: {e.message}", hint=f"run 'sshcluster ec2 down "
                                   f"{spec.name} --region {spec.region}'") from e
        guard.raise_noted()


__all__ = ["SETUP_TIMEOUT", "Cluster", "Seams", "cluster", "default_address", "next_steps", "up"]
