"""The R session ends at any stage of a launch, in any way, and nothing of ours is left.

R ends before any host is ready (every host cut off: ssh hangs connecting), with some
hosts ready (one cut off) and after all are ready, in each of four ways: its own quit(), an
error, ``kill -9`` and Ctrl-C (SIGINT to its whole process group). Each time another
process holds the supervisor's pipe open, as a process that R started does (then only
the R session's death, not the pipe's end, tells the supervisor). Within five seconds
of R's end no process of the launch is left on the primary (the supervisor, its feeders
and their sleeps, the session scripts, ssh: found by what they hold in R's temporary
directory, and their descendants) nor on any host, and none comes back in the second
after. ``SSHCLUSTER_LEFTOVER_RUNS`` repeats the whole matrix (each run a test of its
own).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sshcluster.bootstrap import RenderOptions, write_bootstrap
from sshcluster.inventory import load_inventory
from sshcluster.testing import Testbed
from sshcluster.testing.fixtures import MakeTestbed

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

LEFTOVER = "R|sh|sleep|bash"
STAGES = ("none", "some", "all")
WAYS = ("quit", "error", "kill9", "ctrl-c")
RUNS = int(os.environ.get("SSHCLUSTER_LEFTOVER_RUNS", "1"))
#: A hang guard: a launch's stage is reached in seconds.
STAGE_DEADLINE = 60.0


def _ours(tmp: Path) -> list[str]:
    """Processes on the primary whose command line, working directory or open files
    lie in ``tmp`` (R's TMPDIR), with all their descendants: ``pid command`` each."""
    prefix = str(tmp)
    parents: dict[int, int] = {}
    marked: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
            if prefix in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                marked.add(pid)
                continue
            links = [os.readlink(f"/proc/{pid}/cwd")]
            links += [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if any(link.startswith(prefix) for link in links):
            marked.add(pid)
    grew = True
    while grew:
        more = {p for p, pp in parents.items() if pp in marked} - marked
        marked |= more
        grew = bool(more)
    out = []
    for pid in sorted(marked):
        with contextlib.suppress(OSError):
            out.append(f"{pid} " + Path(f"/proc/{pid}/cmdline").read_bytes()
                       .replace(b"\0", b" ").decode(errors="replace")[:200])
    return out


def _supervisor(rpid: int, tmp: Path) -> int | None:
    for line in _ours(tmp):
        pid = int(line.split()[0])
        if "supervisor.sh" in line and Path(f"/proc/{pid}/stat").read_text().rsplit(
                ")", 1)[1].split()[1] == str(rpid):
            return pid
    return None


def _r_code(bootstrap: Path, stage: str, way: str) -> str:
    """R that launches, prints UP once all are ready, then ends as ``way`` says. Before
    then, an error is a time limit (8 s with no host ready, 12 s with one ready: a stage
    is reached in a second or two), and a quit is R's own quit() once that error is
    caught."""
    limit = {"none": 8, "some": 12}.get(stage)
    head = f"setTimeLimit(elapsed = {limit})\n" if way in ("quit", "error") and limit else ""
    launch = f"source({str(bootstrap)!r})"
    if limit and way == "quit":
        launch = f"tryCatch({launch}, error = function(e) quit(save = 'no'))"
    tail = {"quit": "quit(save = 'no')", "error": "stop('the end')"}.get(way, "Sys.sleep(600)")
    wait = "while (!file.exists('go')) Sys.sleep(0.1)"  # the test's go-ahead, once all are up
    return f"{head}{launch}\ncat('UP\\n')\n{wait}\n{tail}\n"


def _end_at(tb: Testbed, tmp: Path, bootstrap: Path, stage: str, way: str) -> None:
    rtmp = tmp / "rtmp"
    rtmp.mkdir()
    env = {**os.environ, "TMPDIR": str(rtmp)}
    proc = subprocess.Popen(["Rscript", "-e", _r_code(bootstrap, stage, way)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=tmp)
    held = -1
    try:
        deadline = time.monotonic() + STAGE_DEADLINE
        if stage == "all":
            assert proc.stdout is not None
            assert proc.stdout.readline() == "UP\n", proc.stderr.read() if proc.stderr else ""
            supervisor = _supervisor(proc.pid, rtmp)
        else:
            # ready: the supervisor runs, and (some) the first host's workers run
            while not ((supervisor := _supervisor(proc.pid, rtmp)) and
                       (stage == "none" or tb.processes(tb.hosts[0], "R"))):
                assert proc.poll() is None and time.monotonic() < deadline, (
                    f"{stage}: the stage was not reached")
                time.sleep(0.1)
        assert supervisor, f"{stage}: no supervisor"
        # (a pipe's /proc link opened for writing is a new write end of that pipe)
        held = os.open(f"/proc/{supervisor}/fd/0", os.O_WRONLY)
        (tmp / "go").touch()
        if way == "kill9":
            proc.kill()
        elif way == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        # (not communicate(): a process of ours left holding R's stdout would hang it)
        try:
            proc.wait(timeout=STAGE_DEADLINE)
        except subprocess.TimeoutExpired:
            ps = subprocess.run(["ps", "-o", "pid,ppid,stat,wchan:24,cmd", "-g", str(proc.pid)],
                                capture_output=True, text=True).stdout
            pytest.fail(f"{stage}/{way}: R did not end:\n{ps}\n" + "\n".join(_ours(rtmp)))
        # nothing is left five seconds after R is gone (looked at until then), and
        # nothing comes back a second after that
        settled = time.monotonic() + 5
        clean_at = None
        while True:
            left, remote = _ours(rtmp), tb.leftovers(LEFTOVER)
            if left or remote:
                clean_at = None
            elif clean_at is None:
                clean_at = time.monotonic()
            if (clean_at is not None and time.monotonic() - clean_at >= 1) or \
                    time.monotonic() > settled + 1:
                break
            time.sleep(0.25)
        assert left == [], f"{stage}/{way}: left on the primary:\n" + "\n".join(left)
        assert remote == {}, f"{stage}/{way}: left on the hosts: {remote}"
    finally:
        if held >= 0:
            os.close(held)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


@pytest.mark.timeout(600)  # four launches, each ended, then up to 5 s of watching
@pytest.mark.parametrize("run", range(RUNS))
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("tunnel", ["reverse", "none"])
def test_nothing_outlives_the_r_session(make_testbed: MakeTestbed, tmp_path: Path,
                                        tunnel: str, stage: str, run: int) -> None:
    tb = make_testbed(2)
    inv = tb.write_inventory(tmp_path / "hosts.yaml", ncore=1,
                             extra={"setup_timeout": 120})
    bootstrap = tmp_path / "cluster.R"
    write_bootstrap(load_inventory(inv), bootstrap, RenderOptions(tunnel=tunnel))
    cut = {"none": tb.hosts, "some": tb.hosts[1:], "all": []}[stage]
    for host in cut:
        tb.cut_off(host)
    try:
        for way in WAYS:
            tmp = tmp_path / way
            tmp.mkdir()
            _end_at(tb, tmp, bootstrap, stage, way)
    finally:
        for host in cut:
            tb.reconnect(host)
