"""``sshcluster run --ec2 spec.yaml SCRIPT``: a fleet for one job. ``ec2 up``, then the
job on the inventory it wrote, then ``ec2 down``: also after a failed check, a failing
script, an error, Ctrl-C, SIGTERM or SIGHUP (one signal guard covers the three steps;
a signal during ``down`` is noted, not obeyed half-way). ``keep`` keeps the fleet (it
still ends at the spec's ``max_lifetime``, as every ``ec2 up`` fleet does).

    result = run_ec2("ec2.yaml", "fit.R", RunOptions(args=("10",)))
    result.phases["ec2_up"], result.phases["ec2_down"]

Detached (``run --ec2 --detach``, :func:`start_ec2_detached`): ``up`` with the fleet
tagged and recorded as the job's (``sshcluster:job``; a name whose cluster exists is
refused, as the job's fetch or stop ends its fleet), then the detached job on its
first instance, which reaches the others with a key made for this job alone (its
public half is added to each instance's ``authorized_keys``) and their host keys from
the console, at their private addresses. If the job cannot start, or a signal comes,
the fleet ends at once. Afterwards the fleet lives until ``fetch`` has brought the
ended job's results or ``stop`` stopped it (:func:`release_fleet`, unless ``keep``;
only the job's own run of that name),
or until ``max_lifetime``: an ended job whose results are never fetched keeps its
fleet until then (its instances power off; ``ec2 gc`` removes the rest).

    job = start_ec2_detached("ec2.yaml", "fit.R")
    fetch_job(job.job)               # once it ended: results, then the fleet ends
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

from sshcluster.errors import HostError, SshclusterError
from sshcluster.files import atomic_write
from sshcluster.inventory import Inventory, load_inventory
from sshcluster.jobs.detached import (
    DetachedJob,
    JobError,
    PrimaryAccess,
    load_job,
    start_detached,
    stop_remote,
)
from sshcluster.jobs.job import RunError, RunOptions, check_here, run
from sshcluster.jobs.leases import JobInfo
from sshcluster.jobs.record import RunResult, runs_dir, write_record
from sshcluster.jobs.remote import run_script
from sshcluster.jobs.results import ResultsError
from sshcluster.net import known_hosts_name

#: The file in a detached job's record that names its fleet.
FLEET_FILE = "fleet.json"


def run_ec2(spec_file: str | os.PathLike[str], script: str | os.PathLike[str],
            options: RunOptions | None = None, *, keep: bool = False, seams: Any = None,
            up_timeout: float = 900.0, wait_setup: bool = True,
            stdout: BinaryIO | None = None, stderr: BinaryIO | None = None,
            on_event: Callable[[str], None] | None = None) -> RunResult:
    """Run ``script`` on a fleet started from the EC2 spec ``spec_file`` for this job
    alone (see the module's text); the fleet's inventory is kept in
    ``runs/ec2/NAME/hosts.yaml``. ``seams`` (an :class:`sshcluster.ec2.Seams`) says how
    to reach the instances when not EC2's own way (tests); ``up_timeout`` and
    ``wait_setup`` are ``ec2 up``'s ``--timeout`` and not ``--no-wait``. What the job
    needs here (the script, Rscript, ``options.results``) is checked before any
    instance starts (:func:`~sshcluster.jobs.job.check_here`). A signal
    during ``up`` raises :class:`~sshcluster.ec2.signals.Interrupted` once ``up`` has
    cleaned up; during the job, the result says which signal ended it."""
    from sshcluster import ec2  # (boto3 only when asked for)
    from sshcluster.ec2.signals import signal_guard

    tell = on_event or (lambda message: None)
    spec = ec2.load_spec(spec_file)
    try:  # (what the job would find wrong here once the fleet is up: not worth a fleet)
        check_here(script, options or RunOptions())
    except (RunError, ResultsError) as e:
        raise type(e)(f"{e.message}; no instance was started", hint=e.hint) from None
    where = runs_dir() / "ec2" / spec.name
    where.mkdir(parents=True, exist_ok=True)
    up_options = _up_options(seams or ec2.Seams(), up_timeout, wait_setup, tell)
    t0 = time.monotonic()
    tell(f"ec2: starting {spec.count} instances for the job (cluster {spec.name})")
    if keep:
        with signal_guard():
            cluster = ec2.up(spec, output=where / "hosts.yaml", **up_options)
            t_up = time.monotonic() - t0
            result = run(cluster.inventory_path, script, options, stdout=stdout,
                         stderr=stderr, on_event=on_event)
        tell(f"ec2: cluster {spec.name} kept (inventory {cluster.inventory_path}); end it "
             f"with: sshcluster ec2 down {spec.name}")
        return _with_ec2(result, t_up, None)
    with ec2.cluster(spec, output=where / "hosts.yaml", **up_options) as cluster:
        t_up = time.monotonic() - t0
        try:
            result = run(cluster.inventory_path, script, options, stdout=stdout,
                         stderr=stderr, on_event=on_event)
        finally:
            tell(f"ec2: ending cluster {spec.name}")
            t_end = time.monotonic()
    tell(f"ec2: cluster {spec.name} ended")
    return _with_ec2(result, t_up, time.monotonic() - t_end)


def _up_options(seam: Any, up_timeout: float, wait_setup: bool,
                tell: Callable[[str], None]) -> dict[str, Any]:
    said: set[tuple[str, int]] = set()

    def progress(step: Any) -> None:  # (each stage's count once: up polls)
        if (step.stage, step.done) not in said:
            said.add((step.stage, step.done))
            tell(f"ec2 up: {step.stage} {step.done}/{step.total} {step.message}".rstrip())

    return {"address_of": seam.address_of, "console_text": seam.console_text,
            "read_status": seam.read_status, "timeout": up_timeout, "wait": wait_setup,
            "progress": progress}


def _with_ec2(result: RunResult, t_up: float, t_down: float | None) -> RunResult:
    phases = {"ec2_up": t_up, **result.phases}
    if t_down is not None:
        phases["ec2_down"] = t_down
    done = replace(result, phases=phases)
    write_record(done)
    return done


def start_ec2_detached(spec_file: str | os.PathLike[str], script: str | os.PathLike[str],
                       options: RunOptions | None = None, *, keep: bool = False,
                       primary: str | None = None, seams: Any = None,
                       up_timeout: float = 900.0, wait_setup: bool = True,
                       on_event: Callable[[str], None] | None = None) -> DetachedJob:
    """Start the fleet of the EC2 spec ``spec_file`` for one detached job, and the job
    on it (see the module's text); returns once the job holds its hosts. ``primary``:
    which instance runs the job, its number (1 to the spec's ``count``; checked before
    anything starts; by default the first). ``seams``, ``up_timeout`` and
    ``wait_setup`` are as for :func:`run_ec2`. A job that cannot start, an error or a
    signal ends the fleet and removes the job's record before the exception propagates
    (a signal: :class:`~sshcluster.ec2.signals.Interrupted`)."""
    from sshcluster import ec2
    from sshcluster.ec2.signals import signal_guard

    tell = on_event or (lambda message: None)
    source = Path(script)
    if not source.is_file():
        raise RunError(f"{source}: no such script")
    spec = ec2.load_spec(spec_file)
    if primary is not None and not (primary.isdigit() and 1 <= int(primary) <= spec.count):
        raise JobError(f"--primary {primary}: not an instance of the fleet (its instances: "
                       f"1 to {spec.count}); nothing was started",
                       hint="with --ec2, --primary is the number of the instance")
    job = JobInfo.new(str(source))
    where = runs_dir() / "ec2" / spec.name
    where.mkdir(parents=True, exist_ok=True)
    seam = seams or ec2.Seams()
    tell(f"ec2: starting {spec.count} instances for job {job.job} (cluster {spec.name})")
    with signal_guard() as guard:
        cluster = ec2.up(spec, output=where / "hosts.yaml", job_id=job.job,
                         **_up_options(seam, up_timeout, wait_setup, tell))
        fleet = {"name": spec.name, "region": spec.region, "run_id": cluster.run_id,
                 "keep": keep,
                 "inventory": str(cluster.inventory_path), "expires":
                 ec2.format_time(cluster.expires), "released": None}
        try:
            # (first: a job killed from here on leaves a fleet its stop can end)
            (runs_dir() / job.job).mkdir(parents=True, mode=0o700)
            atomic_write(runs_dir() / job.job / FLEET_FILE, json.dumps(fleet, indent=2) + "\n")
            access = grant_access(cluster, seam.inner_address_of, job.job)
            first = cluster.inventory.hosts[int(primary or 1) - 1].label
            record = start_detached(cluster.inventory_path, source, options, primary=first,
                                    job=job, access=access, on_event=on_event)
        except BaseException as caught:
            exc = guard.as_interrupt(caught)
            with guard.cleanup():
                tell(f"ec2: ending cluster {spec.name} (job {job.job} did not start)")
                with contextlib.suppress(SshclusterError, OSError, StopIteration):
                    _, inv, host = load_job(job.job)  # (a supervisor that did start)
                    stop_remote(inv, host, job.job)
                with contextlib.suppress(SshclusterError, OSError):
                    _revoke(cluster.inventory, job.job)
                with contextlib.suppress(OSError):
                    # (a failed start removed the job's record: the fleet's is kept until
                    # the fleet is down, so that 'stop JOB' can still end it)
                    (runs_dir() / job.job).mkdir(parents=True, mode=0o700, exist_ok=True)
                    atomic_write(runs_dir() / job.job / FLEET_FILE,
                                 json.dumps(fleet, indent=2) + "\n")
                _down_if_ours(fleet, job.job)
                shutil.rmtree(runs_dir() / job.job, ignore_errors=True)  # (never ran)
            if exc is not caught:
                raise exc from None
            raise
    tell(f"ec2: cluster {spec.name} lives until 'sshcluster fetch {job.job}' brought the "
         f"ended job's results" + (" (--keep: and after)" if keep else "") +
         f", or 'sshcluster stop {job.job}', or at the latest until "
         f"{ec2.format_time(cluster.expires)}")
    return record


def grant_access(cluster: Any, inner_address_of: Any, job: str) -> PrimaryAccess:
    """Let the fleet's instances reach each other for detached job ``job``: a key made
    for it (ssh-keygen, ed25519) that each instance's ``authorized_keys`` takes, their
    host keys under the addresses they reach each other at (``inner_address_of``, by
    default the private IP, port 22), and their login directories."""
    from sshcluster.ec2 import Endpoint

    def private(instance: Any) -> Endpoint:
        if not instance.private_ip:
            raise JobError(f"instance {instance.id} has no private IP", job=job)
        return Endpoint(instance.private_ip, 22)

    inner = inner_address_of or private
    inv: Inventory = cluster.inventory
    addresses: dict[str, tuple[str, int]] = {}
    renamed: dict[str, str] = {}
    for host, instance, outer in zip(inv.hosts, cluster.instances, cluster.endpoints,
                                     strict=True):
        e = inner(instance)
        addresses[host.label] = (e.host, e.port)
        renamed[known_hosts_name(outer.host, outer.port)] = known_hosts_name(e.host, e.port)
    known = "".join(f"{renamed[name]} {rest}\n" for name, _, rest in (
        line.partition(" ") for line in Path(cluster.known_hosts).read_text().splitlines())
        if name in renamed)
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", _mark(job),
                        "-f", f"{d}/key"], check=True, capture_output=True, timeout=30)
        key, public = Path(d, "key").read_bytes(), Path(d, "key.pub").read_text().strip()
    said = _each_host(inv, _AUTHORIZE, {"KEY": public, "OPTIONS": KEY_OPTIONS},
                      "authorizing the job's key")
    failed = {label: out for label, out in said.items() if isinstance(out, HostError)}
    if failed:
        raise JobError(f"job {job}: " + "; ".join(e.message for e in failed.values()), job=job)
    homes = {label: out.decode().strip().splitlines()[-1] for label, out in said.items()
             if isinstance(out, bytes)}
    return PrimaryAccess(addresses=addresses, key=key, known_hosts=known.encode(), homes=homes)


def _mark(job: str) -> str:
    return f"sshcluster-job-{job}"


#: What the job's key may not do on the instances. Not ``restrict``: the launch's
#: reverse tunnel (``ssh -R``) is a port forwarding.
KEY_OPTIONS = "no-pty,no-agent-forwarding,no-X11-forwarding"

_AUTHORIZE = """\
umask 077
f="$HOME/.ssh/authorized_keys"
mkdir -p "$HOME/.ssh" && printf '%s %s\\n' "$OPTIONS" "$KEY" >>"$f" || exit 1
printf '%s\\n' "$HOME"
"""

# In place (cat >, not mv): the file keeps its owner, mode and links.
_REVOKE = """\
f="$HOME/.ssh/authorized_keys"
[ -f "$f" ] || exit 0
grep -v -F -e " $MARK" "$f" >"$f.sshcluster-$$"
[ $? -le 1 ] && cat "$f.sshcluster-$$" >"$f"
rm -f "$f.sshcluster-$$"
"""


def _each_host(inv: Inventory, script: str, values: Mapping[str, str],
               what: str) -> dict[str, bytes | HostError]:
    def one(host: Any) -> bytes | HostError:
        try:
            return run_script(inv, host, script, values, what=what)
        except HostError as e:
            return e

    with ThreadPoolExecutor(max(1, min(16, len(inv.hosts)))) as pool:
        return dict(zip((h.label for h in inv.hosts), pool.map(one, inv.hosts), strict=True))


def _revoke(inv: Inventory, job: str) -> None:
    """The job's key off every host that can be reached (a host that cannot is gone,
    or going: the fleet ends)."""
    _each_host(inv, _REVOKE, {"MARK": _mark(job)}, "removing the job's key")


def _down_if_ours(fleet: Mapping[str, Any], job: str) -> str:
    """``ec2 down`` of the job's fleet, only while this machine's record of the cluster
    is still that fleet's (its run, its job): a cluster of that name started since, by
    the user or for another job, is left alone. What became of it."""
    from sshcluster import ec2
    from sshcluster.ec2.records import find_record

    name = fleet["name"]
    record = find_record(ec2.state_dir(), fleet["region"], name)
    if record is None:
        return f"cluster {name} had ended already"
    if record.job != job or (fleet.get("run_id") and record.run_id != fleet["run_id"]):
        return (f"cluster {name} is no longer job {job}'s fleet (it is run {record.run_id}"
                + (f", job {record.job}" if record.job else "") + "): left alone")
    report = ec2.down(name, region=fleet["region"])
    return f"cluster {name} ended: {report.summary()}"


def fleet_of(job: str) -> dict[str, Any] | None:
    """What the record of detached job ``job`` says of its fleet, or None (no fleet)."""
    path = runs_dir() / job / FLEET_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def release_fleet(job: str, on_event: Callable[[str], None] | None = None, *,
                  by: str = "fetch") -> str | None:
    """The job's part of its fleet ends: its key leaves every instance's
    ``authorized_keys``, and, unless the job was started with ``keep``, the fleet ends
    (``ec2 down``), if this machine's record of the cluster is still the job's run (a
    cluster of that name started since is left alone). Once only. What was done, for
    the user (None: no fleet, or done before). ``by``: what released it (``fetch``,
    ``stop``), for a later fetch to say."""
    fleet = fleet_of(job)
    if fleet is None or fleet.get("released"):
        return None
    tell = on_event or (lambda message: None)
    with contextlib.suppress(SshclusterError, OSError):
        _revoke(load_inventory(fleet["inventory"]), job)
    if fleet.get("keep"):
        said = (f"cluster {fleet['name']} kept (--keep); end it with: sshcluster ec2 "
                f"down {fleet['name']}")
    else:
        tell(f"ec2: ending cluster {fleet['name']}")
        said = _down_if_ours(fleet, job)
    fleet["released"], fleet["released_by"] = time.time(), by
    atomic_write(runs_dir() / job / FLEET_FILE, json.dumps(fleet, indent=2) + "\n")
    tell(f"ec2: {said}")
    return said
