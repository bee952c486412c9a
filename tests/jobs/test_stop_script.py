"""``sshcluster stop``'s script on a detached job's primary host, run here by sh in a
job directory of its own: what it kills once the job's supervisor has ended."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from sshcluster.jobs.detached import _STOP


def _stop(job_dir: Path) -> str:
    done = subprocess.run(["sh", "-c", _STOP.replace("{polls}", "5")], cwd=job_dir,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_an_ended_job_s_pid_now_another_s_is_left_alone(tmp_path: Path) -> None:
    """The supervisor ended, and its pid is now another process group's leader (a
    reused pid): stop kills nothing of it."""
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (tmp_path / "pid").write_text(f"{other.pid}\n")
        (tmp_path / "state").write_text("ended\n")
        assert _stop(tmp_path) == "stopped"
        time.sleep(0.2)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_what_an_ended_job_left_in_its_group_is_killed(tmp_path: Path) -> None:
    """The supervisor ended (its group's leader is gone) and a process of its group
    lives on: stop kills it."""
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; exit 0"],
                              start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert leader.stdout is not None
    left = int(leader.stdout.readline())
    leader.wait()
    try:
        assert os.getpgid(left) == leader.pid  # (its leader gone, reaped above)
        (tmp_path / "pid").write_text(f"{leader.pid}\n")
        (tmp_path / "state").write_text("ended\n")
        assert _stop(tmp_path) == "killed"
        for _ in range(50):
            if not _alive(left):
                break
            time.sleep(0.1)
        assert not _alive(left)
    finally:
        if _alive(left):
            os.kill(left, signal.SIGKILL)
