"""Leases on real test hosts: a second job on an overlapping host refuses and names the
first, or waits in line with --wait and starts when the first has ended; ``jobs`` lists
who holds what; a lease dies with its session, and with its holder's silence (the lease's
ssh stopped: a network that drops every packet), in line too."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sshcluster.check.preflight import check
from sshcluster.errors import HostLeased
from sshcluster.inventory import load_inventory
from sshcluster.jobs import JobInfo, Leases, acquire, list_leases
from sshcluster.jobs.leases import SILENCE_ENV, HostLease, leased_elsewhere
from sshcluster.testing import Testbed, free_port
from sshcluster.testing.fixtures import squatter
from tests.jobs.helpers import JOB_TIMEOUT, LEFTOVER, inventory, sshcluster, start

#: Runs until the file named by its argument exists (up to a minute), holding its hosts.
HOLD = """\
flag <- commandArgs(TRUE)[1]
cat("holding\\n")
for (i in 1:600) { if (file.exists(flag)) break; Sys.sleep(0.1) }
cat("released\\n")
"""


def _wait_for_line(proc_out: list[str], stream: object, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()  # type: ignore[attr-defined]
        if not line:
            break
        proc_out.append(line)
        if text in line:
            return
    pytest.fail(f"no {text!r} in time: {''.join(proc_out)}")


def test_a_second_job_refuses_then_waits_in_line(testbed: Testbed, tmp_path: Path) -> None:
    first_inv = inventory(testbed, tmp_path / "first.yaml", hosts=[0, 1, 2])
    second_inv = inventory(testbed, tmp_path / "second.yaml", hosts=[2, 3])
    hold = tmp_path / "hold.R"
    hold.write_text(HOLD)
    flag = tmp_path / "flag"
    first = start(["run", str(first_inv), str(hold), "--", str(flag)], tmp_path / "state")
    seen: list[str] = []
    waiting = None
    try:
        assert first.stdout is not None
        _wait_for_line(seen, first.stdout, "holding", JOB_TIMEOUT)
        # jobs names the holder of the first three hosts, not of the fourth
        listed = sshcluster(["jobs", "--json", str(second_inv)], tmp_path / "state")
        assert listed.returncode == 0, listed.stderr
        leases = {d["host"]: d for d in json.loads(listed.stdout)}
        host3, host4 = testbed.hosts[2].address, testbed.hosts[3].address
        assert leases[host3]["script"] == "hold.R" and leases[host4]["job"] is None
        job = leases[host3]["job"]

        second = sshcluster(["run", str(second_inv), str(hold), "--", str(flag)],
                            tmp_path / "state")
        assert second.returncode == 1
        assert f"{host3} is leased to job {job}" in second.stderr
        assert "script hold.R" in second.stderr and "holding" not in second.stdout
        # Its leases are released: the fourth host is free again.
        assert {lease.host: lease.holder for lease in
                list_leases(load_inventory(second_inv))}[host4] is None

        waiting = start(["run", "--wait", str(second_inv), str(hold), "--", str(flag)],
                        tmp_path / "state")
        assert waiting.stderr is not None
        lines: list[str] = []
        _wait_for_line(lines, waiting.stderr, f"place 1 in line, behind job {job}",
                       JOB_TIMEOUT)
        flag.touch()  # the first job ends, and the waiting one takes the hosts
        out, err = waiting.communicate(timeout=JOB_TIMEOUT)
        assert waiting.returncode == 0, err
        assert "holding" in out and "released" in out
        assert first.wait(JOB_TIMEOUT) == 0
    finally:
        flag.touch()
        for proc in (first, waiting):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert testbed.leftovers(LEFTOVER, wait=15) == {}


def test_a_lease_ends_with_its_session(testbed: Testbed, tmp_path: Path) -> None:
    inv = load_inventory(inventory(testbed, tmp_path / "hosts.yaml", hosts=[0]))
    leases = acquire(inv, JobInfo.new("one.R"))
    try:
        with pytest.raises(HostLeased) as info:
            acquire(inv, JobInfo.new("two.R"))
        assert info.value.holder.script == "one.R"
        # The lease's ssh is killed, as a crashed job's would be: the host is free.
        leases.held[0].proc.kill()
        deadline = time.monotonic() + 30
        while list_leases(inv)[0].holder is not None:
            assert time.monotonic() < deadline, "the lease outlived its session"
            time.sleep(0.2)
        acquire(inv, JobInfo.new("three.R")).release()
    finally:
        leases.release()
    assert testbed.leftovers(LEFTOVER, wait=15) == {}


def test_waiters_take_the_host_in_their_order(testbed: Testbed, tmp_path: Path) -> None:
    """Two jobs wait in line for one host: places 1 and 2, and they get it in that order
    as each one before them releases it."""
    inv = load_inventory(inventory(testbed, tmp_path / "hosts.yaml", hosts=[1]))
    places: dict[str, list[int]] = {"b.R": [], "c.R": []}
    got: list[str] = []
    held: dict[str, Leases] = {}
    errors: list[BaseException] = []

    def wait_for(script: str) -> None:
        try:
            held[script] = acquire(
                inv, JobInfo.new(script), wait=True, wait_timeout=JOB_TIMEOUT,
                on_wait=lambda host, place, holder: places[script].append(place))
            got.append(script)
        except BaseException as e:  # reported by the test, not lost in the thread
            errors.append(e)

    first = acquire(inv, JobInfo.new("a.R"))
    threads = {s: threading.Thread(target=wait_for, args=(s,), daemon=True)
               for s in ("b.R", "c.R")}
    try:
        threads["b.R"].start()
        _until(lambda: bool(places["b.R"]), "b.R to queue")
        threads["c.R"].start()
        _until(lambda: 2 in places["c.R"], "c.R to be second in line")
        assert got == [] and places["b.R"][-1] == 1
        first.release()
        _until(lambda: got == ["b.R"], "b.R to take the host")
        assert threads["c.R"].is_alive()
        held["b.R"].release()
        _until(lambda: got == ["b.R", "c.R"], "c.R to take the host")
        assert not errors
    finally:
        first.release()
        for t in threads.values():
            t.join(JOB_TIMEOUT)
        for leases in held.values():
            leases.release()
    assert list_leases(inv)[0].holder is None
    assert testbed.leftovers(LEFTOVER, wait=15) == {}


def _until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited in vain for {what}")
        time.sleep(0.1)


def test_a_check_failed_on_a_host_another_job_holds_names_that_job(testbed: Testbed,
                                                                    tmp_path: Path) -> None:
    """A host that fails the check while another job holds it (here its callback: the
    port taken there, as a detached job's primary R takes it while its cluster starts)
    is named as that job's: the job that asks says whose host it is. Not for the job
    that holds it, and not for a host the check could not reach by ssh."""
    port = free_port()
    inv = load_inventory(testbed.write_inventory(tmp_path / "hosts.yaml", ncore=2, port=port))
    held = testbed.hosts[0]
    holder = JobInfo.new("fit.R")
    leases = acquire(inv, holder)
    try:
        with squatter(held, port):
            report = check(inv, timeout=30)
        assert [r.label for r in report.failed] == [held.address]
        assert report.failed[0].failed == ["callback"]
        with pytest.raises(HostLeased) as e:
            leased_elsewhere(inv, report, JobInfo.new("other.R").job, wait=False)
        assert e.value.holder == holder and e.value.host == held.address
        assert str(e.value).startswith(f"{held.address} is leased to job {holder.job} ")
        assert "failed the check's callback while that job runs there" in str(e.value)
        assert "--wait" in (e.value.hint or "")
        with pytest.raises(HostLeased) as e:
            leased_elsewhere(inv, report, None, wait=True)
        assert "run again once that job has ended" in (e.value.hint or "")
        leased_elsewhere(inv, report, holder.job, wait=False)  # its own: nothing
    finally:
        leases.release()
    # a free host that failed the check: nothing to say beyond the check's own words
    deadline = time.monotonic() + JOB_TIMEOUT
    while any(lease.holder for lease in list_leases(inv)):  # (the lock goes with its shell)
        assert time.monotonic() < deadline, "the lease was never released"
        time.sleep(0.2)
    leased_elsewhere(inv, report, None, wait=False)


def _stopped(lease: HostLease) -> None:
    """The lease's ssh stopped (SIGSTOP): its host hears nothing more, and no end."""
    os.killpg(lease.proc.pid, signal.SIGSTOP)


def _resumed(lease: HostLease) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(lease.proc.pid, signal.SIGCONT)
    lease.close()


def test_a_lease_whose_holder_falls_silent_is_released(
        testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job's heartbeat keeps its lease past the silence (4 s here); once its lease's
    ssh is stopped (nothing more reaches the host, and no end either), the host ends
    the lease by itself."""
    monkeypatch.setenv(SILENCE_ENV, "4")
    inv = load_inventory(inventory(testbed, tmp_path / "hosts.yaml", hosts=[0]))
    leases = acquire(inv, JobInfo.new("one.R"))
    try:
        time.sleep(9)  # (more than twice the silence)
        assert list_leases(inv)[0].holder is not None, "a beating holder lost its lease"
        _stopped(leases.held[0])
        _until(lambda: list_leases(inv)[0].holder is None, "the silent lease to end")
    finally:
        for lease in leases.held:
            _resumed(lease)
        leases.release()
    assert testbed.leftovers(LEFTOVER, wait=15) == {}


def test_a_waiter_whose_holder_falls_silent_leaves_the_line(
        testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two jobs wait in line behind a third; the first waiter's ssh is stopped: it
    leaves the line after the silence, and the second waiter moves up to place 1."""
    monkeypatch.setenv(SILENCE_ENV, "4")
    inv = load_inventory(inventory(testbed, tmp_path / "hosts.yaml", hosts=[1]))
    host = inv.hosts[0]
    first = acquire(inv, JobInfo.new("a.R"))
    waiters: list[HostLease] = []
    try:
        deadline = time.monotonic() + JOB_TIMEOUT
        waiters.append(HostLease(inv, host, "wait", JobInfo.new("b.R")))
        assert waiters[0].next(deadline).startswith("wait 1 ")
        waiters.append(HostLease(inv, host, "wait", JobInfo.new("c.R")))
        line = waiters[1].next(deadline)
        while not line.startswith("wait 2 "):  # (until it has seen the first waiter)
            line = waiters[1].next(deadline)
        _stopped(waiters[0])
        while not line.startswith("wait 1 "):
            line = waiters[1].next(deadline)
    finally:
        for lease in waiters:
            _resumed(lease)
        first.release()
    assert testbed.leftovers(LEFTOVER, wait=15) == {}
