"""``sshcluster run --ec2``: a fleet for one job, on the EC2 stand-in (moto's HTTP
server) with its instances mapped onto local SSH test hosts (the seams of
tests/ec2/test_e2e.py; moto's made-up addresses are never contacted). Nothing of the
fleet is left after a job that succeeds, one whose script fails, and one that a signal
ends; ``--keep`` keeps it."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sshcluster import ec2
from sshcluster.cli import cli
from sshcluster.errors import SshclusterError
from sshcluster.jobs.ec2job import run_ec2
from sshcluster.jobs.job import RunError, RunOptions
from sshcluster.jobs.results import ResultsError
from sshcluster.testing import Testbed
from tests.ec2.helpers import (
    REGION,
    internet_gateway,
    moto_with_testbed_key,
    nothing_left,
    seams_onto_testbed,
)
from tests.jobs.helpers import JOB_TIMEOUT, LEFTOVER


def _spec(moto_url: str, testbed: Testbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
          name: str) -> tuple[Any, ec2.Seams, Path]:
    monkeypatch.setenv("SSHCLUSTER_STATE_DIR", str(tmp_path / "state"))
    client, image = moto_with_testbed_key(moto_url, testbed)
    address_of, console_text = seams_onto_testbed(testbed)
    spec = tmp_path / "ec2.yaml"
    spec.write_text(
        f"ec2:\n  name: {name}\n  region: us-east-1\n  image: {image}\n"
        f"  instance_type: t3.medium\n  count: 2\n  user: root\n  max_lifetime: 1h\n"
        f"  key_name: testbed\n  identity_file: {testbed.identity_file}\n"
        f"  ssh_cidr: {testbed.primary_address}/32\n  ncore: vcpus\n")
    # (the test hosts have R already: their setup reads as done, and armed)
    ready = ec2.SetupStatus("ready", "R version 4.2.2", expiry="armed 1767225600")
    return client, ec2.Seams(address_of=address_of, console_text=console_text,
                             read_status=lambda inst, endpoint: ready), spec


@pytest.mark.slow  # a fleet per test (here and below)
@pytest.mark.parametrize(("body", "status"), [("cat('sum', sum(parallel::parSapply("
                                                "parallelCluster, 1:10, identity)), '\\n')", 0),
                                               ("quit(status = 4)", 4)])
def test_a_fleet_for_one_job_is_gone_after_it(moto_url: str, testbed: Testbed,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             body: str, status: int) -> None:
    client, seams, spec = _spec(moto_url, testbed, tmp_path, monkeypatch, f"job{status}")
    script = tmp_path / "fit.R"
    script.write_text(body + "\n")
    done = CliRunner().invoke(cli, ["run", "--ec2", "--json", str(spec), str(script)],
                              obj=seams)
    assert done.exit_code == status, done.output
    summary = json.loads(done.stdout)
    assert summary["status"] == status and len(summary["hosts"]) == 2
    assert {"ec2_up", "launch", "script", "ec2_down"} <= set(summary["phases"])
    if status == 0:
        assert "sum 55" in done.stderr
    assert nothing_left(client) == {}
    assert testbed.leftovers(LEFTOVER, wait=15) == {}


@pytest.mark.slow
def test_a_signal_mid_job_ends_the_fleet(moto_url: str, testbed: Testbed, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    client, seams, spec = _spec(moto_url, testbed, tmp_path, monkeypatch, "jobsig")
    flag = tmp_path / "started"
    script = tmp_path / "busy.R"
    script.write_text(f"file.create({json.dumps(str(flag))})\n"
                      "parallel::parLapply(parallelCluster, 1:4, function(i) Sys.sleep(300))\n")

    def interrupt() -> None:  # SIGTERM to this process once every worker is busy
        deadline = time.monotonic() + JOB_TIMEOUT
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=interrupt, daemon=True).start()
    result = run_ec2(spec, script, seams=seams, up_timeout=60)
    assert flag.exists()
    assert result.status == 128 + signal.SIGTERM and result.signal == "SIGTERM"
    assert "ec2_down" in result.phases
    assert nothing_left(client) == {}
    assert testbed.leftovers(LEFTOVER, wait=15) == {}


@pytest.mark.slow
def test_keep_keeps_the_fleet(moto_url: str, testbed: Testbed, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    client, seams, spec = _spec(moto_url, testbed, tmp_path, monkeypatch, "jobkeep")
    script = tmp_path / "fit.R"
    script.write_text("cat(length(parallelCluster), '\\n')\n")
    try:
        done = CliRunner().invoke(cli, ["run", "--ec2", "--keep", str(spec), str(script)],
                                  obj=seams)
        assert done.exit_code == 0, done.output
        assert "sshcluster ec2 down jobkeep" in done.stderr
        assert len(nothing_left(client).get("instances", [])) == 2
    finally:
        assert CliRunner().invoke(cli, ["ec2", "down", "jobkeep"]).exit_code == 0
    assert nothing_left(client) == {}


def _never_reached(inst: ec2.Instance) -> ec2.Endpoint:
    # (a fleet that did start is ended by up at once: moto's made-up addresses are
    # never contacted)
    raise SshclusterError(f"instance {inst.id} was started")


def _moto_spec(moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[
        Any, Path]:
    """A fresh moto in which the spec would start (its image, a default VPC with a way
    out), and the spec."""
    monkeypatch.setenv("SSHCLUSTER_STATE_DIR", str(tmp_path / "state"))
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset",
                                                  method="POST")).read()
    client = ec2.make_client(REGION)
    internet_gateway(client)
    image = client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    spec = tmp_path / "ec2.yaml"
    spec.write_text(f"ec2:\n  name: early\n  region: {REGION}\n  image: {image}\n"
                    "  instance_type: t3.medium\n  count: 2\n  user: root\n"
                    "  max_lifetime: 1h\n  ssh_cidr: 203.0.113.7/32\n")
    return client, spec


@pytest.mark.parametrize("results", ["taken/out", "taken/a/b", "/sys/sshcluster-results"])
def test_a_results_directory_that_cannot_be_made_costs_no_fleet(
        moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, results: str) -> None:
    """--results under a file, or where no directory can be made (sysfs refuses even
    root): refused (exit status 2) before any instance starts."""
    client, spec = _moto_spec(moto_url, tmp_path, monkeypatch)
    (tmp_path / "taken").write_text("a file\n")
    script = tmp_path / "fit.R"
    script.write_text("cat(1)\n")
    out = tmp_path / results
    done = CliRunner().invoke(cli, ["run", "--ec2", "--results", str(out), str(spec),
                                    str(script)], obj=ec2.Seams(address_of=_never_reached))
    assert done.exit_code == 2, done.output
    assert "Traceback" not in done.output
    first, hint = done.stderr.splitlines()
    assert first.startswith(f"error: cannot make the results' directory {out}: ")
    assert first.endswith("; no instance was started")
    assert hint == "hint: name a directory you can write with --results / --to"
    assert client.describe_instances()["Reservations"] == []  # (none, ever)
    assert nothing_left(client) == {}
    assert (tmp_path / "taken").read_text() == "a file\n" and not out.exists()


@pytest.mark.parametrize(("what", "error", "message"), [
    ("results", ResultsError, "cannot make the results' directory {tmp}/taken/out: "
                              "Not a directory; no instance was started"),
    ("script", RunError, "{tmp}/missing.R: no such script; no instance was started"),
    ("rscript", RunError, "{tmp}/no/Rscript not found on this machine (the primary); no "
                          "instance was started")])
def test_what_can_be_checked_here_is_checked_before_the_fleet(
        moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str,
        error: type[SshclusterError], message: str) -> None:
    client, spec = _moto_spec(moto_url, tmp_path, monkeypatch)
    (tmp_path / "taken").write_text("a file\n")
    script = tmp_path / "fit.R"
    script.write_text("cat(1)\n")
    options = RunOptions(results=str(tmp_path / "taken" / "out") if what == "results"
                         else None,
                         rscript=str(tmp_path / "no" / "Rscript") if what == "rscript"
                         else "Rscript")
    with pytest.raises(error) as e:
        run_ec2(spec, tmp_path / "missing.R" if what == "script" else script, options,
                seams=ec2.Seams(address_of=_never_reached), up_timeout=30)
    assert e.value.message == message.format(tmp=tmp_path)
    assert e.value.exit_code == 2
    assert client.describe_instances()["Reservations"] == []  # (none, ever)
    assert nothing_left(client) == {}
