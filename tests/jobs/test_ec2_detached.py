"""``sshcluster run --ec2 --detach``: a fleet for one detached job, on the EC2 stand-in
(moto's HTTP server) with its instances mapped onto the local SSH test hosts (the seams
of test_ec2_run.py; moto's made-up addresses are never contacted). The test hosts are
not meshed: the primary instance reaches the other with the key made for the job.

The fleet is the job's in ``ec2 ls`` and ``gc``; ``gc`` leaves it alone while its
expiry is ahead and takes it once past; ``fetch`` of the ended job brings its results,
then ends the fleet; ``stop`` ends the job and the fleet."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sshcluster import ec2
from sshcluster.cli import cli
from sshcluster.dump import dump_inventory
from sshcluster.inventory import load_inventory
from sshcluster.jobs import job_status, release_fleet, stop_job
from sshcluster.jobs.detached import JobError, load_job
from sshcluster.jobs.record import runs_dir
from sshcluster.testing import Testbed
from tests.ec2.helpers import nothing_left
from tests.jobs.helpers import JOB_TIMEOUT
from tests.jobs.test_detached import BUSY, DETACHED_LEFTOVER
from tests.jobs.test_ec2_run import _spec

pytestmark = pytest.mark.slow  # a fleet per test

#: Each worker writes results/TAG-PID.txt (in the login directory, which the test hosts
#: share), then the script waits for a flag file (up to a minute).
SCRIPT = """\
flag <- commandArgs(TRUE)[1]
tag <- commandArgs(TRUE)[2]
invisible(parallel::clusterCall(parallelCluster, function(tag) {
  dir.create("results", showWarnings = FALSE)
  name <- paste0(tag, "-", Sys.getpid(), ".txt")
  writeLines(Sys.info()[["nodename"]], file.path("results", name))
  cat("worker on", Sys.info()[["nodename"]], "\\n")
}, tag))
for (i in 1:600) { if (file.exists(flag)) break; Sys.sleep(0.1) }
cat("finished\\n")
"""


def _seams(moto_url: str, testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           name: str) -> tuple[Any, ec2.Seams, Path]:
    client, seams, spec = _spec(moto_url, testbed, tmp_path, monkeypatch, name)
    # the instances reach each other where this machine reaches them: the test hosts
    return client, ec2.Seams(address_of=seams.address_of, console_text=seams.console_text,
                             read_status=seams.read_status,
                             inner_address_of=seams.address_of), spec


def _until(job: str, wanted: set[str]) -> str:
    deadline = time.monotonic() + JOB_TIMEOUT
    while (state := job_status(job).state) not in wanted:
        assert time.monotonic() < deadline, f"job {job} still {state}"
        time.sleep(0.3)
    return state


def _end(job: str | None, client: Any, runner: CliRunner, name: str) -> None:
    """After a failure: the job stopped, its key off the test hosts, its fleet ended."""
    if job is not None:
        with contextlib.suppress(Exception):
            stop_job(job)
        with contextlib.suppress(Exception):
            release_fleet(job)
    if nothing_left(client):
        runner.invoke(cli, ["ec2", "down", name])


def _job_keys(testbed: Testbed) -> list[str]:
    """The lines of the test hosts' authorized_keys that a job added."""
    return [line for h in testbed.hosts
            for line in testbed.run(h, ["cat", "/root/.ssh/authorized_keys"]).stdout.splitlines()
            if "sshcluster-job-" in line]


#: The workers' results/ (an EC2 cluster's inventory has no workdir: the login directory,
#: which is this machine's /root, as the test hosts share its filesystem).
RESULTS = Path("/root/results")


def _forget_results(tag: str, made: bool) -> None:
    """Remove the results the workers wrote for ``tag``, and results/ once nothing is in
    it (also where another test, running at the same time, ``made`` it: whichever ends
    last removes it; an empty results/ is nobody's data)."""
    for written in RESULTS.glob(f"{tag}-*.txt"):
        written.unlink()
    with contextlib.suppress(OSError):
        RESULTS.rmdir()


def _script(tmp_path: Path, prefix: str) -> tuple[Path, Path, str, bool]:
    """The job's script, the flag file that lets it end, a tag for its result files, and
    whether results/ is yet to be made."""
    script = tmp_path / "fit.R"
    script.write_text(SCRIPT)
    return script, tmp_path / "flag", f"{prefix}{uuid.uuid4().hex[:8]}", not RESULTS.exists()


def test_a_detached_job_s_fleet_lives_until_its_results_are_fetched(
        moto_url: str, testbed: Testbed, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    client, seams, spec = _seams(moto_url, testbed, tmp_path, monkeypatch, "jobdet")
    script, flag, tag, made = _script(tmp_path, "jobdet")
    runner, job = CliRunner(), None
    try:
        done = runner.invoke(cli, ["run", "--ec2", "--detach", "--json", str(spec),
                                   str(script), "--", str(flag), tag], obj=seams)
        assert done.exit_code == 0, done.output
        job = json.loads(done.stdout)["job"]
        assert _until(job, {"running", "done", "failed"}) == "running"
        listed = runner.invoke(cli, ["jobs", "--json"])
        assert [j["state"] for j in json.loads(listed.stdout) if j["job"] == job] == \
            ["running"]
        # ls shows the fleet as the job's
        shown = runner.invoke(cli, ["ec2", "ls", "--json"])
        (fleet,) = json.loads(shown.stdout)
        assert fleet["name"] == "jobdet" and fleet["job"] == job
        assert len([i for i in fleet["instances"] if i["state"] == "running"]) == 2
        assert f"jobdet (job {job})" in runner.invoke(cli, ["ec2", "ls"]).stdout
        # the job's key: on the primary for the job alone, and limited on every host
        key = f"/root/.cache/sshcluster/jobs/{job}/access_key"
        host = testbed.hosts[0]  # (the test hosts share the login directory)
        assert testbed.run(host, ["stat", "-c", "%a", key]).stdout.strip() == "600"
        assert [line.split()[0] for line in _job_keys(testbed)] == \
            ["no-pty,no-agent-forwarding,no-X11-forwarding"] * 2
        # gc leaves a running job's fleet alone while its expiry is ahead ...
        gc = runner.invoke(cli, ["ec2", "gc", "--yes"])
        assert gc.exit_code == 0 and "nothing to collect" in gc.stdout, gc.output
        assert len(nothing_left(client)["instances"]) == 2
        # ... and would take it once past (as any fleet's)
        later = ec2.utcnow() + timedelta(hours=1, minutes=1)
        (garbage,) = ec2.find_garbage(client=client, now=later)
        assert garbage.job == job and garbage.reason.startswith("expired at")
        flag.touch()
        assert _until(job, {"done", "failed", "stopped", "lost"}) == "done"
        # ended, results not fetched yet: the fleet waits for them; the key is gone
        assert len(nothing_left(client)["instances"]) == 2
        gone = testbed.run(host, ["sh", "-c", f"test -e {key} || echo gone"])
        assert gone.stdout.strip() == "gone"
        out = tmp_path / "out"
        fetched = runner.invoke(cli, ["fetch", job, "--to", str(out), "--json"])
        assert fetched.exit_code == 0, fetched.output
        assert json.loads(fetched.stdout)["record"]["status"] == 0
        # 2 hosts, 2 workers each (the hosts share the login directory here: each name
        # is on both, and kept apart by host)
        assert len({p.name for p in out.rglob(f"{tag}-*.txt")}) == 4
        assert "ended" in fetched.stderr
        assert nothing_left(client) == {}
        # the record stays: jobs and logs answer from it
        assert job_status(job).state == "done"
        logs = runner.invoke(cli, ["logs", job])
        assert logs.exit_code == 0 and logs.stdout.endswith("finished\n"), logs.output
        again = runner.invoke(cli, ["fetch", job])
        assert again.exit_code == 1 and "has ended" in again.output
    finally:
        flag.touch()
        _end(job, client, runner, "jobdet")  # (first: a job cut short still writes)
        _forget_results(tag, made)
    assert _job_keys(testbed) == []
    assert testbed.leftovers(DETACHED_LEFTOVER, wait=15) == {}


def _busy_job(runner: CliRunner, seams: Any, spec: Path, tmp_path: Path) -> str:
    """A detached EC2 job whose workers stay busy: its id."""
    script = tmp_path / "busy.R"
    script.write_text(BUSY)
    done = runner.invoke(cli, ["run", "--ec2", "--detach", str(spec), str(script)],
                         obj=seams)
    assert done.exit_code == 0, done.output
    return str(done.stdout.strip())


def test_stop_ends_a_detached_job_and_its_fleet(moto_url: str, testbed: Testbed,
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    client, seams, spec = _seams(moto_url, testbed, tmp_path, monkeypatch, "jobstop")
    runner, job = CliRunner(), None
    try:
        job = _busy_job(runner, seams, spec, tmp_path)
        assert _until(job, {"running", "done", "failed"}) == "running"
        stopped = runner.invoke(cli, ["stop", "--json", job])
        assert stopped.exit_code == 0, stopped.output
        assert json.loads(stopped.stdout)["state"] == "stopped"
        assert nothing_left(client) == {}
        # stopping it again is harmless, and says the same
        again = runner.invoke(cli, ["stop", job])
        assert again.exit_code == 0 and again.stdout.split() == [job, "stopped"]
    finally:
        _end(job, client, runner, "jobstop")
    assert _job_keys(testbed) == []
    assert testbed.leftovers(DETACHED_LEFTOVER, wait=15) == {}


def test_a_job_that_cannot_start_ends_its_fleet(moto_url: str, testbed: Testbed,
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Up, then the primary instance cannot reach the other at its inner address (a
    closed port on its own loopback): the job fails to take its leases, the fleet ends,
    and no record of the job is left (jobs would list it as lost)."""
    client, seams, spec = _seams(moto_url, testbed, tmp_path, monkeypatch, "jobnot")
    loopback: dict[str, ec2.Endpoint] = {}  # (each instance its own: 127.0.0.2, ...)

    def inner(instance: Any) -> ec2.Endpoint:
        return loopback.setdefault(instance.id, ec2.Endpoint(f"127.0.0.{len(loopback) + 2}", 1))

    closed = replace(seams, inner_address_of=inner)
    script = tmp_path / "fit.R"
    script.write_text("cat(1)\n")
    done = CliRunner().invoke(cli, ["run", "--ec2", "--detach", str(spec), str(script)],
                              obj=closed)
    assert done.exit_code == 1, done.output
    assert "could not start" in done.output and "cannot take its lease" in done.output
    assert "ending cluster jobnot" in done.output
    assert nothing_left(client) == {}
    assert _job_keys(testbed) == []
    assert [p.name for p in runs_dir().iterdir()] == ["ec2"]
    assert runner_jobs() == []
    assert testbed.leftovers(DETACHED_LEFTOVER, wait=15) == {}

    # Before the job is sent: an instance without an inner address (the default seam's
    # "no private IP"), after the record named the fleet; that record goes too.
    def no_private_ip(instance: Any) -> ec2.Endpoint:
        raise JobError(f"instance {instance.id} has no private IP")

    done = CliRunner().invoke(cli, ["run", "--ec2", "--detach", str(spec), str(script)],
                              obj=replace(seams, inner_address_of=no_private_ip))
    assert done.exit_code == 1 and "has no private IP" in done.output, done.output
    assert nothing_left(client) == {}
    assert [p.name for p in runs_dir().iterdir()] == ["ec2"]


def runner_jobs() -> list[str]:
    return [j["job"] for j in json.loads(CliRunner().invoke(cli, ["jobs", "--json"]).stdout)]


def test_a_bad_primary_costs_no_fleet(moto_url: str, testbed: Testbed, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    client, seams, spec = _seams(moto_url, testbed, tmp_path, monkeypatch, "jobprim")
    script = tmp_path / "fit.R"
    script.write_text("cat(1)\n")
    for primary in ("3", "0", "10.0.0.1"):
        done = CliRunner().invoke(cli, ["run", "--ec2", "--detach", "--primary", primary,
                                        str(spec), str(script)], obj=seams)
        assert done.exit_code == 1, done.output
        assert f"--primary {primary}: not an instance of the fleet (its instances: 1 to 2)" \
            in done.output
        assert "nothing was started" in done.output
    assert client.describe_instances()["Reservations"] == []  # (none, ever)



def _unreachable(job: str, label: str) -> str:
    """Host ``label`` of the job's inventory here refuses this machine (a user it does not
    have: the same host label, no way in); the inventory as it was, to put back."""
    path = runs_dir() / job / "inventory.yaml"
    was = path.read_text()
    inv = load_inventory(path)
    hosts = tuple(replace(h, user="nobody-sshcluster") if h.label == label else h
                  for h in inv.hosts)
    path.write_text(dump_inventory(replace(inv, hosts=hosts)))
    return was


def test_stop_ends_the_fleet_a_partial_fetch_left(moto_url: str, testbed: Testbed,
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A fetch of the ended job that cannot read a host writes run.json and leaves the
    fleet running, saying so; stop then ends it."""
    client, seams, spec = _seams(moto_url, testbed, tmp_path, monkeypatch, "jobpart")
    script, flag, tag, made = _script(tmp_path, "jobpart")
    runner, job = CliRunner(), None
    try:
        done = runner.invoke(cli, ["run", "--ec2", "--detach", "--primary", "2", str(spec),
                                   str(script), "--", str(flag), tag], obj=seams)
        assert done.exit_code == 0, done.output
        job = done.stdout.strip()
        flag.touch()
        assert _until(job, {"done", "failed", "stopped", "lost"}) == "done"
        _, inv, primary = load_job(job)
        assert primary.label == inv.hosts[1].label  # (--primary 2: the second instance)
        (other,) = [h.label for h in inv.hosts if h.label != primary.label]
        _unreachable(job, other)
        fetched = runner.invoke(cli, ["fetch", job, "--to", str(tmp_path / "out")])
        assert fetched.exit_code == 1, fetched.output
        assert "cluster jobpart is still running" in fetched.stderr
        assert f"'sshcluster stop {job}'" in fetched.stderr
        assert "'sshcluster ec2 down jobpart'" in fetched.stderr
        assert (runs_dir() / job / "run.json").is_file()
        assert len(nothing_left(client)["instances"]) == 2
        stopped = runner.invoke(cli, ["stop", job])
        assert stopped.exit_code == 0, stopped.output
        assert stopped.stdout.split() == [job, "done"]
        assert "cluster jobpart ended" in stopped.stderr
        assert nothing_left(client) == {}
        again = runner.invoke(cli, ["fetch", job])
        assert again.exit_code == 1 and "has ended, by 'sshcluster stop'" in again.output
    finally:
        flag.touch()
        _end(job, client, runner, "jobpart")
        _forget_results(tag, made)
    assert _job_keys(testbed) == []
    assert testbed.leftovers(DETACHED_LEFTOVER, wait=15) == {}


def test_stop_ends_the_fleet_of_a_job_whose_primary_is_unreachable(
        moto_url: str, testbed: Testbed, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    client, seams, spec = _seams(moto_url, testbed, tmp_path, monkeypatch, "jobgone")
    runner, job, was = CliRunner(), None, None
    try:
        job = _busy_job(runner, seams, spec, tmp_path)
        assert _until(job, {"running", "done", "failed"}) == "running"
        _, _, primary = load_job(job)
        was = _unreachable(job, primary.label)
        stopped = runner.invoke(cli, ["stop", job])
        assert stopped.exit_code == 1, stopped.output
        assert f"job {job}: not stopped there" in stopped.stderr
        assert "cluster jobgone ended" in stopped.stderr
        assert nothing_left(client) == {}
    finally:
        if job is not None and was is not None:  # (the test host is still there: stop it)
            (runs_dir() / job / "inventory.yaml").write_text(was)
        _end(job, client, runner, "jobgone")
    assert _job_keys(testbed) == []
    assert testbed.leftovers(DETACHED_LEFTOVER, wait=15) == {}
