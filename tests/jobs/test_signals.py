"""A signal mid-run (Ctrl-C, SIGTERM, SIGHUP) ends the job in order: the exit status
says which signal, and nothing of the job stays on any host: no R, no launch or lease
script, no lease. ``SSHCLUSTER_SIGNAL_LOOPS=N`` repeats each case N times."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from sshcluster.inventory import load_inventory
from sshcluster.jobs import list_leases
from sshcluster.testing import Testbed
from tests.jobs.helpers import JOB_TIMEOUT, LEFTOVER, inventory, sshcluster, start

pytestmark = pytest.mark.slow  # signals

LOOPS = int(os.environ.get("SSHCLUSTER_SIGNAL_LOOPS", "1"))

#: Every worker busy for far longer than the test lets it run.
BUSY = """\
cat("started\\n")
parallel::parLapply(parallelCluster, seq_along(parallelCluster), function(i) Sys.sleep(300))
cat("never\\n")
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=["ctrl-c", "sigterm", "sighup"])
def test_a_signal_mid_run_leaves_nothing(testbed: Testbed, tmp_path: Path,
                                         signum: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing on the hosts, no lease, and nothing in the TMPDIR the job was given: its
    R's tempdir() (with the launch's directory in it), which R stopped by a signal
    leaves, goes with a directory of the job's own."""
    rtmp = tmp_path / "rtmp"
    rtmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(rtmp))
    inv = inventory(testbed, tmp_path / "hosts.yaml")
    script = tmp_path / "busy.R"
    script.write_text(BUSY)
    for attempt in range(LOOPS):
        state = tmp_path / f"state{attempt}"
        proc = start(["run", str(inv), str(script)], state)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line == "started\n", f"attempt {attempt + 1}: {line!r} {proc.stderr}"
            # Every worker runs its task: a process per worker on each host.
            assert all(testbed.processes(h, "R") for h in testbed.hosts)
            time.sleep(0.5)
            # Ctrl-C in a terminal reaches the whole foreground process group.
            if signum == signal.SIGINT:
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)
            out, err = proc.communicate(timeout=JOB_TIMEOUT)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode == 128 + signum, f"attempt {attempt + 1}: {err}"
        assert "never" not in out
        assert testbed.leftovers(LEFTOVER, wait=15) == {}, f"attempt {attempt + 1}"
        assert all(lease.holder is None for lease in list_leases(load_inventory(inv)))
        record = json.loads(next((state / "runs").glob("*/run.json")).read_text())
        assert record["status"] == 128 + signum
        assert record["signal"] == signal.Signals(signum).name
        assert list(rtmp.iterdir()) == []


def test_a_job_killed_outright_leaves_nothing(testbed: Testbed, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL for the job's own process (no cleanup can run): its R session dies with
    it, and with that the cluster, and the leases go with their ssh sessions. Its R's
    temporary directory stays, with nothing of the job left to remove it, until the
    next job: that one removes it (its lock is free once R and all it started are
    gone)."""
    # (in the test's own directory, not this machine's /tmp)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    inv = inventory(testbed, tmp_path / "hosts.yaml", hosts=[0, 1])
    script = tmp_path / "busy.R"
    script.write_text(BUSY)
    proc = start(["run", str(inv), str(script)], tmp_path / "state")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "started\n"
        proc.kill()  # the job's python process only, not its R session's group
        proc.wait(JOB_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert testbed.leftovers(LEFTOVER, wait=30) == {}
    assert all(lease.holder is None for lease in list_leases(load_inventory(inv)))
    left = list(tmp_path.glob("sshcluster-job-*"))
    assert len(left) == 1 and list(left[0].glob("Rtmp*")), left
    deadline = time.monotonic() + 30
    while _with_tmpdir(left[0]):  # (its R, and what R started, on their way out)
        assert time.monotonic() < deadline, _with_tmpdir(left[0])
        time.sleep(0.2)
    assert left[0].is_dir()
    script.write_text('cat("next\\n")\n')
    after = sshcluster(["run", str(inv), str(script)], tmp_path / "state")
    assert after.returncode == 0 and after.stdout == "next\n", after.stderr
    assert list(tmp_path.glob("sshcluster-job-*")) == []
    assert testbed.leftovers(LEFTOVER, wait=30) == {}


def _with_tmpdir(path: Path) -> list[int]:
    """The processes here whose TMPDIR is ``path``."""
    want = b"\0TMPDIR=" + bytes(path) + b"\0"
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                environ = b"\0" + Path(entry.path, "environ").read_bytes()
            except OSError:
                continue
            if want in environ:
                pids.append(int(entry.name))
    return pids
