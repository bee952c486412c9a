"""An attached job's R temporary directory (sshcluster.jobs.tmpdir): locked for as long
as the job or anything holding its lock lives, and swept away by a later job once its
lock is free; never a directory that is not this user's, one without a lock file yet,
or anything through a symbolic link."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sshcluster.jobs.tmpdir import LOCK, PREFIX, JobTmp, sweep


def _free(path: Path) -> bool:
    """Whether another process could take the lock file at ``path`` at once."""
    return subprocess.run(["flock", "-n", str(path), "true"], timeout=30).returncode == 0


def test_a_job_s_directory_is_locked_while_it_lives_and_swept_after(tmp_path: Path) -> None:
    tmp = JobTmp.make(str(tmp_path))
    path = Path(tmp.path)
    assert path.parent == tmp_path and path.name.startswith(PREFIX)
    assert sorted(p.name for p in path.iterdir()) == [LOCK]
    assert oct(path.stat().st_mode & 0o777) == "0o700"
    assert not _free(path / LOCK)
    (path / "Rtmp123").mkdir()
    assert sweep(str(tmp_path)) == [] and path.is_dir()
    os.close(tmp.fd)  # (as a job killed outright: its lock goes, its directory stays)
    assert _free(path / LOCK) and path.is_dir()
    assert sweep(str(tmp_path)) == [str(path)]
    assert list(tmp_path.iterdir()) == []


def test_the_job_s_end_removes_it(tmp_path: Path) -> None:
    tmp = JobTmp.make(str(tmp_path))
    (Path(tmp.path) / "Rtmp123").mkdir()
    tmp.remove()
    assert list(tmp_path.iterdir()) == []


def test_a_process_that_inherited_the_lock_keeps_the_directory(tmp_path: Path) -> None:
    """The job's process gone, its R (or what R started) still holding the lock it
    inherited: the directory stays until that ends too."""
    tmp = JobTmp.make(str(tmp_path))
    child = subprocess.Popen(["sleep", "60"], pass_fds=(tmp.fd,))
    try:
        os.close(tmp.fd)
        assert sweep(str(tmp_path)) == [] and Path(tmp.path).is_dir()
    finally:
        child.kill()
        child.wait()
    assert sweep(str(tmp_path)) == [tmp.path]


def test_what_a_sweep_leaves_alone(tmp_path: Path) -> None:
    """A directory with no lock file (made, its lock not named yet), other names, a
    symbolic link to a job's directory, a lock that is a link or not a regular file."""
    root = tmp_path / "tmp"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / LOCK).touch()  # a free lock, but not in a job's directory of its own
    (elsewhere / "keep").touch()
    (root / f"{PREFIX}nolock").mkdir()
    (root / f"{PREFIX}nolock" / ".lock-new").touch()
    (root / "sshcluster-other").mkdir()
    (root / "sshcluster-other" / LOCK).touch()
    (root / f"{PREFIX}link").symlink_to(elsewhere)
    (root / f"{PREFIX}file").touch()
    (root / f"{PREFIX}lockl").mkdir()
    (root / f"{PREFIX}lockl" / LOCK).symlink_to(elsewhere / LOCK)
    (root / f"{PREFIX}fifo").mkdir()
    os.mkfifo(root / f"{PREFIX}fifo" / LOCK)
    (root / f"{PREFIX}lockdir").mkdir()
    (root / f"{PREFIX}lockdir" / LOCK).mkdir()
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert sweep(str(root)) == []
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_the_lock_s_target_behind_a_link_is_not_removed(tmp_path: Path) -> None:
    """A free job directory whose content links elsewhere: the directory goes, what its
    links point to stays."""
    root = tmp_path / "tmp"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").touch()
    tmp = JobTmp.make(str(root))
    (Path(tmp.path) / "link").symlink_to(elsewhere)
    os.close(tmp.fd)
    assert sweep(str(root)) == [tmp.path]
    assert (elsewhere / "keep").is_file()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root (chown to another user)")
def test_another_user_s_directory_stays(tmp_path: Path) -> None:
    """Another user's job directory, or this user's with another user's lock file: left
    as they are, their locks free or not."""
    root = tmp_path / "tmp"
    root.mkdir()
    theirs, mixed = JobTmp.make(str(root)), JobTmp.make(str(root))
    for t in (theirs, mixed):
        os.close(t.fd)
    os.chown(theirs.path, 65534, 65534)
    os.chown(Path(mixed.path) / LOCK, 65534, 65534)
    assert sweep(str(root)) == []
    assert Path(theirs.path).is_dir() and Path(mixed.path).is_dir()


def test_a_sweep_never_takes_a_directory_being_made(tmp_path: Path) -> None:
    """Jobs start while others sweep: no sweep ever removes a directory whose job lives
    (made and locked in one thread, while another sweeps all along)."""
    stop = threading.Event()
    swept: list[str] = []

    def sweeper() -> None:
        while not stop.is_set():
            swept.extend(sweep(str(tmp_path)))

    thread = threading.Thread(target=sweeper)
    thread.start()
    made = []
    try:
        for _ in range(300):
            tmp = JobTmp.make(str(tmp_path))
            made.append(tmp)
            assert Path(tmp.path, LOCK).is_file()
    finally:
        stop.set()
        thread.join()
    assert swept == []
    for tmp in made:
        tmp.remove()
    assert list(tmp_path.iterdir()) == []


def test_jobs_sweeps_too(tmp_path: Path) -> None:
    """``sshcluster jobs`` removes what a job killed outright left in TMPDIR."""
    left = JobTmp.make(str(tmp_path))
    os.close(left.fd)
    live = JobTmp.make(str(tmp_path))
    env = {**os.environ, "TMPDIR": str(tmp_path), "SSHCLUSTER_STATE_DIR": str(tmp_path / "s")}
    done = subprocess.run([sys.executable, "-m", "sshcluster", "jobs"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not Path(left.path).exists() and Path(live.path).is_dir()
    live.remove()
    shutil.rmtree(tmp_path / "s", ignore_errors=True)
