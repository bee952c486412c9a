"""``sshcluster run``: check the hosts, lease them, launch the cluster, run one R script
with ``parallelCluster`` ready, stop everything, and record how it went.

    import sshcluster
    result = sshcluster.run("hosts.yaml", "fit.R", sshcluster.RunOptions(args=("10",)))
    result.status          # the script's own exit status
    result.run_dir         # its copy, its log, run.json

The job owns everything it starts: the hosts' lease sessions and the R session (which
owns the cluster's supervisor and, through it, every worker). Whatever ends the job
(the script's end, an error, Ctrl-C, SIGTERM, SIGHUP), the R session is stopped first,
then the leases are released, then the record is written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from sshcluster.bootstrap import RenderOptions, write_bootstrap
from sshcluster.check.preflight import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT,
    check,
    verified_inventory,
)
from sshcluster.errors import SshclusterError
from sshcluster.inventory import Inventory, load_inventory
from sshcluster.jobs.leases import (
    WAIT_TIMEOUT,
    JobInfo,
    Leases,
    acquire,
    ask,
    describe,
    leased_elsewhere,
    settle,
)
from sshcluster.jobs.record import RunResult, read_note, runs_dir, write_owner, write_record
from sshcluster.jobs.results import fetch_results, results_dir
from sshcluster.jobs.tmpdir import JobTmp, sweep
from sshcluster.jobs.workerlog import (
    WORKER_LOGS,
    WorkerRelay,
    checked_as_a_job,
    job_render_options,
)
from sshcluster.ssh.environment import primary_environ
from sshcluster.version import __version__

#: Seconds the R session (and its supervisor) may take to end once asked, before it is
#: killed: the supervisor's own stop is bounded well below this.
STOP_TIMEOUT = 20.0


class RunError(SshclusterError):
    """The job cannot start as asked (no such script, no Rscript)."""

    exit_code = 2


@dataclass(frozen=True)
class RunOptions:
    """How to run a job. ``args`` reach the script as ``commandArgs(TRUE)``.
    ``allow_partial`` leaves failed hosts out instead of stopping; ``wait`` waits in line
    for leased hosts (up to ``wait_timeout`` seconds) instead of stopping. ``timeout``,
    ``concurrency`` and ``accept_new`` are the check's; ``render`` the bootstrap's.
    ``rscript`` is the primary's Rscript."""

    args: tuple[str, ...] = ()
    allow_partial: bool = False
    wait: bool = False
    wait_timeout: float = WAIT_TIMEOUT
    timeout: float = DEFAULT_TIMEOUT
    concurrency: int = DEFAULT_CONCURRENCY
    accept_new: bool = False
    render: RenderOptions = field(default_factory=RenderOptions)
    rscript: str = "Rscript"
    #: Where the files the workers wrote under ``results/`` (in their workdir) come
    #: back to, when the script has ended (None: they stay on the hosts).
    results: str | None = None
    #: Whether the workers' output is shown live (on stderr, each line after its
    #: host); it goes to the run directory's ``workers/HOST.log`` either way.
    worker_output: bool = False


@dataclass
class _State:
    """What the job has learnt so far, for its record (filled in as it goes)."""

    status: int = 1
    error: str | None = None
    signal: str | None = None
    hosts: tuple[str, ...] = ()
    left_out: tuple[str, ...] = ()
    results: dict[str, object] | None = None


DRIVER = resources.files("sshcluster.jobs").joinpath("driver.R")


class _Job:
    """What a running job started, and the one place that stops it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.leases: Leases | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.tees: list[threading.Thread] = []
        self.log = open(run_dir / "log", "wb")  # noqa: SIM115 (closed by stop())
        self.log_lock = threading.Lock()
        self.started: float | None = None
        #: When R was told to go on (its bootstrap is ready), wall-clock time.
        self.go_at: float | None = None
        self.relay: WorkerRelay | None = None
        #: The R session's TMPDIR: a directory of the job's own, removed once R and all
        #: it started are gone (R stopped by a signal leaves its tempdir(), with the
        #: launch's directory in it); locked by this process and R while they live, so
        #: that a later job removes it if this one is killed outright (:mod:`.tmpdir`).
        self.tmp: JobTmp | None = None

    def start_r(self, rscript: str, args: tuple[str, ...], script: Path, out: BinaryIO,
                err: BinaryIO) -> None:
        # R starts at once and waits for "go" on its stdin (:meth:`go`): so its own
        # start-up overlaps the check, and the bootstrap need not exist yet.
        self.tmp = JobTmp.make()
        # (the user's environment: not the LC_CTYPE Python sets itself, see primary_environ)
        env = dict(primary_environ(), SSHCLUSTER_RUN_DIR=str(self.run_dir),
                   SSHCLUSTER_BOOTSTRAP=str(self.run_dir / "cluster.R"),
                   SSHCLUSTER_SCRIPT=str(script), SSHCLUSTER_WAIT_GO="1",
                   TMPDIR=self.tmp.path)
        self.started = time.time()  # the R session's notes are wall-clock times too
        with resources.as_file(DRIVER) as driver:
            # Its own session: a Ctrl-C in the terminal reaches the job, which then
            # stops R and its cluster in order (not R and its supervisor at once).
            # Both streams to one place (--json): one pipe, so they stay in R's order.
            same = out is err
            self.proc = subprocess.Popen(
                [*_line_buffered(), rscript, str(driver), *args], env=env, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT if same else subprocess.PIPE,
                start_new_session=True, preexec_fn=_die_with_parent,
                pass_fds=(self.tmp.fd,))  # (R and all it starts hold the lock too)
        assert self.proc.stdout is not None
        pipes = [(self.proc.stdout, out)]
        if self.proc.stderr is not None:
            pipes.append((self.proc.stderr, err))
        for src, dst in pipes:
            t = threading.Thread(target=self._tee, args=(src, dst), daemon=True)
            t.start()
            self.tees.append(t)

    def go(self) -> None:
        """Tell the waiting R session to source the bootstrap and run the script (its
        stdin then ends, as Rscript's would with nothing on it)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.go_at = time.time()
        with contextlib.suppress(OSError):  # R ended already: wait_r() says how
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.close()

    def _tee(self, src: BinaryIO, dst: BinaryIO) -> None:
        # Chunks as they come, not lines: a progress bar without newlines streams too.
        while chunk := os.read(src.fileno(), 65536):
            with self.log_lock:
                self.log.write(chunk)
                self.log.flush()
            with contextlib.suppress(OSError, ValueError):  # our terminal may be gone
                dst.write(chunk)
                dst.flush()

    def wait_r(self) -> int:
        assert self.proc is not None
        return self.proc.wait()

    def stop_r(self) -> None:
        """End the R session (SIGTERM, then SIGKILL for its whole group after
        :data:`STOP_TIMEOUT`). Its supervisor sees R go and ends every host's ssh
        session; each host then stops its workers (the launch's dead man's switch)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        else:
            # R ended by itself, after its cluster's stop (or its supervisor saw it go):
            # what is left of its group is the supervisor's watcher, asleep for up to
            # 2 s, or ssh sessions on their way out. Ending them now ends the job ~2 s
            # sooner; a host whose session ends stops its workers by itself.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
        # The supervisor and anything else R started: gone by the deadline, or killed.
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for t in self.tees:
            t.join(2.0)
        if self.relay is not None:
            self.relay.stop()

    def close(self) -> None:
        with self.log_lock:
            self.log.close()
        if self.tmp is not None:  # (R and all it started are gone: stop_r() ran)
            self.tmp.remove()


def _die_with_parent() -> None:
    """In the R session's process, before R starts: on Linux, SIGTERM it when this job's
    process dies, even by SIGKILL (its leases are gone then: the job must go too)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _line_buffered() -> list[str]:
    """R buffers its stdout when it is a pipe, so a script's output would come in 4 KB
    lumps; coreutils' stdbuf makes it come line by line (where there is one)."""
    return ["stdbuf", "-oL"] if shutil.which("stdbuf") else []


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs. Zombies do not count: an orphan
    that has ended waits for init to reap it, which some inits do only now and then
    (seen here: up to 2 s), and it holds nothing (no lease, no connection)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not os.path.isdir("/proc/self"):
        return True
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:  # (gone meanwhile)
            continue
        # after the name: state, ppid, pgrp
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def check_here(script: str | os.PathLike[str], options: RunOptions) -> Path:
    """What a job needs on this machine, checked before anything is started for it (a
    lease, R, an EC2 fleet): the script, the primary's Rscript, and somewhere to write
    the results (``options.results``). The script's path; else
    :class:`RunError` or :class:`~sshcluster.jobs.results.ResultsError` (exit status 2)."""
    source = Path(script)
    if not source.is_file():
        raise RunError(f"{source}: no such script")
    if shutil.which(options.rscript) is None:
        raise RunError(f"{options.rscript} not found on this machine (the primary)",
                       hint="install R, or put Rscript on the PATH")
    if options.results is not None:
        # Before the job starts, its results need somewhere; but a job that is then
        # refused must leave no directory behind: made only when results come.
        results_dir(options.results, keep=False)
    return source


def run(inventory: Inventory | str | os.PathLike[str], script: str | os.PathLike[str],
        options: RunOptions | None = None, *, stdout: BinaryIO | None = None,
        stderr: BinaryIO | None = None,
        on_event: Callable[[str], None] | None = None) -> RunResult:
    """Run the R ``script`` on the cluster of ``inventory`` (see the module's text) and
    return how it ended; its stdout and stderr stream to ``stdout``/``stderr`` (default:
    ours) and into the run directory's log. ``on_event`` hears what the job is doing.

    A failed check raises :class:`~sshcluster.errors.CheckFailed`, a host leased to
    another job :class:`~sshcluster.errors.HostLeased` (both after the record was
    written). A signal (SIGINT, SIGTERM, SIGHUP) ends the job in order and returns a
    result with status 128 + the signal's number."""
    # Here, not at the top: the ec2 package imports boto3, which `import sshcluster`
    # should not pay for.
    from sshcluster.ec2.signals import Interrupted, signal_guard, signal_name

    opts = options or RunOptions()
    def tell(message: str) -> None:
        if on_event is not None:
            # After SIGHUP the terminal is gone: the job still ends in order.
            with contextlib.suppress(OSError):
                on_event(message)

    inv = inventory if isinstance(inventory, Inventory) else load_inventory(inventory)
    source = check_here(script, opts)
    sweep()  # (the R temporary directories of earlier jobs killed outright)
    job = JobInfo.new(str(source))
    run_dir = runs_dir() / job.job
    run_dir.mkdir(parents=True, mode=0o700)
    write_owner(run_dir, job.script)
    copy = run_dir / ("script" + (source.suffix or ".R"))
    shutil.copyfile(source, copy)
    phases: dict[str, float] = {}
    state = _State()
    owner = _Job(run_dir)
    mark = time.monotonic()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.monotonic()
        phases[name] = phases.get(name, 0.0) + now - mark
        mark = now

    said: list[tuple[str, int, str]] = []

    def waiting(host: str, place: int, holder: JobInfo) -> None:
        # The line is polled each second: say only what changed.
        if not said or said[-1] != (host, place, holder.job):
            said.append((host, place, holder.job))
            tell(f"waiting for {host}: place {place} in line, behind {describe(holder)}")

    with signal_guard() as guard:
        try:
            try:
                out, err = stdout or sys.stdout.buffer, stderr or sys.stderr.buffer
                if not opts.wait:
                    # The leases are asked for, and R starts, while the hosts are
                    # checked: one ssh round trip per host and R's start-up less in
                    # the job's time. (With --wait, R starts once the hosts are ours.)
                    with guard.critical():  # a signal waits until the pids are noted
                        owner.leases = ask(inv, job)
                        owner.start_r(opts.rscript, opts.args, copy.resolve(), out, err)
                report = check(checked_as_a_job(inv), timeout=opts.timeout,
                               concurrency=opts.concurrency, accept_new=opts.accept_new)
                if not opts.allow_partial:
                    leased_elsewhere(inv, report, job.job, wait=opts.wait)
                ready = verified_inventory(report, inv, allow_partial=opts.allow_partial)
                state.hosts = tuple(h.label for h in ready.hosts)
                state.left_out = tuple(h.label for h in report.failed)
                phase("check")
                tell(f"job {job.job}: checked {len(ready.hosts)} hosts")
                if owner.leases is not None:
                    settle(owner.leases, keep=state.hosts)
                else:
                    owner.leases = acquire(ready, job, wait=True,
                                           wait_timeout=opts.wait_timeout, on_wait=waiting)
                phase("lease")
                write_bootstrap(ready, run_dir / "cluster.R", job_render_options(
                    ready, opts.render, run_dir / WORKER_LOGS, checked=report))
                (run_dir / WORKER_LOGS).mkdir()
                if opts.worker_output:
                    owner.relay = WorkerRelay(run_dir / WORKER_LOGS, stderr or sys.stderr.buffer)
                phase("render")
                if owner.proc is None:
                    with guard.critical():  # a signal waits until R's pid is noted
                        owner.start_r(opts.rscript, opts.args, copy.resolve(), out, err)
                owner.go()
                state.status = owner.wait_r()
                phase("script")
            except BaseException as e:
                raise guard.as_interrupt(e) from None
        except Interrupted as e:
            state.status, state.signal = e.exit_status, signal_name(e.signum)
            tell(f"job {job.job}: {signal_name(e.signum)}: stopping the cluster")
            phase("script" if owner.go_at is not None else "interrupted")
        except SshclusterError as e:
            state.error = e.message
            phase("failed")
            raise
        finally:
            with guard.cleanup():
                owner.stop_r()
                phase("stop")
                if opts.results is not None and owner.go_at is not None and state.hosts:
                    # (still leased: no other job's workers write there yet)
                    try:
                        got = fetch_results(ready, opts.results)
                    except SshclusterError as e:  # (the directory went since the start)
                        state.results = {"dir": str(opts.results), "files": {},
                                         "errors": {"*": e.message}}
                        tell(f"job {job.job}: no results: {e.message}")
                    else:
                        state.results = {"dir": got.dest, "files": got.files,
                                         "errors": got.errors}
                        tell(f"job {job.job}: {got.total} result files in {got.dest}" +
                             "".join(f"; {h}: {why}" for h, why in got.errors.items()))
                    phase("results")
                if owner.leases is not None:
                    owner.leases.release()
                phase("release")
                owner.close()
                result = _result(job, source, opts, run_dir, phases, state, owner.go_at)
                write_record(result)
    return result


def _result(job: JobInfo, source: Path, opts: RunOptions, run_dir: Path,
            phases: dict[str, float], state: _State, go_at: float | None) -> RunResult:
    """The record, with R's start, the launch and the script's own time told apart by
    the notes the R session wrote (``driver.R``; wall-clock times, as ``go_at`` is)."""
    started, launched, done = (read_note(run_dir, n) for n in ("r-started", "launched",
                                                                 "script-done"))
    if "script" in phases and go_at is not None and started and launched:
        whole = phases["script"]  # from R's go to its end, as this process saw it
        start = max(0.0, float(started) - go_at)  # (R's start-up not hidden by the check)
        launch = float(launched) - max(float(started), go_at)
        own = (float(done) - float(launched)) if done else max(0.0, whole - start - launch)
        phases = {**{k: v for k, v in phases.items() if k != "script"},
                  "r_start": start, "launch": launch, "script": own}
        phases["stop"] = phases.get("stop", 0.0) + max(0.0, whole - start - launch - own)
    versions = {"sshcluster": __version__}
    if (r := read_note(run_dir, "r-version")) is not None:
        versions["R"] = r
    return RunResult(
        job=job.job, script=str(source), args=opts.args, status=state.status,
        hosts=state.hosts, left_out=state.left_out, phases=phases, started=job.since,
        run_dir=str(run_dir), versions=versions, error=state.error, signal=state.signal,
        results=state.results)
