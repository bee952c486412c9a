"""Detached jobs: ``sshcluster run --detach``. The job's primary R runs on a host of the
cluster, under a small supervisor there (``supervise.sh``) that outlives the user's
connection; the user comes back with ``jobs``, ``logs``, ``stop`` and ``fetch``
(:mod:`sshcluster.jobs.control`).

    job = start_detached("hosts.yaml", "fit.R", RunOptions(args=("10",)))
    job_status(job.job).state        # leasing, waiting, running, done, lost ...
    stop_job(job.job)                # stops R, its cluster and the leases
    fetch_job(job.job)               # results/ from every host, the log, run.json

What runs where:

* This machine checks the hosts (as ``run`` does), renders the bootstrap *for the
  primary host* (which reaches the other hosts with its own ssh keys and known_hosts,
  as push's chain does), and copies the job's files to
  ``~/.cache/sshcluster/jobs/JOB`` on the primary host, then starts the supervisor
  there with ``setsid`` and waits only for its leases.
* The supervisor takes every host's lease (a lease session from the primary host to
  each host), runs the script in a fresh ``Rscript`` with ``parallelCluster`` ready,
  and when R ends writes its status and releases the leases. It owns everything of
  the job: stopped (``sshcluster stop``: SIGTERM, then SIGKILL for its process group
  after :data:`STOP_GRACE` seconds) or killed outright, nothing of the job is left
  on any host (R's end stops the cluster; the leases end with the supervisor).
* The job's record here (``runs/JOB/detached.json``) says where it runs; ``fetch``
  completes it with the log, the workers' logs and ``run.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from sshcluster.bootstrap import END_OF_SCRIPT, READ_SCRIPT, write_bootstrap
from sshcluster.check.preflight import check, verified_inventory
from sshcluster.dump import dump_inventory
from sshcluster.errors import HostError, HostLeased, SshclusterError
from sshcluster.inventory import Host, Inventory, Primary, load_inventory
from sshcluster.jobs.job import RunError, RunOptions
from sshcluster.jobs.leases import (
    LEASE_SCRIPT,
    LEASE_TIMEOUT,
    JobInfo,
    describe,
    lease_timing,
    leased_elsewhere,
)
from sshcluster.jobs.record import runs_dir
from sshcluster.jobs.remote import run_script, settings
from sshcluster.jobs.workerlog import WORKER_LOGS, checked_as_a_job, job_render_options
from sshcluster.quoting import shell_join, shell_quote
from sshcluster.ssh.command import SESSION_OPTIONS, ssh_command

SUPERVISOR = resources.files("sshcluster.jobs").joinpath("supervise.sh")
DRIVER = resources.files("sshcluster.jobs").joinpath("driver.R")
#: Where a detached job's files live on its primary host (relative to the login dir).
JOBS_DIR = ".cache/sshcluster/jobs"
#: The file in the job's directory that names its workers' logs, one a line.
WORKER_LOG_NAMES = "worker-logs"
#: Seconds the supervisor gives R to end once asked (then SIGKILL).
STOP_TIMEOUT = 20
#: Seconds ``stop`` waits for the supervisor to end in order before it kills the
#: job's whole process group: R's STOP_TIMEOUT, then up to 10 s for what R started to
#: let go of its temporary directory (supervise.sh's drop_tmp), and the leases' end.
STOP_GRACE = STOP_TIMEOUT + 20.0
#: The supervisor's states that mean the job has not ended.
LIVE = ("leasing", "waiting", "running")


class JobError(SshclusterError):
    """A detached job could not be started, found or asked; ``job`` names it."""

    def __init__(self, message: str, *, job: str | None = None,
                 hint: str | None = None) -> None:
        self.job = job
        super().__init__(message, hint=hint)


class NoSuchJob(JobError):
    """No record of that job on this machine."""

    exit_code = 2


@dataclass(frozen=True)
class DetachedJob:
    """Where a detached job runs: its ``primary`` host (label), the ``hosts`` it
    leases, its ``remote_dir`` (on the primary host, relative to the login
    directory) and its record here (``run_dir``, with ``inventory.yaml``)."""

    job: str
    script: str
    args: tuple[str, ...]
    primary: str
    hosts: tuple[str, ...]
    left_out: tuple[str, ...]
    remote_dir: str
    run_dir: str
    started: str
    #: ``--worker-output``: ``logs`` shows what the workers print too.
    worker_output: bool = False

    def to_dict(self) -> dict[str, Any]:
        """As ``detached.json`` holds it."""
        data = asdict(self)
        data["args"], data["hosts"] = list(self.args), list(self.hosts)
        data["left_out"] = list(self.left_out)
        return data


@dataclass(frozen=True)
class PrimaryAccess:
    """How a detached job's primary host reaches the other hosts when not with its own
    ssh keys and known_hosts (an EC2 fleet's instances, :mod:`sshcluster.jobs.ec2job`):
    ``addresses`` maps each host's label, as this machine reaches it, to the address
    and port the primary host reaches it at; ``key`` is a private key every host
    authorizes; ``known_hosts`` their host keys under those addresses; ``homes`` each
    host's login directory (the files go to the job's directory there, and ssh takes
    absolute paths). Its ``repr`` leaves the key out."""

    addresses: Mapping[str, tuple[str, int]]
    key: bytes = field(repr=False)
    known_hosts: bytes
    homes: Mapping[str, str]


#: Where :class:`PrimaryAccess`'s files go in the job's directory on the primary host.
ACCESS_KEY, ACCESS_KNOWN_HOSTS = "access_key", "access_known_hosts"


@dataclass(frozen=True)
class JobStatus:
    """What a job is doing. ``state``: ``leasing``, ``waiting`` (in line for a host),
    ``running``, ``done`` (status 0), ``failed`` (a non-zero status, or the job could
    not start: ``detail`` says why), ``stopped`` (by ``sshcluster stop``), ``lost``
    (its primary host cannot be reached: ``detail`` has ssh's words) or ``gone`` (its
    directory on the primary host is no longer there). ``seconds`` is how long it has
    run (to its end, if it ended); ``status`` its exit status once ended."""

    job: str
    state: str
    primary: str
    script: str
    seconds: float | None = None
    status: int | None = None
    detail: str | None = None
    detached: bool = True

    @property
    def live(self) -> bool:
        """Whether the job has not ended (as far as anyone can tell)."""
        return self.state in (*LIVE, "lost")


def remote_dir(job: str) -> str:
    return f"{JOBS_DIR}/{job}"


def enter_script(job: str) -> str:
    return f'cd "$HOME"/{shell_quote(remote_dir(job))} 2>/dev/null || {{ echo gone; exit 0; }}\n'


def _primary_inventory(ready: Inventory, primary: Host, job: str,
                       access: PrimaryAccess | None = None) -> Inventory:
    """The inventory as the primary host uses it: its own address as the primary's,
    and its own ssh keys and known_hosts (this machine's paths mean nothing there), or
    ``access``'s addresses, key and known_hosts (in the job's directory there)."""
    if access is None:
        return replace(ready, primary=Primary(host=primary.host), known_hosts=None,
                       hosts=tuple(replace(h, identity_file=None) for h in ready.hosts))
    there = f"{access.homes[primary.label].rstrip('/')}/{remote_dir(job)}"

    def inner(h: Host) -> Host:
        address, port = access.addresses[h.label]
        return replace(h, host=address, ssh_port=None if port == 22 else port,
                       identity_file=f"{there}/{ACCESS_KEY}")

    return replace(ready, primary=Primary(host=access.addresses[primary.label][0]),
                   known_hosts=f"{there}/{ACCESS_KNOWN_HOSTS}",
                   hosts=tuple(inner(h) for h in ready.hosts))


def _lease_command(inv: Inventory, host: Host, primary: Host) -> str:
    if host.label == primary.label:  # its own lease: no ssh needed
        return f"exec sh -c {shell_quote(READ_SCRIPT)}\n"
    dest = ["-l", host.user, host.host] if host.user else [host.host]
    # (run by the primary host's ssh, whose version is not this machine's: without the
    # overrides that only OpenSSH 8.7 and later take)
    words = [*ssh_command(inv, host, overrides=False), *SESSION_OPTIONS, *dest,
             f"exec sh -c {shell_quote(READ_SCRIPT)}"]
    return "exec " + shell_join(words) + "\n"


def _lease_input(job: JobInfo, mode: str) -> str:
    values = {"MODE": mode, "JOB": job.job, "WHO": job.who, "SINCE": job.since,
              "SCRIPT": job.script, "SILENCE": str(lease_timing()[1])}
    clean = {k: " ".join(v.split()) for k, v in values.items()}
    return settings(clean) + LEASE_SCRIPT + END_OF_SCRIPT + "\n"


def _job_files(pinv: Inventory, primary: Host, job: JobInfo, source: Path,
               args: Sequence[str], wait: bool, wait_timeout: float) -> dict[str, bytes]:
    hosts = sorted(pinv.hosts, key=lambda h: h.label) if wait else list(pinv.hosts)
    files: dict[str, bytes] = {
        "supervise.sh": SUPERVISOR.read_bytes(),
        "driver.R": DRIVER.read_bytes(),
        "script.R": source.read_bytes(),
        "args.sh": ("set --" + "".join(" " + shell_quote(a) for a in args) + "\n").encode(),
        "hosts": "".join(h.label + "\n" for h in hosts).encode(),
        "job.env": settings({
            "JOB": job.job, "RSCRIPT": primary.rscript or "Rscript",
            "MODE": "wait" if wait else "try", "N": str(len(hosts)),
            "LEASE_TIMEOUT": str(int(wait_timeout if wait else LEASE_TIMEOUT)),
            "STOP_TIMEOUT": str(STOP_TIMEOUT), "HEARTBEAT": str(lease_timing()[0])}).encode(),
    }
    mode = "wait" if wait else "try"
    for i, h in enumerate(hosts, 1):
        files[f"lease.{i}.in"] = _lease_input(job, mode).encode()
        files[f"lease.{i}.cmd"] = _lease_command(pinv, h, primary).encode()
    return files


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


_START = """\
umask 077
command -v setsid >/dev/null 2>&1 || { echo "setsid(1) not found (util-linux)" >&2; exit 1; }
mkdir -p "$HOME"/{dir} && cd "$HOME"/{dir} && tar -xf - || exit 1
# (-f forks; a setsid without it, util-linux before 2.31 or BusyBox's, runs it in the
# background, where it is no group leader, so it gets a session of its own all the same)
if setsid -f true 2>/dev/null; then setsid -f sh ./supervise.sh </dev/null >supervisor.log 2>&1
else setsid sh ./supervise.sh </dev/null >supervisor.log 2>&1 &
fi
i=0
while [ $i -lt {polls} ]; do
  s=$(cat state 2>/dev/null)
  case "$s" in running|waiting\\ *|refused\\ *|failed\\ *) printf '%s\\n' "$s"; exit 0 ;; esac
  # (ended before it was seen running: a refusal or failure says so in why)
  [ "$s" = ended ] && { cat why 2>/dev/null || echo ended; exit 0; }
  sleep 0.1; i=$((i + 1))
done
echo "timeout"
"""


def start_detached(inventory: Inventory | str | os.PathLike[str],
                   script: str | os.PathLike[str], options: RunOptions | None = None, *,
                   primary: str | None = None, job: JobInfo | None = None,
                   access: PrimaryAccess | None = None,
                   on_event: Callable[[str], None] | None = None) -> DetachedJob:
    """Start ``script`` as a detached job (see the module's text) on the hosts of
    ``inventory`` that pass the check; ``primary`` names the host (its label) whose
    supervisor runs it, by default the first. Returns once every host is leased to
    it (or, with ``options.wait``, once it waits in line). ``job`` is the job's id and
    owner when the caller made them first (an EC2 fleet is tagged with it before);
    ``access``: how the primary host reaches the others, when not with its own keys
    (:class:`PrimaryAccess`). A host leased to another job raises
    :class:`~sshcluster.errors.HostLeased`; a failed check
    :class:`~sshcluster.errors.CheckFailed`; a job that cannot start
    :class:`JobError`."""
    opts = options or RunOptions()
    tell = on_event or (lambda message: None)
    inv = inventory if isinstance(inventory, Inventory) else load_inventory(inventory)
    source = Path(script)
    if not source.is_file():
        raise RunError(f"{source}: no such script")
    report = check(checked_as_a_job(inv), timeout=opts.timeout, concurrency=opts.concurrency,
                   accept_new=opts.accept_new)
    if not opts.allow_partial:
        leased_elsewhere(inv, report, job.job if job else None, wait=opts.wait)
    ready = verified_inventory(report, inv, allow_partial=opts.allow_partial)
    if primary is None:
        host = ready.hosts[0]
    else:
        found = [h for h in ready.hosts if primary in (h.label, h.host)]
        if not found:
            raise JobError(f"--primary {primary}: not a host of the job (its hosts: "
                           f"{', '.join(h.label for h in ready.hosts)})",
                           hint="name one of the inventory's hosts that passed the check")
        host = found[0]
    job = job or JobInfo.new(str(source))
    run_dir = runs_dir() / job.job
    run_dir.mkdir(parents=True, mode=0o700, exist_ok=True)  # (an EC2 job's fleet.json)
    shutil.copyfile(source, run_dir / "script.R")
    render = job_render_options(ready, opts.render, f"~/{remote_dir(job.job)}/{WORKER_LOGS}",
                                checked=report, own_ports=True)
    pinv = _primary_inventory(ready, host, job.job, access)
    write_bootstrap(pinv, run_dir / "cluster.R", render)
    pindex = [h.label for h in ready.hosts].index(host.label)
    files = _job_files(pinv, pinv.hosts[pindex], job, source, opts.args, opts.wait,
                       opts.wait_timeout)
    files["cluster.R"] = (run_dir / "cluster.R").read_bytes()
    if access is not None:
        files[ACCESS_KEY], files[ACCESS_KNOWN_HOSTS] = access.key, access.known_hosts
    # (the names the launch gives the workers' logs: see R/launch/node.R)
    logs = dict.fromkeys(re.sub(r"[^A-Za-z0-9._-]", "_", h.host) + ".log" for h in pinv.hosts)
    files[WORKER_LOG_NAMES] = "".join(f"{WORKER_LOGS}/{name}\n" for name in logs).encode()
    (run_dir / "inventory.yaml").write_text(dump_inventory(ready, header=f"job {job.job}"))
    record = DetachedJob(job=job.job, script=str(source), args=tuple(opts.args),
                         primary=host.label, hosts=tuple(h.label for h in ready.hosts),
                         left_out=tuple(h.label for h in report.failed),
                         remote_dir=remote_dir(job.job), run_dir=str(run_dir),
                         started=job.since, worker_output=opts.worker_output)
    (run_dir / "detached.json").write_text(json.dumps(record.to_dict(), indent=2) + "\n")
    tell(f"job {job.job}: checked {len(ready.hosts)} hosts; starting on {host.label}")
    # (with --wait it returns as soon as the job waits in line)
    polls = int((LEASE_TIMEOUT + 10) * 10)
    start = _START.replace("{dir}", shell_quote(remote_dir(job.job))).replace(
        "{polls}", str(polls))
    out = run_script(ready, host, start, what="starting the job", data=_tar(files),
                     timeout=polls / 10 + 30).decode(errors="replace").strip()
    said = out.splitlines()[-1] if out else ""
    if said.startswith("refused "):
        where, _, rest = said[8:].partition(" ")
        holder = holder_of(rest)
        _forget(ready, host, job.job)
        raise HostLeased(f"{where} is leased to {describe(holder)}", host=where,
                         holder=holder, hint="wait for it with --wait, or run on other hosts")
    if said.startswith("failed "):
        _forget(ready, host, job.job)
        raise JobError(f"job {job.job} could not start: {said[7:]}", job=job.job,
                       hint="the primary host must reach every host by ssh with its own "
                            "keys and known_hosts (as push's chain does)")
    if said == "timeout":
        stop_remote(ready, host, job.job)
        _forget(ready, host, job.job)  # (it never ran: its directory and access key go)
        raise JobError(f"job {job.job}: its supervisor on {host.label} did not take the "
                       "leases in time; stopped", job=job.job)
    if said.startswith("waiting "):
        where, _, rest = said[8:].partition(" ")
        place, _, ahead = rest.partition(" ")
        tell(f"job {job.job}: waiting for {where}: place {place} in line, behind "
             f"{describe(holder_of(ahead))}")
    tell(f"job {job.job}: detached on {host.label}; follow it with 'sshcluster logs -f "
         f"{job.job}', stop it with 'sshcluster stop {job.job}'")
    return record


def holder_of(text: str) -> JobInfo:
    parts = text.split("\t")
    if len(parts) < 4:
        return JobInfo(job="unknown", who="unknown", since="unknown", script="unknown")
    return JobInfo(job=parts[0], who=parts[1], since=parts[2], script=parts[3])


def _forget(inv: Inventory, host: Host, job: str) -> None:
    """Remove a job that never ran: its directory on the primary host and its record."""
    with contextlib.suppress(HostError):
        run_script(inv, host, f'rm -rf "$HOME"/{shell_quote(remote_dir(job))}\n',
                   what="removing the job's directory")
    shutil.rmtree(runs_dir() / job, ignore_errors=True)


def load_job(job: str) -> tuple[DetachedJob, Inventory, Host]:
    """A detached job's record, the inventory it runs on and its primary host."""
    path = runs_dir() / job / "detached.json"
    if not valid_job_id(job) or not path.is_file():
        raise NoSuchJob(f"no detached job {job} on this machine (looked in {runs_dir()})",
                        job=job, hint="'sshcluster jobs' lists them")
    data = json.loads(path.read_text())
    record = DetachedJob(**{**data, "args": tuple(data["args"]),
                            "hosts": tuple(data["hosts"]),
                            "left_out": tuple(data["left_out"])})
    inv = load_inventory(runs_dir() / job / "inventory.yaml")
    host = next(h for h in inv.hosts if h.label == record.primary)
    return record, inv, host


def valid_job_id(job: str) -> bool:
    return bool(job) and all(c.isalnum() or c == "-" for c in job)


_STOP = """\
pid=$(cat pid 2>/dev/null)
[ -n "$pid" ] || { echo ended; exit 0; }
if kill -s 0 "$pid" 2>/dev/null && [ "$(cat state 2>/dev/null)" != ended ]; then
  kill -s TERM "$pid"
  i=0
  while kill -s 0 "$pid" 2>/dev/null && [ $i -lt {polls} ]; do sleep 0.2; i=$((i + 1)); done
fi
# Whatever is left of its process group (it is a session of its own) goes now. Once
# the supervisor has ended, its pid may be another process's: then only a group
# without its leader (what the job left behind) is the job's.
if [ "$(cat state 2>/dev/null)" = ended ] && kill -s 0 "$pid" 2>/dev/null; then
  echo stopped
elif kill -s 0 -- "-$pid" 2>/dev/null || kill -s 0 "-$pid" 2>/dev/null; then
  # (the second form: BusyBox's kill, which refuses "--"; dash refuses it)
  kill -s KILL -- "-$pid" 2>/dev/null || kill -s KILL "-$pid" 2>/dev/null
  echo killed
else
  echo stopped
fi
"""


def stop_remote(inv: Inventory, host: Host, job: str) -> None:
    """Stop detached job ``job`` on its primary ``host`` and everything it started:
    SIGTERM for its supervisor (which stops R, whose end stops the cluster, then
    releases the leases), and SIGKILL for whatever is left of its process group after
    :data:`STOP_GRACE` seconds. A host that cannot be reached raises
    :class:`~sshcluster.errors.HostError`."""
    script = enter_script(job) + _STOP.replace("{polls}", str(int(STOP_GRACE * 5)))
    run_script(inv, host, script, what="stopping the job", timeout=STOP_GRACE + 30)
