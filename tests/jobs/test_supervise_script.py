"""A detached job's supervisor (supervise.sh) run here by sh, in a job directory of its
own, its one lease taken here too (lease.sh, as the primary host's own lease runs it),
through a stand-in for the network (a cat the test can stop): its lease sessions hear a
line every HEARTBEAT seconds, so they outlive the silence, and end once the lines stop
coming. Its R's temporary directory is one of the job's own, removed however R ended,
once R and everything it started are gone."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sshcluster.bootstrap import READ_SCRIPT
from sshcluster.inventory import parse_inventory
from sshcluster.jobs import detached
from sshcluster.jobs.leases import SILENCE_ENV, JobInfo
from sshcluster.quoting import shell_quote
from sshcluster.testing.fixtures import skip_or_fail

#: Writes its tempdir() to a file, then waits to be stopped (up to a minute).
SCRIPT = """\
writeLines(tempdir(), "tmpdir")
for (i in 1:600) Sys.sleep(0.1)
"""
#: A hang guard: R starts here in seconds.
DEADLINE = 60.0
#: One host (the supervisor's own: its lease session runs here, no ssh).
INVENTORY = parse_inventory("primary: 127.0.0.1\nhosts: [{host: 127.0.0.1}]\n")


def _job_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str = SCRIPT) -> Path:
    """The job's directory, as the start writes it: one host, leased through a relay
    (relay.pid names it) that stands in for the ssh connection; ``code`` its script."""
    monkeypatch.setenv(SILENCE_ENV, "4")
    run = tmp_path / "job"
    run.mkdir()
    script = tmp_path / "s.R"
    script.write_text(code)
    files = detached._job_files(INVENTORY, INVENTORY.hosts[0], JobInfo.new("s.R"), script,
                                (), False, 20.0)
    for name, data in files.items():
        (run / name).write_bytes(data)
    (run / "lease.1.cmd").write_text(
        "sh -c 'echo $$ >relay.pid; exec cat' | exec sh -c "
        f"{shell_quote(READ_SCRIPT)}\n")
    (run / "cluster.R").write_text("")
    return run


@pytest.fixture
def supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
               ) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """The supervisor running, its R started (its job directory beside it)."""
    with _running(tmp_path, monkeypatch) as started:
        yield started


@contextlib.contextmanager
def _running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str | None = None
             ) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """The supervisor of a job directory of :func:`_job_dir`, with ``path`` its PATH,
    once its R has started; its whole session killed at the end."""
    run = _job_dir(tmp_path, monkeypatch)
    home, rtmp = tmp_path / "home", tmp_path / "rtmp"
    home.mkdir()
    rtmp.mkdir()
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(rtmp), **({"PATH": path} if path else {})}
    proc = subprocess.Popen(["sh", "./supervise.sh"], cwd=run, env=env,
                            start_new_session=True)
    try:
        _until(lambda: (run / "tmpdir").is_file(), run / "state")
        yield proc, run
    finally:
        # (its whole session: R, the lease session, the relay, stopped or not)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _until(condition: Callable[[], bool], state: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, state.read_text()
        time.sleep(0.1)


def _lease_held(home: Path) -> bool:
    locks = list((home / ".cache/sshcluster/leases").glob("*.lock"))
    assert len(locks) == 1
    free = subprocess.run(["flock", "-n", str(locks[0]), "true"], timeout=30)
    return free.returncode != 0


def test_the_lease_lives_on_the_heartbeat_and_ends_without_it(
        supervisor: tuple[subprocess.Popen[bytes], Path], tmp_path: Path) -> None:
    """The lease outlives its silence (4 s) while the supervisor writes to it; once its
    connection stops carrying anything (the relay stopped: no line, and no end), the
    host's lease session ends by itself and the host is free."""
    proc, run = supervisor
    home = tmp_path / "home"
    time.sleep(9)  # (more than twice the silence)
    assert proc.poll() is None and _lease_held(home)
    os.kill(int((run / "relay.pid").read_text()), signal.SIGSTOP)
    deadline = time.monotonic() + DEADLINE
    while _lease_held(home):
        assert time.monotonic() < deadline, "the lease outlived its silent holder"
        time.sleep(0.2)


def test_a_stopped_job_s_r_leaves_no_temporary_directory(
        supervisor: tuple[subprocess.Popen[bytes], Path], tmp_path: Path) -> None:
    """``sshcluster stop`` (TERM for the supervisor): R, ended by the signal, leaves its
    tempdir; it was in a directory of the job's own in the TMPDIR the supervisor was
    given, which the supervisor removes."""
    proc, run = supervisor
    temp = Path((run / "tmpdir").read_text().strip())
    assert temp.parent.parent == tmp_path / "rtmp", temp
    assert temp.parent.name.startswith("sshcluster-job.") and temp.name.startswith("Rtmp")
    assert temp.is_dir()
    proc.send_signal(signal.SIGTERM)
    proc.wait(DEADLINE)
    assert (run / "state").read_text() == "ended\n"
    assert (run / "stopped").exists() and (run / "status").read_text() == "143\n"
    assert list((tmp_path / "rtmp").iterdir()) == []


#: Ends at once (an error, or status 0), with a child of its own that outlives it by
#: 2 s, writing into the job's TMPDIR as it goes, then noting its end.
ENDS = """\
writeLines(tempdir(), "tmpdir")
system(sprintf("(sleep 2; echo late >%s/late; date +%%s.%%N >child-ended)",
               shQuote(Sys.getenv("TMPDIR"))), wait = FALSE)
{end}
"""


@pytest.mark.parametrize(("end", "status"), [("quit(status = 0L)", 0), ('stop("no")', 1)],
                         ids=["done", "error"])
def test_the_temporary_directory_goes_once_all_r_started_is_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, end: str, status: int) -> None:
    """R ended by itself, what it started still running: the job's tmp goes only once
    that has ended too (it holds the directory's lock), before the job says it ended."""
    run = _job_dir(tmp_path, monkeypatch, ENDS.replace("{end}", end))
    home, rtmp = tmp_path / "home", tmp_path / "rtmp"
    home.mkdir()
    rtmp.mkdir()
    subprocess.run(["sh", "./supervise.sh"], cwd=run, timeout=DEADLINE, check=True,
                   env={**os.environ, "HOME": str(home), "TMPDIR": str(rtmp)})
    assert (run / "state").read_text() == "ended\n"
    assert (run / "status").read_text() == f"{status}\n"
    assert Path((run / "tmpdir").read_text().strip()).parent.parent == rtmp
    assert (run / "child-ended").is_file(), "the job ended before what its R started"
    assert float((run / "r-ended").read_text()) < float((run / "child-ended").read_text())
    assert float((run / "ended").read_text()) > float((run / "child-ended").read_text())
    assert list(rtmp.iterdir()) == []


def test_its_times_are_numbers_where_date_has_no_nanoseconds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a host whose date(1) is BusyBox's, which prints %N as it is, the supervisor's
    times are still numbers (``1796666009.%N`` was no time, and the job's phases and
    duration were lost)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        skip_or_fail("busybox is not installed (scripts/setup.sh installs it)")
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "date").symlink_to(busybox)  # (BusyBox runs as the name it is called by)
    with _running(tmp_path, monkeypatch, f"{tools}:{os.environ['PATH']}") as (_, run):
        for name in ("started", "leased"):
            assert float((run / name).read_text()) > 1.7e9, name
