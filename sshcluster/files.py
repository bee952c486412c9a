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
  (``/tmp/cluster.R -> ~/.bashrc``) is refused, never written through;
* a target that is not a regular file (a FIFO another user planted, a device, a socket)
  is refused, never written into: a FIFO would hand the text (a private key) to whoever
  reads it, or block the write for ever.

Reading goes through :func:`read_regular`: a FIFO or device is refused at once (opened
without blocking, then checked), never read (its writer would choose the content, or the
read would wait for ever).

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


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words."""
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def read_regular(path: str | os.PathLike[str], *, limit: int = -1,
                 owners: tuple[int, ...] | None = None) -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit``, all if negative).

    The file is opened without blocking and checked with ``fstat`` before a byte is read:
    anything but a regular file raises :class:`UnsafePathError` at once (a FIFO would wait
    for a writer, or let another user choose what is read). With ``owners``, a file
    owned by any other uid is refused too. Raises :class:`OSError` as ``open`` does
    (``FileNotFoundError``, ``IsADirectoryError`` for a directory).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", os.fspath(path))
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(
                f"{os.fspath(path)} is {file_kind(st.st_mode)}, not a regular file; not reading it",
                hint="name a regular file")
        if owners is not None and st.st_uid not in owners:
            raise UnsafePathError(
                f"{os.fspath(path)} belongs to another user (uid {st.st_uid}); not reading it",
                hint="use a file of your own, in a directory only you can write to")
        return f.read(limit)


def atomic_write(path: str | os.PathLike[str], data: str | bytes, *, mode: int = 0o644,
                 keep_mode: bool = False) -> Path:
    """Replace ``path`` whole with ``data``; return the path written (after own symlinks).

    ``mode`` is the new file's permission bits before the umask (``0o600`` for a secret:
    the umask can only remove bits). With ``keep_mode`` an existing file keeps its own
    permissions. A target that exists and is not a regular file (a FIFO, a device) is
    refused. Raises :class:`OSError` when the directory cannot be written and
    :class:`UnsafePathError` for a foreign symlink or a target that is not a file.
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
        # (the write below replaces the name, so a FIFO swapped in after this look is
        # never written into either)
        raise UnsafePathError(
            f"{target} is {file_kind(st.st_mode)}, not a regular file; not writing into it",
            hint="name a regular file (render: -o - for standard output)")
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
    the file whole through :func:`atomic_write`; an existing file keeps its permissions.

    The old content is read only from a regular file of the caller's (or root's): a file,
    FIFO or device another user put there would choose what is kept (for known_hosts,
    which host keys are trusted)."""
    target = resolve_own_links(path)
    try:
        old: bytes | None = read_regular(target, owners=(os.geteuid(), 0))
    except FileNotFoundError:
        old = None
    head = old or b""
    if head and not head.endswith(b"\n"):
        head += b"\n"
    text = line if line.endswith("\n") else line + "\n"
    return atomic_write(target, head + text.encode("utf-8"), mode=mode,
                        keep_mode=old is not None)


__all__ = ["append_line", "atomic_write", "file_kind", "read_regular", "resolve_own_links"]
