"""What a push sends: the files under each source, and which of them a host lacks.

:func:`local_manifest` walks the sources once: every directory, regular file and symlink,
with its size, modification time (whole seconds, as the hosts' listing shows it) and mode.
A symlink is sent as a link, never followed; one that leads outside its source is left out
and named in :attr:`Manifest.skipped` (on a host it would point at whatever lives there).
A source itself (named on the command line) that is a link is followed, as ``cp`` and
``rsync`` follow it. :func:`changes` compares the manifest with a host's listing
(:func:`parse_listing`): a file whose size and mtime match is unchanged; one whose size
matches but mtime does not is looked at by content hash (:func:`needs_hash`); anything
else is sent.
"""

from __future__ import annotations

import hashlib
import os
import stat
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sshcluster.errors import PushError

__all__ = [
    "Entry",
    "Manifest",
    "Remote",
    "changes",
    "decode_names",
    "encode_names",
    "file_hash",
    "local_manifest",
    "needs_hash",
    "parse_listing",
]

Kind = Literal["d", "f", "l"]

#: Bytes read at a time when hashing.
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    """One thing to send: ``rel`` is its path under the destination (``data/x.csv``),
    ``source`` where it is here; ``target`` a symlink's target."""

    rel: str
    source: str
    kind: Kind
    size: int = 0
    mtime: int = 0
    mode: int = 0o644
    target: str = ""


@dataclass(frozen=True)
class Manifest:
    """Every entry of the sources, directories first (parents before children)."""

    entries: tuple[Entry, ...]
    skipped: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if e.kind != "d")

    @property
    def size(self) -> int:
        """Bytes of file content in all."""
        return sum(e.size for e in self.entries if e.kind == "f")


@dataclass(frozen=True)
class Remote:
    """One path as a host's listing shows it."""

    kind: str
    size: int
    mtime: int
    mode: int


def encode_names(text: str) -> bytes:
    """Text of file names as the hosts' tools take it: a name that is not UTF-8 here
    (read by Python as lone surrogates) goes as the bytes it was, as tar's headers send it."""
    return text.encode("utf-8", "surrogateescape")


def decode_names(data: bytes) -> str:
    """What a host printed about file names, with names that are not UTF-8 as Python's
    walk reads them here (lone surrogates), so that the two compare equal."""
    return data.decode("utf-8", "surrogateescape")


def _check_name(rel: str) -> None:
    # The hosts' tools take one path per line (sha256sum's list, the listing), and
    # sha256sum and b2sum escape a name with a backslash, a newline or a carriage return
    # (so its line would match no name we sent). No control character at all: a name
    # that moves a terminal's cursor is no name for data either.
    bad = next((c for c in rel if c == "\\" or unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        what = {"\n": "a newline", "\\": "a backslash"}.get(
            bad, f"a control character ({bad!r})")
        raise PushError(f"cannot push {rel!r}: a file name with {what}",
                        hint="rename the file")


def local_manifest(sources: Sequence[str | os.PathLike[str]]) -> Manifest:
    """Walk ``sources`` (files or directories); each lands at DEST/its base name."""
    entries: list[Entry] = []
    skipped: list[str] = []
    seen: set[str] = set()
    for src in sources:
        root = Path(src)
        try:
            # (a source named on the command line is followed if it is a link, as cp
            # and rsync follow it: `push data` where data -> /mnt/big/data sends the data)
            st = root.stat()
        except OSError as e:
            raise PushError(f"cannot read {src}: {e.strerror or e}" + (
                " (a link to nothing)" if root.is_symlink() else "")) from e
        base = Path(os.path.abspath(root)).name
        if not base or base in (".", ".."):
            raise PushError(f"{src!s} has no name to land under",
                            hint="name the directory itself, e.g. data rather than data/.")
        if base.startswith(".sshcluster-push"):
            # (the push's own names in DEST: its lock, its staging directories)
            raise PushError(f"cannot push {src!s}: {base} is a name push keeps for itself "
                            "in DEST", hint="rename it")
        if base in seen:
            raise PushError(f"two sources would land at {base}", hint="rename one")
        seen.add(base)
        if not stat.S_ISDIR(st.st_mode):
            entries += _entry(root, base, ("", ""), skipped, follow=True)  # (no link)
            continue
        top = os.path.abspath(root)
        tops = (top, os.path.realpath(root))
        # (never follows links; a directory it cannot list stops the push: left out, the
        # hosts would be told nothing about what it holds)
        for dirpath, dirnames, filenames in os.walk(root, onerror=_unreadable):
            dirnames.sort()
            here = Path(dirpath)
            rel_dir = base if here == root else f"{base}/{here.relative_to(root).as_posix()}"
            entries += _entry(here, rel_dir, tops, skipped, follow=here == root)
            for name in sorted(filenames + [d for d in dirnames if (here / d).is_symlink()]):
                entries += _entry(here / name, f"{rel_dir}/{name}", tops, skipped)
    return Manifest(tuple(entries), tuple(skipped))


def _unreadable(e: OSError) -> None:
    raise PushError(f"cannot read the directory {e.filename}: {e.strerror or e}",
                    hint="make it readable (and searchable) for this user, or push "
                         "without it") from e


def _entry(path: Path, rel: str, tops: tuple[str, str], skipped: list[str], *,
           follow: bool = False) -> list[Entry]:
    """``path`` as an entry (none: left out, and in ``skipped``); ``tops``: its source's
    absolute path, as given and with every link resolved."""
    _check_name(rel)
    try:
        st = path.stat() if follow else path.lstat()
    except OSError as e:
        raise PushError(f"cannot read {path}: {e.strerror or e}") from e
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        return [Entry(rel, str(path), "d", mode=mode)]
    if stat.S_ISLNK(st.st_mode):
        # Judged by the words of the link, as the host will read them: an absolute
        # target, or one that climbs out of the source, means something else there. And
        # by where it leads once every link on the way is followed: words that stay
        # inside may still lead out through another link (x -> a/up/../z, a/up -> ..).
        target = os.readlink(path)
        top, real_top = tops
        lands = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), target))
        if (os.path.isabs(target) or not lands.startswith(top + os.sep)
                or not os.path.realpath(path).startswith(real_top + os.sep)):
            skipped.append(str(path))
            return []
        return [Entry(rel, str(path), "l", mtime=int(st.st_mtime), mode=0o777,
                      target=target)]
    if stat.S_ISREG(st.st_mode):
        _check_readable(path, follow)
        return [Entry(rel, str(path), "f", size=st.st_size, mtime=int(st.st_mtime),
                      mode=mode)]
    skipped.append(str(path))  # sockets, fifos, devices: nothing to copy
    return []


def _check_readable(path: Path, follow: bool) -> None:
    # Found now, not once the archive reaches this file (every host would have had the
    # files before it, and no verdict). O_NONBLOCK: a file swapped for a fifo meanwhile
    # does not hang the walk.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
                     | (0 if follow else os.O_NOFOLLOW))
    except OSError as e:
        raise PushError(f"cannot read {path}: {e.strerror or e}",
                        hint="make it readable for this user, or push without it") from e
    os.close(fd)


def parse_listing(text: str) -> dict[str, Remote]:
    """A host's listing (``KIND SIZE MTIME MODE PATH`` per line, as remote.sh's ``scan``
    prints it with GNU find: directories, files and links) as a mapping of path to
    :class:`Remote`."""
    out: dict[str, Remote] = {}
    for line in text.split("\n"):  # (not splitlines: a name may hold U+2028, say)
        parts = line.split(" ", 4)
        if len(parts) != 5:
            continue
        kind, size, mtime, mode, rel = parts
        try:
            out[rel] = Remote(kind, int(size), int(float(mtime)), int(mode, 8))
        except ValueError:
            continue
    return out


def _same_meta(e: Entry, r: Remote | None) -> bool:
    return r is not None and r.kind == e.kind and r.size == e.size and r.mode == e.mode


def needs_hash(manifest: Manifest, remote: dict[str, Remote]) -> list[Entry]:
    """Files whose size and mode match the host's but whose mtime does not: the content
    hash decides."""
    return [e for e in manifest.files if e.kind == "f" and _same_meta(e, remote.get(e.rel))
            and remote[e.rel].mtime != e.mtime]


def changes(manifest: Manifest, remote: dict[str, Remote],
            same_content: Iterable[str] = ()) -> list[Entry]:
    """The directories, files and links a host lacks, given its listing and the paths
    whose content hash matched (:func:`needs_hash`). A directory is lacking where the
    host has none, or one of another mode: an empty one too, which no file brings."""
    same = set(same_content)
    out: list[Entry] = []
    for e in manifest.entries:
        r = remote.get(e.rel)
        if e.kind == "d":
            # (permissions only: a directory in a set-group-ID DEST has that bit too)
            if r is None or r.kind != "d" or (r.mode ^ e.mode) & 0o1777:
                out.append(e)
        elif e.kind == "l":
            if r is None or r.kind != "l" or r.mtime != e.mtime:
                out.append(e)
        elif not (_same_meta(e, r) and ((r is not None and r.mtime == e.mtime) or e.rel in same)):
            out.append(e)
    return out


def file_hash(path: str) -> str:
    """The SHA-256 of a file's content, as sha256sum prints it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
