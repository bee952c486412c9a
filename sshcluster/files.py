"""Writing files safely: the one place sshcluster replaces a file on disk.

Every file sshcluster writes for the user (the R bootstrap, an EC2 key pair's ``.pem``,
a known_hosts file, an inventory) goes through :func:`atomic_write`, which is safe in a
directory that other users can write to (``/tmp``, a shared project directory):

* the new text goes to a temporary file with a random name, created exclusively
  (``O_EXCL``) in the target's directory, so nobody can have planted it, and with its
  final permissions from the first byte (a key is never readable by others, not even for
  a moment);
* the temporary file is renamed over the target, so a reader sees the old file or the
  new one, never half of one;
* a symlink is followed only when it belongs to the caller, as Linux's
  ``fs.protected_symlinks`` does in sticky directories: a link that someone else planted
  (``/tmp/cluster.R -> ~/.bashrc``) is refused, never written through.

Example::

    from sshcluster.files import atomic_write

    atomic_write("cluster.R", text)                     # 0644 minus the umask
    atomic_write("rwork.pem", key, mode=0o600)          # private from the start
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from sshcluster.errors import UnsafePathError

#: Symlinks followed at most this deep (as the kernel's ELOOP limit, roughly).
_MAX_LINKS = 40


def resolve_own_links(path: str | os.PathLike[str]) -> Path:
    """``path`` with its final symlinks followed, but only links the caller owns.

    A link owned by another user (except root, who can write anywhere anyway) raises
    :class:`UnsafePathError`: in a shared directory it is the classic way to make a
    program overwrite a file of the attacker's choosing.
    """
    current = Path(os.path.abspath(path))
    for _ in range(_MAX_LINKS):
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return current
        if not stat.S_ISLNK(st.st_mode):
            return current
        if st.st_uid not in (os.geteuid(), 0):
            raise UnsafePathError(
                f"{current} is a symlink that belongs to another user (uid {st.st_uid}); "
                "not writing through it",
                hint="write to a path in a directory only you can write to, or remove the link",
            )
        target = os.readlink(current)
        current = Path(os.path.abspath(os.path.join(current.parent, target)))
    raise UnsafePathError(f"{path}: too many levels of symlinks")


def atomic_write(path: str | os.PathLike[str], data: str | bytes, *, mode: int = 0o644,
                 keep_mode: bool = False) -> Path:
    """Replace ``path`` whole with ``data``; return the path written (after own symlinks).

    ``mode`` is the new file's permission bits before the umask (``0o600`` for a secret:
    the umask can only remove bits). With ``keep_mode`` an existing file keeps its own
    permissions. A target that exists and is not a regular file (``/dev/stdout``, a FIFO)
    is written to in place, as there is nothing to replace. Raises :class:`OSError` when
    the directory cannot be written and :class:`UnsafePathError` for a foreign symlink.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    target = resolve_own_links(path)
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(target))
        fd = os.open(target, os.O_WRONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        return target
    if keep_mode and st is not None:
        mode = stat.S_IMODE(st.st_mode)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            if keep_mode:
                os.fchmod(f.fileno(), mode)  # the umask applied at creation
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def append_line(path: str | os.PathLike[str], line: str, *, mode: int = 0o644) -> Path:
    """Add ``line`` at the end of the text file ``path`` (created if missing) by replacing
    the file whole through :func:`atomic_write`; an existing file keeps its permissions."""
    target = resolve_own_links(path)
    try:
        old: bytes | None = target.read_bytes()
    except FileNotFoundError:
        old = None
    head = old or b""
    if head and not head.endswith(b"\n"):
        head += b"\n"
    text = line if line.endswith("\n") else line + "\n"
    return atomic_write(target, head + text.encode("utf-8"), mode=mode,
                        keep_mode=old is not None)


__all__ = ["append_line", "atomic_write", "resolve_own_links"]
