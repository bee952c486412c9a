"""Leases: each host of a running job is leased to it, so two jobs never share a host
unknowingly.

A lease is held by the job's own ssh session on the host, running ``lease.sh``: a
``flock`` on a file under ``~/.cache/sshcluster/leases/`` that the kernel drops when the
session ends, however it ends (the job finished, crashed or was killed, or its ssh was
cut). So there is nothing to clean up after a crash, and a lease cannot be leaked. The
job writes a line to each session every :data:`~sshcluster.protocol.LEASE_HEARTBEAT`
seconds; a session that hears nothing for :data:`~sshcluster.protocol.LEASE_SILENCE`
seconds ends by itself, for a job cut off without a word (a network that drops every
packet) never ends its ssh connection as far as the host can tell.

    with acquire(inventory, JobInfo.new("fit.R")) as leases:   # HostLeased if taken
        ...                                                     # released here
"""

from __future__ import annotations

import contextlib
import getpass
import os
import queue
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import resources

from sshcluster.bootstrap import END_OF_SCRIPT, READ_SCRIPT
from sshcluster.check.report import CheckReport
from sshcluster.errors import HostError, HostLeased
from sshcluster.inventory import Host, Inventory
from sshcluster.protocol import LEASE_HEARTBEAT, LEASE_SILENCE
from sshcluster.quoting import shell_quote
from sshcluster.ssh.command import SESSION_OPTIONS, ssh_command

LEASE_SCRIPT = resources.files("sshcluster.jobs").joinpath("lease.sh").read_text("utf-8")
#: Seconds to take (or look at) one host's lease: ssh's connection and the script.
LEASE_TIMEOUT = 30.0
#: Seconds a lease session may take to end once released, before it is killed.
RELEASE_TIMEOUT = 5.0
#: Seconds ``--wait`` waits in line for a host by default: a day.
WAIT_TIMEOUT = 24 * 60 * 60.0
#: The environment variable that shortens a lease's silence (seconds; the tests set
#: it): the heartbeat is then a quarter of it.
SILENCE_ENV = "SSHCLUSTER_LEASE_SILENCE"


def lease_timing() -> tuple[int, int]:
    """(heartbeat, silence): the seconds between a holder's lines to its lease
    sessions, and the seconds without one after which a session ends."""
    value = os.environ.get(SILENCE_ENV, "")
    if value.isdigit() and int(value) >= 2:
        return max(1, int(value) // 4), int(value)
    return LEASE_HEARTBEAT, LEASE_SILENCE


@dataclass(frozen=True)
class JobInfo:
    """Who a lease is for: the job's id, the user and machine that started it, when
    (UTC, ISO 8601), and the script's name."""

    job: str
    who: str
    since: str
    script: str

    @classmethod
    def new(cls, script: str) -> JobInfo:
        """A new job's info, for ``script``, started now by this user on this machine."""
        now = datetime.now(timezone.utc)
        job = f"{now:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        return cls(job=job, who=f"{getpass.getuser()}@{socket.gethostname()}",
                   since=now.isoformat(timespec="seconds"), script=os.path.basename(script))


@dataclass(frozen=True)
class Lease:
    """A host's lease as ``jobs`` lists it: ``holder`` None when the host is free (or
    could not be asked: ``error`` says why)."""

    host: str
    holder: JobInfo | None
    pid: int | None = None
    error: str | None = None


def describe(holder: JobInfo) -> str:
    """``job J (alice@laptop, since T, script fit.R)``."""
    return f"job {holder.job} ({holder.who}, since {holder.since}, script {holder.script})"


def _parse_holder(text: str) -> tuple[JobInfo, int | None]:
    parts = text.split("\t")
    if len(parts) < 5:
        return JobInfo(job="unknown", who="unknown", since="unknown", script="unknown"), None
    pid = int(parts[4]) if parts[4].isdigit() else None
    return JobInfo(job=parts[0], who=parts[1], since=parts[2], script=parts[3]), pid


def _clean(value: str) -> str:
    # One line of tab-separated fields on the host: no tab or newline inside a field.
    return " ".join(value.split())


class HostLease:
    """One host's lease session (an ``ssh`` process in its own session, so that a
    Ctrl-C in the terminal reaches the job, which then releases it in order).
    Its owner is :class:`Leases`, or the caller of :func:`list_leases`."""

    def __init__(self, inventory: Inventory, host: Host, mode: str,
                 job: JobInfo | None) -> None:
        self.host = host
        self.label = host.label
        info = job or JobInfo(job="", who="", since="", script="")
        heartbeat, silence = lease_timing()
        settings = "".join(f"{k}={shell_quote(_clean(v))}\n" for k, v in (
            ("MODE", mode), ("JOB", info.job), ("WHO", info.who), ("SINCE", info.since),
            ("SCRIPT", info.script), ("SILENCE", str(silence))))
        dest = ["-l", host.user, host.host] if host.user else [host.host]
        argv = [*ssh_command(inventory, host), *SESSION_OPTIONS, *dest,
                f"exec sh -c {shell_quote(READ_SCRIPT)}"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True,
                                     text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._closed = threading.Event()
        self._writing = threading.Lock()  # (the heartbeat's and close()'s)
        threading.Thread(target=self._read, daemon=True).start()
        # (if ssh ended already, next() reports it with ssh's words)
        if self._write(settings + LEASE_SCRIPT + END_OF_SCRIPT + "\n"):
            threading.Thread(target=self._beat, args=(heartbeat,), daemon=True).start()

    def _write(self, text: str) -> bool:
        with self._writing:
            if self._closed.is_set() or self.proc.stdin is None:
                return False
            try:
                self.proc.stdin.write(text)
                self.proc.stdin.flush()
            except (OSError, ValueError):
                return False
            return True

    def _beat(self, every: int) -> None:
        # The session's dead man's switch: a line every few seconds for as long as this
        # process lives and the lease is held (see lease.sh).
        while not self._closed.wait(every) and self._write("\n"):
            pass

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next(self, deadline: float) -> str:
        """The script's next line; HostError when ssh ended or the deadline passed."""
        try:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise HostError(f"{self.label}: no answer about its lease in time",
                            host=self.label, check="lease") from None
        if line is None or line.startswith("error "):
            self.close()
            assert self.proc.stderr is not None
            why = line[6:] if line else (self.proc.stderr.read().strip().splitlines()
                                         or [f"ssh exited with status {self.proc.returncode}"])[-1]
            raise HostError(f"{self.label}: cannot take its lease: {why}", host=self.label,
                            check="lease")
        return line

    def close(self) -> None:
        """End the session (releasing the lease), within :data:`RELEASE_TIMEOUT`."""
        self._closed.set()  # (no write starts after this)
        # A write under way (the heartbeat's, into an ssh that reads nothing) is waited
        # for no longer than the release itself: ssh is then killed, which ends it.
        deadline = time.monotonic() + RELEASE_TIMEOUT
        if self._writing.acquire(timeout=RELEASE_TIMEOUT):
            try:
                if self.proc.stdin is not None:
                    with contextlib.suppress(OSError):
                        self.proc.stdin.close()
            finally:
                self._writing.release()
        try:
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Leases:
    """The leases a job holds; :meth:`release` (or the ``with`` block's end) ends them all."""

    def __init__(self) -> None:
        self.held: list[HostLease] = []

    def release(self) -> None:
        """Release every lease at once (each session ends within its own deadline)."""
        held, self.held = self.held, []
        if held:
            with ThreadPoolExecutor(len(held)) as pool:
                list(pool.map(HostLease.close, held))

    def __enter__(self) -> Leases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _take(lease: HostLease, deadline: float,
          on_wait: Callable[[str, int, JobInfo], None] | None) -> None:
    ahead: JobInfo | None = None  # the holder while waiting in line
    while True:
        try:
            line = lease.next(deadline)
        except HostError:
            if ahead is None:
                raise
            raise HostLeased(f"{lease.label} is still leased to {describe(ahead)} "
                             "(waited in line until the deadline)", host=lease.label,
                             holder=ahead, hint="wait longer with --wait-timeout") from None
        if line == "leased":
            return
        if line.startswith("held "):
            holder, _ = _parse_holder(line[5:])
            raise HostLeased(f"{lease.label} is leased to {describe(holder)}",
                             host=lease.label, holder=holder,
                             hint="wait for it with --wait, or run on other hosts")
        if line.startswith("wait "):
            place, _, rest = line[5:].partition(" ")
            ahead = _parse_holder(rest)[0]
            if on_wait is not None:
                on_wait(lease.label, int(place), ahead)


def acquire(inventory: Inventory, job: JobInfo, *, wait: bool = False,
            wait_timeout: float = WAIT_TIMEOUT,
            on_wait: Callable[[str, int, JobInfo], None] | None = None) -> Leases:
    """Lease every host of ``inventory`` to ``job``; return the :class:`Leases` (the
    caller owns them). A host leased to another job raises :class:`HostLeased` naming
    it (every lease taken so far is released first), or with ``wait`` the job waits in
    line, ``on_wait(host, place, holder)`` telling its place each second.

    Without ``wait`` every host is asked at once. With it, the hosts are taken one
    after another in one order (sorted by name), so two waiting jobs never each hold
    what the other waits for."""
    if not wait:
        leases = ask(inventory, job)
        settle(leases)
        return leases
    leases = Leases()
    deadline = time.monotonic() + wait_timeout
    try:
        for h in sorted(inventory.hosts, key=lambda h: h.label):
            lease = HostLease(inventory, h, "wait", job)
            leases.held.append(lease)
            _take(lease, deadline, on_wait)
    except BaseException:
        leases.release()
        raise
    return leases


def ask(inventory: Inventory, job: JobInfo) -> Leases:
    """Ask every host of ``inventory`` for its lease at once, without waiting for the
    answers (:func:`settle` does): so the job can check its hosts meanwhile. The caller
    owns the returned :class:`Leases`."""
    leases = Leases()
    try:
        for h in inventory.hosts:
            leases.held.append(HostLease(inventory, h, "try", job))
    except BaseException:
        leases.release()
        raise
    return leases


def settle(leases: Leases, keep: Sequence[str] | None = None) -> None:
    """Wait for the answers :func:`ask` asked for; release the hosts not in ``keep``
    (labels; None: keep all). A host leased to another job raises :class:`HostLeased`
    naming it (first), a host that cannot be asked :class:`HostError`, each after every
    lease was released."""
    deadline = time.monotonic() + LEASE_TIMEOUT
    errors: list[HostError] = []
    try:
        for lease in leases.held:
            try:
                _take(lease, deadline, None)
            except HostError as e:
                if keep is None or lease.label in keep:
                    errors.append(e)
        if errors:  # the one naming another job first: that is what to act on
            raise sorted(errors, key=lambda e: not isinstance(e, HostLeased))[0]
    except BaseException:
        leases.release()
        raise
    if keep is not None:
        unwanted = [x for x in leases.held if x.label not in keep]
        leases.held = [x for x in leases.held if x.label in keep]
        for lease in unwanted:
            lease.close()


def list_leases(inventory: Inventory, timeout: float = LEASE_TIMEOUT) -> list[Lease]:
    """Who holds each host of ``inventory`` now (every host asked at once, answering
    within ``timeout`` seconds); a host that cannot be asked is listed with its
    ``error``."""
    deadline = time.monotonic() + timeout
    sessions = [HostLease(inventory, h, "list", None) for h in inventory.hosts]
    out: list[Lease] = []
    try:
        for s in sessions:
            try:
                line = s.next(deadline)
            except HostError as e:
                out.append(Lease(s.label, None, error=e.message))
                continue
            if line.startswith("held "):
                holder, pid = _parse_holder(line[5:])
                out.append(Lease(s.label, holder, pid))
            else:
                out.append(Lease(s.label, None))
    finally:
        for s in sessions:
            s.close()
    return out


#: The check's steps that another job on a host can fail: its cluster holds the port.
_BECAUSE_OF_A_JOB = ("callback",)


def leased_elsewhere(inventory: Inventory, report: CheckReport, job: str | None, *,
                     wait: bool) -> None:
    """A host that failed the check while another job runs there may have failed for
    that job's sake: its cluster holds the inventory's port there (a detached job's
    primary R listens on it), so the check's callback cannot forward it. Raise
    :class:`HostLeased` naming the first host that failed only such a step and is leased
    to a job other than ``job``: whose host it is says more than the step. Nothing when
    there is none. (Those hosts answered ssh and ran R in the check: their leases are
    asked at once.)"""
    asked = {r.label for r in report.failed if set(r.failed) <= set(_BECAUSE_OF_A_JOB)}
    if not asked:
        return
    hosts = tuple(h for h in inventory.hosts if h.label in asked)
    for lease in list_leases(replace(inventory, hosts=hosts), timeout=10.0):
        if lease.holder is not None and lease.holder.job != job:
            raise HostLeased(
                f"{lease.host} is leased to {describe(lease.holder)}, and failed the "
                "check's callback while that job runs there (its cluster may hold the "
                "port there)", host=lease.host, holder=lease.holder,
                hint="run again once that job has ended (sshcluster jobs INVENTORY shows "
                     "who holds each host)" if wait else
                     "wait for it with --wait, or run on other hosts")


def holders(leases: Sequence[Lease]) -> dict[str, list[str]]:
    """The hosts each job holds, by job id."""
    jobs: dict[str, list[str]] = {}
    for lease in leases:
        if lease.holder is not None:
            jobs.setdefault(lease.holder.job, []).append(lease.host)
    return jobs

