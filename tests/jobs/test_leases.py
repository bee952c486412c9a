"""Leases on real test hosts: a second job on an overlapping host refuses and names the
first, or waits in line with --wait and starts when the first has ended; ``jobs`` lists
who holds what; a lease dies with its session."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sshcluster.errors import HostLeased
from sshcluster.inventory import load_inventory
from sshcluster.jobs import JobInfo, acquire, list_leases
from sshcluster.testing import Testbed
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
