"""Coming back to detached jobs (:mod:`sshcluster.jobs.detached`): what a job is doing
(``jobs``), its log (``logs``), stopping it (``stop``) and bringing its results and
record (``fetch``). Every command asks the job's primary host over ssh, from the
record this machine keeps of the job; attached jobs are listed (and their logs shown)
from their records here, and so are detached jobs once ``fetch`` brought them after
their end (``run.json``): an ended job's state no longer changes.

A ``fetch`` that brought everything of an ended job (its log and notes, and every
host's results) removes the job's directory on the primary host, and ends the job's
EC2 fleet (``run --ec2 --detach``, unless ``--keep``); ``stop`` of such a job brings
what there is first, as the fleet ends with it (also a fleet that a fetch which could
not read every host left running, and when the primary host cannot be reached).

    for status in list_jobs():
        print(status.job, status.state, status.seconds)
    stop_job("20261206-061021-77411b")
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

from sshcluster.errors import HostError, SshclusterError
from sshcluster.inventory import Host, Inventory
from sshcluster.jobs.detached import (
    WORKER_LOG_NAMES,
    DetachedJob,
    JobError,
    JobStatus,
    enter_script,
    holder_of,
    load_job,
    remote_dir,
    stop_remote,
    valid_job_id,
)
from sshcluster.jobs.ec2job import fleet_of, release_fleet
from sshcluster.jobs.leases import describe
from sshcluster.jobs.record import RunResult, owner_alive, runs_dir, write_record
from sshcluster.jobs.remote import argv, run_script, script_input, settings
from sshcluster.jobs.results import ResultsReport, fetch_results
from sshcluster.jobs.tmpdir import sweep
from sshcluster.jobs.workerlog import WORKER_LOGS
from sshcluster.quoting import shell_quote
from sshcluster.version import __version__

_STATUS = """\
alive=no
pid=$(cat pid 2>/dev/null)
[ -n "$pid" ] && kill -s 0 "$pid" 2>/dev/null && alive=yes
for f in state started ended status; do printf '%s\\t%s\\n' "$f" "$(cat $f 2>/dev/null)"; done
stopped=$([ -e stopped ] && echo yes)
printf 'alive\\t%s\\nstopped\\t%s\\nnow\\t%s\\n' "$alive" "$stopped" "$(date +%s)"
"""


def job_status(job: str) -> JobStatus:
    """Ask a detached job's primary host what the job is doing (see :class:`JobStatus`);
    once ``fetch`` brought it after its end, its record here says."""
    record, inv, host = load_job(job)
    base = JobStatus(job=job, state="lost", primary=record.primary,
                     script=os.path.basename(record.script))
    final = _final(Path(record.run_dir))
    if final is not None:
        return replace(final, primary=record.primary)
    try:
        out = run_script(inv, host, enter_script(job) + _STATUS, what="asking about the job")
    except HostError as e:
        return replace(base, detail=e.message)
    text = out.decode(errors="replace")
    if text.strip() == "gone":
        return replace(base, state="gone", detail=f"no {record.remote_dir} on {host.label}")
    info = dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)
    state, alive = info.get("state", ""), info.get("alive") == "yes"
    started, ended, now = (_number(info.get(k)) for k in ("started", "ended", "now"))
    seconds = ((ended or now or 0) - started) if started is not None else None
    if state == "ended":
        status = int(_number(info.get("status")) or 0) if re.fullmatch(
            r"[0-9]{1,3}", info.get("status", "").strip()) else 255
        name = "stopped" if info.get("stopped") == "yes" else "done" if status == 0 \
            else "failed"
        return replace(base, state=name, seconds=seconds, status=status)
    if state.startswith(("refused ", "failed ")):
        return replace(base, state="failed", seconds=seconds, detail=state.partition(" ")[2])
    if not alive:
        return replace(base, state="failed", seconds=seconds,
                       detail="its supervisor ended without a status (killed?)")
    word, _, rest = state.partition(" ")
    if word == "waiting":  # HOST PLACE JOB<TAB>WHO<TAB>SINCE<TAB>SCRIPT<TAB>PID
        where, _, rest = rest.partition(" ")
        place, _, holder = rest.partition(" ")
        rest = f"{where}: place {place} in line, behind {describe(holder_of(holder))}"
    return replace(base, state=word or "leasing", seconds=seconds, detail=rest or None)


def _number(text: str | None) -> float | None:
    """A time or count a host wrote, or None for one that is no finite number (a JSON
    document cannot hold NaN or infinity, and ``jobs --json`` prints these)."""
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _final(run_dir: Path) -> JobStatus | None:
    """A job's state from its ``run.json``, or None when it has none."""
    if not (run_dir / "run.json").is_file():
        return None
    detached = (run_dir / "detached.json").is_file()
    try:
        data = json.loads((run_dir / "run.json").read_text())
        state = "done" if data["status"] == 0 and not data.get("error") else \
            "stopped" if data.get("signal") else "failed"
        return JobStatus(job=run_dir.name, state=state, primary="(here)",
                         script=os.path.basename(str(data["script"])),
                         seconds=_finite(float(sum(data["phases"].values()))),
                         status=_status(data["status"]),
                         detail=None if data.get("error") is None else str(data["error"]),
                         detached=detached)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError,
            OverflowError):
        # (a record cut short, by a full disk say, or written by hand: the job is
        # listed, and says so, rather than every listing failing)
        return JobStatus(job=run_dir.name, state="unknown", primary="(here)", script="?",
                         detail=f"its record {run_dir / 'run.json'} cannot be read",
                         detached=detached)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _status(value: object) -> int:
    """An exit status from a record, which must be one (a hand-edited one is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise ValueError(f"not an exit status: {value!r}")
    return value


def list_jobs() -> list[JobStatus]:
    """Every job recorded on this machine, newest first: detached ones as their primary
    hosts say (asked at once), attached ones, and detached ones fetched after their
    end, from their record. The R temporary directories that attached jobs killed
    outright left here go (:func:`~sshcluster.jobs.tmpdir.sweep`)."""
    sweep()
    root = runs_dir()
    dirs = sorted((p for p in root.glob("*") if p.is_dir()), reverse=True) \
        if root.is_dir() else []
    detached = [p.name for p in dirs if (p / "detached.json").is_file()
                and not (p / "run.json").is_file()]
    with ThreadPoolExecutor(max(1, min(16, len(detached)))) as pool:
        asked = dict(zip(detached, pool.map(job_status, detached), strict=True))
    out: list[JobStatus] = []
    for p in dirs:
        if p.name in asked:
            out.append(asked[p.name])
        elif (p / "detached.json").is_file():
            out.append(job_status(p.name))  # (ended: from its record)
        elif (final := _final(p)) is not None:
            out.append(final)
        elif (p / "owner").is_file():  # an attached job without its record (yet)
            alive = owner_alive(p)
            try:
                lines = (p / "owner").read_text(errors="replace").splitlines()
            except OSError:
                lines = []
            out.append(JobStatus(
                job=p.name, state="running" if alive else "failed", primary="(here)",
                script=(lines[1:] or ["?"])[0],
                detached=False,
                detail=None if alive else "its process ended without a record (killed?)"))
    return out


def _local_logs(run_dir: Path, out: BinaryIO, follow: bool) -> int:
    """An attached job's log, from its record here; ``follow``: until its process ends."""
    seen = 0
    while True:
        alive = follow and owner_alive(run_dir) and not (run_dir / "run.json").exists()
        chunk = b""
        with contextlib.suppress(OSError), (run_dir / "log").open("rb") as f:
            f.seek(seen)
            chunk = f.read()
        # (a failed write, a full disk, is the caller's error: only the log's own
        # absence is nothing to show)
        seen += len(chunk)
        out.write(chunk)
        out.flush()
        if not alive:
            return 0
        time.sleep(0.2)


def job_logs(job: str, out: BinaryIO, *, follow: bool = False) -> int:
    """Write a job's log (R's stdout and stderr) to ``out``; with ``follow``, keep
    writing as it grows until the job ends. A detached job's comes from its primary
    host, an attached one's from its record here. Returns 0."""
    here = runs_dir() / job
    if valid_job_id(job) and (here / "log").is_file() and (
            not (here / "detached.json").is_file() or (here / "run.json").is_file()):
        return _local_logs(here, out, follow)  # (attached, or detached, ended and fetched)
    record, inv, host = load_job(job)
    follow_cmd = ('pid=$(cat pid 2>/dev/null)\n'
                  'if [ -n "$pid" ] && kill -s 0 "$pid" 2>/dev/null; then\n'
                  '  : >>log; exec tail -n +1 -f --pid="$pid" log\nfi\n') if follow else ""
    script = enter_script(job) + follow_cmd + "[ -e log ] && exec cat log\nexit 0\n"
    if record.worker_output:
        script = enter_script(job) + settings({"FOLLOW": "yes" if follow else ""}) + \
            _WITH_WORKERS.replace("{names}", WORKER_LOG_NAMES)
    proc = subprocess.Popen(argv(inv, host), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(script_input(script))
        proc.stdin.close()
        while chunk := os.read(proc.stdout.fileno(), 65536):
            if chunk == b"gone\n":
                raise JobError(f"job {job}: no {record.remote_dir} on {host.label}", job=job)
            out.write(chunk)
            out.flush()
    finally:
        try:  # (the output has ended; ssh still reports the exit status)
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.returncode == 255:  # ssh's own failure (tail's and cat's are not ours to judge)
        raise HostError(f"{host.label}: cannot read the log of job {job} (ssh failed)",
                        host=host.label, check="logs")
    return 0


# The log and the workers' logs, in the order tail reads them; a worker's line goes
# out after its host ("[HOST] line", HOST as the log's name). tail announces each
# switch of file with "==> NAME <==" after an empty line, which is not the logs' own.
_WITH_WORKERS = """\
show() { if [ "$f" = log ]; then printf '%s\\n' "$1"; else printf '[%s] %s\\n' "$h" "$1"; fi; }
set -- log
while IFS= read -r name; do set -- "$@" "$name"; done <{names}
: >>log
pid=$(cat pid 2>/dev/null)
how=
if [ -n "$FOLLOW" ] && [ -n "$pid" ] && kill -s 0 "$pid" 2>/dev/null; then
  how="-F -s 0.2 --pid=$pid"
fi
# shellcheck disable=SC2086
tail -n +1 $how "$@" 2>/dev/null | {
  f=log h= blank=
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in
      "==> "*" <==") f=${line#"==> "}; f=${f%" <=="}; h=${f##*/}; h=${h%.log}; blank=
        continue ;;
    esac
    if [ -n "$blank" ]; then show ""; blank=; fi
    if [ -z "$line" ]; then blank=1; else show "$line"; fi
  done
  if [ -n "$blank" ]; then show ""; fi
}
exit 0
"""


def fetch_job(job: str, dest: str | os.PathLike[str] | None = None, *,
              on_event: Callable[[str], None] | None = None) -> tuple[
        JobStatus, ResultsReport, RunResult | None]:
    """Bring a detached job's results (``results/`` from every host's workdir, into
    ``dest``, by default ``runs/JOB/results``), its log and its workers' logs into its
    record, and write ``run.json`` once it has ended. Works while it runs too (what
    is there so far). Once everything of an ended job is here, its directory on the
    primary host goes, and so does its EC2 fleet (unless ``--keep``); a fleet that has
    ended so raises :class:`JobError` on a later fetch. ``on_event`` is told what
    becomes of the fleet."""
    record, inv, host = load_job(job)
    run_dir = Path(record.run_dir)
    fleet = fleet_of(job)
    if fleet and fleet.get("released") and not fleet.get("keep"):
        how = "by 'sshcluster stop'" if fleet.get("released_by") == "stop" else \
            "after its results were fetched"
        raise JobError(f"job {job}: its cluster {fleet['name']} has ended, {how}; what "
                       f"came is in its record, {run_dir}", job=job)
    status, results, result = _fetch(record, inv, host, dest)
    if result is not None and not results.errors:
        _close(inv, host, job, on_event)
    elif result is not None and fleet and not fleet.get("released") and on_event:
        on_event(f"ec2: cluster {fleet['name']} is still running: not every host's results "
                 f"came; fetch again, or end it with 'sshcluster stop {job}' or "
                 f"'sshcluster ec2 down {fleet['name']}'")
    return status, results, result


def _fetch(record: DetachedJob, inv: Inventory, host: Host,
           dest: str | os.PathLike[str] | None) -> tuple[JobStatus, ResultsReport,
                                                         RunResult | None]:
    status = job_status(record.job)
    run_dir = Path(record.run_dir)
    if status.state not in ("lost", "gone") and not (run_dir / "closed").exists():
        _fetch_files(inv, host, record.job, run_dir)
    hosts = [h for h in inv.hosts if h.label in record.hosts]
    results = fetch_results(inv, dest if dest is not None else run_dir / "results", hosts)
    result = None
    if not status.live and status.state != "gone":
        result = _record(record, status, run_dir, results)
        write_record(result)
    return status, results, result


def _close(inv: Inventory, host: Host, job: str,
           on_event: Callable[[str], None] | None, by: str = "fetch") -> None:
    """An ended job that is all here: its directory on the primary host goes (the record
    here keeps its log and notes), then its fleet's part in it."""
    run_dir = runs_dir() / job
    if not (run_dir / "closed").exists():
        with contextlib.suppress(HostError):
            run_script(inv, host, f'rm -rf "$HOME"/{shell_quote(remote_dir(job))}\n',
                       what="removing the job's directory")
            (run_dir / "closed").write_text(f"{time.time():.3f}\n")
    release_fleet(job, on_event, by=by)


def _fetch_files(inv: Inventory, host: Host, job: str, run_dir: Path) -> None:
    script = enter_script(job) + ("exec tar -cf - log supervisor.log workers r-version "
                            "r-started launched script-done started leased r-ended ended "
                            "status 2>/dev/null\n")
    proc = subprocess.run(argv(inv, host), input=script_input(script), capture_output=True,
                          timeout=300, start_new_session=True)
    if not proc.stdout:
        return
    with tarfile.open(fileobj=io.BytesIO(proc.stdout), mode="r") as tar:
        for member in tar:
            if member.isfile() or member.isdir():
                tar.extract(member, run_dir / "primary", filter="data")
    workers = run_dir / "primary" / WORKER_LOGS
    if workers.is_dir():
        shutil.copytree(workers, run_dir / WORKER_LOGS, dirs_exist_ok=True)
    if (run_dir / "primary" / "log").is_file():
        shutil.copyfile(run_dir / "primary" / "log", run_dir / "log")


def _record(record: DetachedJob, status: JobStatus, run_dir: Path,
            results: ResultsReport) -> RunResult:
    def note(name: str) -> float | None:
        with contextlib.suppress(OSError, ValueError):
            return float((run_dir / "primary" / name).read_text().strip())
        return None

    started, leased, r_started, launched, done, r_ended, ended = (note(n) for n in (
        "started", "leased", "r-started", "launched", "script-done", "r-ended", "ended"))
    done = done or r_ended  # (a script that calls quit() notes no end of its own)
    phases: dict[str, float] = {}
    if started is not None and leased is not None:
        phases["lease"] = leased - started
    if leased is not None and r_started is not None:
        phases["r_start"] = max(0.0, r_started - leased)
    if r_started is not None and launched is not None:
        phases["launch"] = launched - r_started
    if launched is not None and done is not None:
        phases["script"] = done - launched
    if ended is not None:
        last = done or launched or r_started or leased or started
        if last is not None:
            phases["stop"] = max(0.0, ended - last)
    versions = {"sshcluster": __version__}
    with contextlib.suppress(OSError):
        versions["R"] = (run_dir / "primary" / "r-version").read_text().strip()
    return RunResult(
        job=record.job, script=record.script, args=record.args,
        status=status.status if status.status is not None else 1, hosts=record.hosts,
        left_out=record.left_out, phases=phases, started=record.started,
        run_dir=str(run_dir), versions=versions,
        error=status.detail if status.state == "failed" and status.status is None else None,
        signal="SIGTERM" if status.state == "stopped" else None,
        results={"dir": results.dest, "files": results.files, "errors": results.errors})


def stop_job(job: str, *, on_event: Callable[[str], None] | None = None) -> JobStatus:
    """Stop a detached job and everything it started: SIGTERM for its supervisor (which
    stops R, whose end stops the cluster, then releases the leases), and SIGKILL for
    whatever is left of its process group after :data:`STOP_GRACE` seconds. A job with
    an EC2 fleet of its own (:func:`~sshcluster.jobs.ec2job.start_ec2_detached`): what
    there is (log, notes, results so far) comes into its record, then the fleet ends
    (unless ``keep``; ``on_event`` is told), also when an earlier ``fetch`` of the
    ended job could not read every host (so left the fleet running). A job that ended
    and was fetched is left as it is; one whose start was killed after its fleet was up
    has only its fleet, which ends. Returns the job's status afterwards. A primary
    host that cannot be reached raises :class:`~sshcluster.errors.HostError`, after
    the job's fleet ended all the same (what the other hosts have comes first)."""
    if valid_job_id(job) and fleet_of(job) is not None and \
            not (runs_dir() / job / "detached.json").is_file():
        # Its start was killed after the fleet was up, before the job started: the fleet
        # ends, and so does the record.
        said = release_fleet(job, on_event, by="stop")
        shutil.rmtree(runs_dir() / job, ignore_errors=True)
        return JobStatus(job=job, state="failed", primary="-", script="-",
                         detail=f"it never started; {said}")
    record, inv, host = load_job(job)
    fleet = fleet_of(job)
    unreleased = fleet is not None and not fleet.get("released")
    if (Path(record.run_dir) / "run.json").is_file() and not unreleased:
        return job_status(job)  # (ended, and fetched)
    if not (Path(record.run_dir) / "run.json").is_file():
        try:
            stop_remote(inv, host, job)
        except HostError as e:
            if not unreleased:
                raise
            with contextlib.suppress(SshclusterError, OSError):
                _fetch(record, inv, host, None)
            said = release_fleet(job, on_event, by="stop")
            e.message = (f"{e.message}\njob {job}: not stopped there (its primary host "
                         f"cannot be reached); {said}")
            raise
    if fleet is None:
        return job_status(job)
    # Its fleet ends with it: what there is comes here first (unless a fetch wrote its
    # run.json, which says where its results went).
    if not (Path(record.run_dir) / "run.json").is_file():
        with contextlib.suppress(SshclusterError, OSError):
            _fetch(record, inv, host, None)
    _close(inv, host, job, on_event, by="stop")
    return job_status(job)
