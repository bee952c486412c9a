"""Detached jobs on real test hosts (``sshcluster run --detach``): the job runs on a host
of the cluster under a supervisor there, outlives the user's connection, and ``jobs``,
``logs``, ``stop`` and ``fetch`` find it afterwards. Stopped, or its supervisor killed
outright, nothing of it is left on any host. ``SSHCLUSTER_DETACH_LOOPS=N`` repeats the
stop and kill cases N times."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from sshcluster.cli import cli
from sshcluster.inventory import load_inventory
from sshcluster.jobs import list_leases
from sshcluster.testing import Testbed
from sshcluster.testing.fixtures import build_testbed
from tests.jobs.helpers import (
    DETACHED_LEFTOVER,
    JOB_TIMEOUT,
    inventory,
    sshcluster,
    start,
    until_state,
)

LOOPS = int(os.environ.get("SSHCLUSTER_DETACH_LOOPS", "1"))

#: Writes a result on every host, prints, waits for a flag file (up to a minute).
SCRIPT = """\
flag <- commandArgs(TRUE)[1]
cat("started", commandArgs(TRUE)[2], "\\n")
invisible(parallel::clusterEvalQ(parallelCluster, {
  dir.create("results", showWarnings = FALSE)
  writeLines(Sys.info()[["nodename"]], file.path("results", paste0(Sys.getpid(), ".txt")))
  cat("worker on", Sys.info()[["nodename"]], "\\n")
}))
for (i in 1:600) { if (file.exists(flag)) break; Sys.sleep(0.1) }
cat("finished\\n")
quit(status = as.integer(commandArgs(TRUE)[3]))
"""

#: Every worker busy for far longer than a test lets it run.
BUSY = """\
cat("started\\n")
parallel::parLapply(parallelCluster, seq_along(parallelCluster), function(i) Sys.sleep(300))
"""
#: BUSY, saying where its R's temporary directory is first.
BUSY_TEMP = 'cat("started", tempdir(), "\\n")\n' + BUSY.split("\n", 1)[1]


@pytest.fixture(scope="module")
def mesh(request: pytest.FixtureRequest, testbed_env: None) -> Iterator[Testbed]:
    """Three hosts whose root can ssh to each other (the primary host launches)."""
    yield build_testbed(request, 3, mesh=True)


def _inventory(tb: Testbed, tmp_path: Path, workdir: str | None = None) -> Path:
    """The hosts' inventory, with a workdir: ``workdir``, by default one in ``tmp_path``
    (without one, the workers' results/ would be in the login directory, which is this
    machine's /root: the test hosts share its filesystem)."""
    inv = inventory(tb, tmp_path / "hosts.yaml")
    data = yaml.safe_load(inv.read_text())
    data["workdir"] = workdir or str(tmp_path / "work")
    inv.write_text(yaml.safe_dump(data))
    return inv


def _nothing_left(tb: Testbed, inv: Path) -> None:
    at_once = tb.leftovers(DETACHED_LEFTOVER)
    later = tb.leftovers(DETACHED_LEFTOVER, wait=30)
    held = [lease.host for lease in list_leases(load_inventory(inv)) if lease.holder]
    # (printed for loops of these tests: what was left at once, and 30 s later)
    print(f"left: at once {sum(map(len, at_once.values()))} processes {at_once}, "
          f"after 30 s {sum(map(len, later.values()))}, leases held {len(held)}")
    assert later == {} and held == []


def test_a_detached_job_outlives_its_user_and_is_fetched(mesh: Testbed, tmp_path: Path
                                                         ) -> None:
    workdir = f"/tmp/sshcluster-detached-{uuid.uuid4().hex[:8]}"
    inv = _inventory(mesh, tmp_path, workdir)
    script = tmp_path / "fit.R"
    script.write_text(SCRIPT)
    flag, state = tmp_path / "flag", tmp_path / "state"
    try:
        done = sshcluster(["run", "--detach", "--json", str(inv), str(script), "--",
                           str(flag), "a b", "0"], state)
        assert done.returncode == 0, done.stderr
        job = json.loads(done.stdout)["job"]
        first = mesh.hosts[0].address
        assert json.loads(done.stdout)["primary"] == first
        assert until_state(job, state, {"running"})["primary"] == first
        # Its R runs on the primary host; every host is leased to it.
        leases = list_leases(load_inventory(inv))
        assert {lease.holder.job if lease.holder else None for lease in leases} == {job}
        # The user follows its log, and that connection is cut (killed outright).
        follower = start(["logs", "-f", job], state)
        assert follower.stdout is not None
        line = follower.stdout.readline()
        while line.startswith("sshcluster: still waiting for workers"):
            line = follower.stdout.readline()  # (the launch's progress, on a busy machine)
        assert line == "started a b \n"
        follower.kill()
        follower.wait()
        flag.touch()
        ended = until_state(job, state, {"done", "failed", "stopped", "lost"})
        assert ended["state"] == "done" and ended["status"] == 0, ended
        logs = sshcluster(["logs", job], state)
        assert logs.returncode == 0 and logs.stdout.endswith("finished\n"), logs.stderr
        out = tmp_path / "out"
        fetched = sshcluster(["fetch", job, "--to", str(out), "--json"], state)
        assert fetched.returncode == 0, fetched.stderr
        summary = json.loads(fetched.stdout)
        # 6 workers each wrote a file named after its pid; the hosts share /tmp here,
        # so every name is on every host and is kept apart by host
        got = [p for p in out.rglob("*.txt")]
        assert len({p.name for p in got}) == 6
        assert {p.parent.name for p in got} == {h.address for h in mesh.hosts}
        record = summary["record"]
        assert record["status"] == 0 and record["args"] == [str(flag), "a b", "0"]
        assert {"lease", "launch", "script", "stop"} <= set(record["phases"])
        run_dir = Path(record["run_dir"])
        assert "finished" in (run_dir / "log").read_text()
        assert "worker on node2" in (run_dir / "workers" / f"{mesh.hosts[1].address}.log"
                                     ).read_text()
        # the ended job is all here: its directory on the primary host is gone, and
        # jobs and logs answer from the record
        there = f"/root/.cache/sshcluster/jobs/{job}"
        assert mesh.run(mesh.hosts[0], ["test", "-e", there], check=False).returncode == 1
        listed = sshcluster(["jobs", "--json"], state)
        assert [j["state"] for j in json.loads(listed.stdout) if j["job"] == job] == ["done"]
        assert sshcluster(["logs", job], state).stdout.endswith("finished\n")
    finally:
        flag.touch()
        shutil.rmtree(workdir, ignore_errors=True)
    _nothing_left(mesh, inv)


@pytest.mark.slow
def test_logs_follows_the_workers_too_with_worker_output(mesh: Testbed, tmp_path: Path
                                                         ) -> None:
    """--detach --worker-output: 'logs -f' shows what the workers print, each line
    after its host, with the script's own output, until the job ends. (A task's lines
    come to the primary host as the task answers, or when the cluster stops.)"""
    workdir = f"/tmp/sshcluster-detached-{uuid.uuid4().hex[:8]}"
    inv = _inventory(mesh, tmp_path, workdir)
    script = tmp_path / "fit.R"
    # one string per line: two workers on a host share their output
    script.write_text(SCRIPT.replace('cat("worker on", Sys.info()[["nodename"]], "\\n")',
                                     'cat(paste0("worker on ", Sys.info()[["nodename"]], '
                                     '"\\n"))'))
    flag, state = tmp_path / "flag", tmp_path / "state"
    try:
        done = sshcluster(["run", "--detach", "--worker-output", str(inv), str(script),
                           "--", str(flag), "w", "0"], state)
        assert done.returncode == 0, done.stderr
        job = done.stdout.strip()
        follower = start(["logs", "-f", job], state)
        guard = threading.Timer(JOB_TIMEOUT, follower.kill)
        guard.start()
        assert follower.stdout is not None
        lines: list[str] = []
        while "started w " not in lines:  # (the launch may say it waits, before)
            line = follower.stdout.readline()
            assert line, f"the log ended early: {lines}"
            lines.append(line.rstrip("\n"))
        flag.touch()
        lines += follower.stdout.read().splitlines()
        assert follower.wait() == 0
        guard.cancel()
        assert lines[-1] == "finished", lines
        # each worker printed one line: two per host, each after its host
        wanted = {f"[{h.address}] worker on {h.hostname}" for h in mesh.hosts}
        assert sorted(x for x in lines if x.startswith("[")) == sorted([*wanted, *wanted])
    finally:
        flag.touch()
        shutil.rmtree(workdir, ignore_errors=True)
    _nothing_left(mesh, inv)


@pytest.mark.slow  # (the cases beyond the first, each a job or two)
def test_a_failing_detached_job_s_status_and_a_refusal(mesh: Testbed, tmp_path: Path
                                                       ) -> None:
    inv = _inventory(mesh, tmp_path)
    script = tmp_path / "fit.R"
    script.write_text(SCRIPT)
    flag, state = tmp_path / "flag", tmp_path / "state"
    try:
        done = sshcluster(["run", "--detach", str(inv), str(script), "--", str(flag), "x",
                           "3"], state)
        assert done.returncode == 0, done.stderr
        job = done.stdout.strip()
        until_state(job, state, {"running"})
        # A second job, attached or detached, on the same hosts refuses, naming the first
        # (whether the lease or the check stops it first).
        for detach in (["--detach"], []):
            second = sshcluster(["run", *detach, str(inv), str(script), "--", str(flag)],
                                state)
            assert second.returncode == 1, second.stderr
            assert f"is leased to job {job}" in second.stderr and "script fit.R" in \
                second.stderr, second.stderr
        flag.touch()
        ended = until_state(job, state, {"done", "failed", "stopped", "lost"})
        assert ended["state"] == "failed" and ended["status"] == 3, ended
    finally:
        flag.touch()
    _nothing_left(mesh, inv)


@pytest.mark.slow  # (the cases beyond the first, each a job or two)
def test_a_detached_job_waits_in_line(mesh: Testbed, tmp_path: Path) -> None:
    """--detach --wait: the second job returns at once, waiting in line behind the
    first (jobs says so), and runs when the first has ended."""
    inv = _inventory(mesh, tmp_path)
    script = tmp_path / "fit.R"
    script.write_text(SCRIPT)
    flag, state = tmp_path / "flag", tmp_path / "state"
    try:
        first = sshcluster(["run", "--detach", str(inv), str(script), "--", str(flag), "1",
                            "0"], state)
        assert first.returncode == 0, first.stderr
        job1 = first.stdout.strip()
        until_state(job1, state, {"running"})
        second = sshcluster(["run", "--detach", "--wait", str(inv), str(script), "--",
                             str(flag), "2", "0"], state)
        assert second.returncode == 0, second.stderr
        assert f"place 1 in line, behind job {job1}" in second.stderr
        job2 = second.stdout.strip()
        waiting = until_state(job2, state, {"waiting"})
        assert f"behind job {job1}" in str(waiting["detail"])
        flag.touch()
        for job in (job1, job2):
            assert until_state(job, state, {"done", "failed", "stopped"})["state"] == "done"
        assert sshcluster(["logs", job2], state).stdout.startswith("started 2")
    finally:
        flag.touch()
    _nothing_left(mesh, inv)


def _busy_job(tb: Testbed, tmp_path: Path, state: Path) -> tuple[Path, str]:
    inv = _inventory(tb, tmp_path)
    script = tmp_path / "busy.R"
    script.write_text(BUSY_TEMP)
    done = sshcluster(["run", "--detach", "--primary", tb.hosts[1].address, str(inv),
                       str(script)], state)
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip()
    until_state(job, state, {"running"})
    # every worker runs its task: R on every host
    deadline = time.monotonic() + JOB_TIMEOUT
    while not all(len(tb.processes(h, "R")) >= 2 for h in tb.hosts):
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.2)
    return inv, job


def _r_tempdir(job: str, state: Path) -> str:
    """The job's R's tempdir(), as BUSY_TEMP said it in the job's log."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while True:
        log = sshcluster(["logs", job], state).stdout
        said = [line.split()[1] for line in log.splitlines() if line.startswith("started ")]
        if said:
            return said[0]
        assert time.monotonic() < deadline, log
        time.sleep(0.2)


def _no_r_tempdir(tb: Testbed, job: str, temp: str) -> None:
    """Neither the job's R's tempdir() (R stopped by a signal leaves it) nor the
    directory it was made in (the job's TMPDIR, in the host's) is left on its primary
    host."""
    mine = os.path.dirname(temp)
    assert os.path.basename(mine).startswith("sshcluster-job."), temp
    assert os.path.basename(temp).startswith("Rtmp"), temp
    for path in (temp, mine):
        assert tb.run(tb.hosts[1], ["test", "-e", path], check=False).returncode == 1, path


@pytest.mark.slow
def test_stop_ends_a_detached_job_and_everything_it_started(mesh: Testbed, tmp_path: Path
                                                            ) -> None:
    """Its R, its cluster, its leases, and its R's temporary directory."""
    for attempt in range(LOOPS):
        state = tmp_path / f"state{attempt}"
        inv, job = _busy_job(mesh, tmp_path, state)
        temp = _r_tempdir(job, state)
        assert mesh.run(mesh.hosts[1], ["test", "-d", temp], check=False).returncode == 0
        stopped = sshcluster(["stop", "--json", job], state)
        assert stopped.returncode == 0, stopped.stderr
        assert json.loads(stopped.stdout)["state"] == "stopped", stopped.stdout
        _no_r_tempdir(mesh, job, temp)  # (as soon as the job has ended)
        _nothing_left(mesh, inv)
        # stopping it again is harmless
        assert sshcluster(["stop", job], state).returncode == 0


@pytest.mark.slow
def test_a_supervisor_killed_outright_leaves_nothing(mesh: Testbed, tmp_path: Path) -> None:
    """SIGKILL for the supervisor alone (no cleanup of its own can run): its watcher
    stops R, R's end stops the cluster, and the leases end with the supervisor."""
    for attempt in range(LOOPS):
        state = tmp_path / f"state{attempt}"
        inv, job = _busy_job(mesh, tmp_path, state)
        temp = _r_tempdir(job, state)
        supervisors = [pid for pid in mesh.processes(mesh.hosts[1], "sh")
                       if b"supervise.sh" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        # (its subshells, the watcher among them, have the same command line)
        top = [p for p in supervisors if _parent(p) not in supervisors]
        assert len(top) == 1, supervisors
        os.kill(top[0], signal.SIGKILL)
        _nothing_left(mesh, inv)
        _no_r_tempdir(mesh, job, temp)  # (its watcher removed it, once all had ended)
        listed = until_state(job, state, {"failed", "done", "stopped"})
        assert listed["state"] == "failed" and "supervisor" in str(listed["detail"])


@pytest.mark.slow  # (the cases beyond the first, each a job or two)
def test_a_job_whose_primary_host_is_lost_is_reported_lost(mesh: Testbed, tmp_path: Path
                                                           ) -> None:
    """A record whose primary host cannot be reached: ``jobs`` says lost, not running."""
    inv = _inventory(mesh, tmp_path)
    script = tmp_path / "fit.R"
    script.write_text(SCRIPT)
    flag, state = tmp_path / "flag", tmp_path / "state"
    try:
        done = sshcluster(["run", "--detach", str(inv), str(script), "--", str(flag), "x",
                           "0"], state)
        assert done.returncode == 0, done.stderr
        job = done.stdout.strip()
        record = state / "runs" / job / "inventory.yaml"
        data = yaml.safe_load(record.read_text())
        real = data["hosts"][0]["host"]
        # the record's primary host now names an address with no sshd behind it
        data["hosts"][0]["host"] = "127.0.0.9"
        record.write_text(yaml.safe_dump(data))
        meta = state / "runs" / job / "detached.json"
        meta.write_text(meta.read_text().replace(f'"{real}"', '"127.0.0.9"'))
        listed = sshcluster(["jobs", "--json"], state)
        assert listed.returncode == 1
        mine = next(j for j in json.loads(listed.stdout) if j["job"] == job)
        assert mine["state"] == "lost" and "127.0.0.9" in mine["detail"]
        # put it back: the job is still there, and ends as it should
        record.write_text(record.read_text().replace("127.0.0.9", real))
        meta.write_text(meta.read_text().replace('"127.0.0.9"', f'"{real}"'))
        flag.touch()
        assert until_state(job, state, {"done", "failed"})["state"] == "done"
    finally:
        flag.touch()
    _nothing_left(mesh, inv)


def test_job_commands_name_unknown_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    monkeypatch.setenv("SSHCLUSTER_STATE_DIR", str(tmp_path))
    for args in (["logs", "nope"], ["stop", "nope"], ["fetch", "nope"], ["logs", "../x"]):
        done = CliRunner().invoke(cli, args)
        assert done.exit_code == 2, done.output
        assert "no detached job" in done.output and done.exception is not None
        assert isinstance(done.exception, SystemExit)  # a message, not a traceback


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])




def _supervisor_dir(tmp_path: Path, job: str, lease_cmd: str) -> Path:
    """A run directory for the real supervisor (supervise.sh) of ``job``, one host (h1)
    leased through ``lease_cmd`` (a shell script here, ssh in a real job)."""
    from sshcluster.jobs import detached

    run = tmp_path / "job"
    run.mkdir()
    (run / "supervise.sh").write_bytes(detached.SUPERVISOR.read_bytes())
    (run / "job.env").write_text(f"JOB={job}\nRSCRIPT=Rscript\nMODE=try\nN=1\n"
                                 "LEASE_TIMEOUT=20\nSTOP_TIMEOUT=5\n")
    (run / "hosts").write_text("h1\n")
    (run / "lease.1.in").write_text("")
    (run / "lease.1.cmd").write_text(lease_cmd)
    return run


def test_a_refusal_said_as_the_lease_session_ends_is_a_refusal(tmp_path: Path) -> None:
    """A lease session that says "held ..." (another job holds the host) and ends at once
    may end between the supervisor's look at what it said and its look at whether it
    runs: that is still a refusal naming the job that holds the host, not a session that
    ended for no reason (in a full run, a second job was once told "its session ended"
    instead of whose lease it met). The real supervisor, here, made slow to look by a
    tail(1) that takes a second after it has read (a loaded machine), and a session that
    answers only once that tail has read: its answer comes between the two looks."""
    run = _supervisor_dir(tmp_path, "j2", "while [ ! -e tail.ran ]; do sleep 0.01; done\n"
                                        "printf 'held j1\\tscript fit.R\\n'\n")
    slow = tmp_path / "bin"
    slow.mkdir()
    tail = slow / "tail"
    tail.write_text(f'#!/bin/sh\n{shutil.which("tail")} "$@"\nstatus=$?\n: >tail.ran\n'
                    'sleep 1\nexit $status\n')
    tail.chmod(0o755)
    subprocess.run(["sh", "./supervise.sh"], cwd=run, check=True, timeout=60,
                   env={**os.environ, "PATH": f"{slow}:{os.environ['PATH']}"})
    assert (run / "state").read_text() == "ended\n"
    assert (run / "why").read_text() == "refused h1 j1\tscript fit.R\n"
    assert (run / "status").read_text() == "1\n"


def test_a_start_that_ends_before_it_is_seen_says_why(tmp_path: Path) -> None:
    """The start polls the supervisor's state; a job refused or failed at once may reach
    "ended" between two polls: the start still reads the refusal or failure (from
    ``why``), not a job that ended. The real supervisor, here, with a lease that fails
    at once (run to its end first, so the poll sees only "ended")."""
    from sshcluster.jobs import detached

    run = _supervisor_dir(tmp_path, "j1", "echo 'no way in' >&2\nexit 255\n")
    subprocess.run(["sh", "./supervise.sh"], cwd=run, check=True, timeout=60)
    assert (run / "state").read_text() == "ended\n"
    poll = detached._START.split("\nfi\n", 1)[1].replace("{polls}", "10")  # (after the start)
    said = subprocess.run(["sh", "-c", poll], cwd=run, capture_output=True, text=True,
                          timeout=30).stdout.strip()
    assert said.startswith("failed h1: cannot take its lease from this host: no way in"), said


@pytest.mark.parametrize("setsid_f", [True, False], ids=["setsid -f", "no setsid -f"])
def test_the_supervisor_starts_in_a_session_of_its_own_with_any_setsid(
        tmp_path: Path, setsid_f: bool) -> None:
    """The start runs the supervisor with setsid: with util-linux's -f, or with a setsid
    that has none (util-linux before 2.31, BusyBox), where it ran nothing and the start
    waited out its polls. Here the start's script after its unpacking, with a stand-in
    supervisor that says where it runs."""
    from sshcluster.jobs import detached

    run = tmp_path / "job"
    run.mkdir()
    (run / "supervise.sh").write_text(
        'sid=$(ps -o sid= -p $$ | tr -d " ")\n'
        '[ "$sid" = "$$" ] && echo own > session || echo "shared $sid" > session\n'
        "echo running > state\nsleep 2\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real = shutil.which("setsid")
    assert real is not None
    if not setsid_f:
        fake = bin_dir / "setsid"
        fake.write_text('#!/bin/sh\ncase "$1" in -f) echo "setsid: invalid option -- '
                        f"'f'\" >&2; exit 1;; esac\nexec {real} \"$@\"\n")
        fake.chmod(0o755)
    poll = detached._START.split("tar -xf - || exit 1\n", 1)[1].replace("{polls}", "100")
    said = subprocess.run(["sh", "-c", poll], cwd=run, capture_output=True, text=True,
                          timeout=60, env={**os.environ,
                                           "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert said.stdout.strip() == "running", said.stdout + said.stderr
    assert (run / "session").read_text() == "own\n"
