"""The temporary directory of an attached job's R session (``sshcluster run``): R's
``TMPDIR``, ``sshcluster-job-XXXXXXXX`` in the temporary directory (``TMPDIR``, else
/tmp). R stopped by a signal leaves its ``tempdir()`` (with the launch's directory in
it) behind, so the job gives it a directory of its own and removes that at its end.

A job killed outright (SIGKILL) cannot remove it. So the directory holds ``lock``, a
file the job holds an exclusive ``flock`` on for its whole life: the job's process and
its R session share that lock (R, and everything R starts, inherit its descriptor), and
the kernel drops it when the last of them ends. Each new ``run``, and ``sshcluster
jobs``, removes this user's job directories whose lock is free (:func:`sweep`).

    tmp = JobTmp.make()        # R gets TMPDIR=tmp.path and keeps tmp.fd open
    ...
    tmp.remove()               # at the job's end, once R and all it started are gone
    sweep()                    # the directories of jobs killed outright
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass

#: The name of every job's directory begins so.
PREFIX = "sshcluster-job-"
#: The lock file in it, under its name only once it is locked.
LOCK = "lock"
_NEW_LOCK = ".lock-new"


@dataclass(frozen=True)
class JobTmp:
    """A job's temporary directory (``path``) and the descriptor (``fd``) that holds
    its lock: hand it to R (``pass_fds``) so that R and all it starts hold it too."""

    path: str
    fd: int

    @classmethod
    def make(cls, parent: str | None = None) -> JobTmp:
        """A new directory in ``parent`` (by default the temporary directory), locked."""
        path = tempfile.mkdtemp(prefix=PREFIX, dir=parent)
        try:
            # Locked before it has the name a sweep looks for: a sweep never meets
            # this directory's lock free while the job lives.
            fd = os.open(os.path.join(path, _NEW_LOCK), os.O_WRONLY | os.O_CREAT | os.O_EXCL |
                         os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(os.path.join(path, _NEW_LOCK), os.path.join(path, LOCK))
        except BaseException:
            os.close(fd)
            shutil.rmtree(path, ignore_errors=True)
            raise
        return cls(path, fd)

    def remove(self) -> None:
        """Remove the directory, then let go of its lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _open_dir(name: str, dir_fd: int) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                   dir_fd=dir_fd)


def sweep(parent: str | None = None) -> list[str]:
    """Remove this user's job directories in ``parent`` (by default the temporary
    directory) whose lock is free: their job, its R and all R started are gone (killed
    outright, say). Returns the paths removed. Only directories owned by this user and
    holding a lock file (a regular file of this user's) count; a symbolic link is never
    followed, and a directory whose lock is held, or that has none yet, stays. Errors
    are not raised: a sweep never stops a job."""
    root = parent or tempfile.gettempdir()
    removed: list[str] = []
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return removed
    try:
        with os.scandir(root_fd) as entries:
            names = [e.name for e in entries if e.name.startswith(PREFIX)]
        for name in names:
            with contextlib.suppress(OSError):
                if _remove_if_free(root, root_fd, name):
                    removed.append(os.path.join(root, name))
    finally:
        os.close(root_fd)
    return removed


def _remove_if_free(root: str, root_fd: int, name: str) -> bool:
    uid = os.getuid()
    st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
        return False
    # (O_NOFOLLOW: a link put in its place since is not followed)
    dir_fd = _open_dir(name, root_fd)
    try:
        if not _same(os.fstat(dir_fd), st):
            return False
        if not stat.S_ISREG(os.stat(LOCK, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            return False
        # (O_NONBLOCK: were it made a fifo since, it would not hang the sweep)
        lock_fd = os.open(LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                          dir_fd=dir_fd)
        try:
            lst = os.fstat(lock_fd)
            if not stat.S_ISREG(lst.st_mode) or lst.st_uid != uid:
                return False
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # its job, or something its R started, still runs
            # Still this directory's lock (not one its job removed, with the directory,
            # after this sweep opened it), and still the directory that was looked at.
            if not _same(os.stat(LOCK, dir_fd=dir_fd, follow_symlinks=False), lst) or \
                    not _same(os.stat(name, dir_fd=root_fd, follow_symlinks=False), st):
                return False
            # (rmtree works through descriptors here: it refuses a link in the
            # directory's place, and follows none below it)
            shutil.rmtree(os.path.join(root, name))
            return True
        finally:
            os.close(lock_fd)
    finally:
        os.close(dir_fd)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
