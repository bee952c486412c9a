"""``push``: the same files on every host, sending only what changed.

For each host, in parallel: list what its destination holds (one ssh), compare by size,
mode and mtime, and by content hash where only the mtime differs (one more ssh, only
then), then send what is missing as one tar stream (:mod:`sshcluster.push.stream`) that
the host unpacks aside, verifies and renames into place (``remote.sh``).

Every ssh is the launch's own (:func:`~sshcluster.ssh.command.ssh_command`: the user's ssh
config, the inventory's known_hosts, host keys always checked, no prompts), with a
keepalive so that a host lost mid-push ends its ssh instead of stalling.
"""

from __future__ import annotations

import functools
import re
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import resources
from typing import NamedTuple

from sshcluster.bootstrap import END_OF_SCRIPT, READ_SCRIPT
from sshcluster.errors import PushError
from sshcluster.inventory import Host, Inventory
from sshcluster.push.manifest import (
    Entry,
    Manifest,
    changes,
    decode_names,
    encode_names,
    file_hash,
    needs_hash,
    parse_listing,
)
from sshcluster.push.result import HostPush
from sshcluster.push.stream import lock_seconds
from sshcluster.push.watch import Answer, Stalled, progress_every, run_watched
from sshcluster.quoting import shell_join, shell_quote
from sshcluster.ssh.command import SESSION_OPTIONS, openssh_version, ssh_command

__all__ = ["KEEPALIVE", "Plan", "Progress", "Session", "remote_command", "script"]

#: ssh options of every push session, a lease's: no terminal; a host that stops
#: answering for 15 s ends the session (and so its part of the push) instead of stalling
#: it; and never the user's ControlMaster (riding one, a session would have neither this
#: keepalive nor the cipher; becoming one, with ControlPersist, it would outlive the push).
KEEPALIVE = SESSION_OPTIONS

#: Called with (host label, bytes written to its ssh so far, bytes expected).
Progress = Callable[[str, int, int], None]

#: The first line of remote.sh's scan: the hash the host checks a push with.
_HASH_LINE = re.compile(r"^sshcluster-push-hash (\S+)$", re.MULTILINE)
_VERDICT = re.compile(r"^sshcluster-push\t([^\t]*)\t(ok|failed)\t(.*)$")
#: tar's words for the first file it could not write (a short write is a full disk when
#: tar also says "No space left on device").
_NO_SPACE = re.compile(r"tar: (?:\./)?(.+?): (?:Cannot [a-z ]+: No space left on device|"
                       r"Wrote only \d+ of \d+ bytes)")


def script(push_id: str = "") -> bytes:
    """remote.sh as the hosts read it: the read-script line it passes on, the chain's
    forwarder (forward.pl), the seconds to wait for another push into DEST, the push's
    own ``push_id`` (hex: a receive of the same push is not waited for) and the ssh
    options of a session (the chain's hops use the primary's own), then itself, then
    the end-of-script line."""
    here = resources.files("sshcluster.push")
    text = here.joinpath("remote.sh").read_text("utf-8")
    forward = here.joinpath("forward.pl").read_text("utf-8")
    return (f"READ_SCRIPT={shell_quote(READ_SCRIPT)}\nFORWARD_PL={shell_quote(forward)}\n"
            f"PUSH_LOCK_WAIT={lock_seconds()}\nPUSH_ID={shell_quote(push_id)}\n"
            f"SESSION_OPTIONS={shell_quote(' '.join(SESSION_OPTIONS))}\n"
            f"{text}{END_OF_SCRIPT}\n").encode()


def fast_cipher() -> list[str]:
    """AES-GCM ahead of ssh's default first choice (chacha20-poly1305): with AES-NI it
    is several times faster, which a bulk copy feels. The ``^`` form puts it first and
    keeps the rest of the list (OpenSSH 8.5 and later here)."""
    if openssh_version() < (8, 5):
        return []
    return ["-o", "Ciphers=^aes128-gcm@openssh.com,aes256-gcm@openssh.com"]


#: Key exchanges cheap enough to open many sessions at once: ML-KEM hybrid (post-quantum,
#: OpenSSH 9.9 and later), else plain X25519.
_FAST_KEX = ("mlkem768x25519-sha256", "curve25519-sha256")


def _kex_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return next((ln for ln in out.splitlines() if ln.startswith("kexalgorithms ")), "")


@functools.lru_cache(maxsize=1)
def _kex_choice() -> tuple[str, str]:
    """(OpenSSH's own key exchange list as ``ssh -G`` prints it, the option that puts a
    cheaper one first, or "" for none)."""
    own = _kex_line(["ssh", "-F", "/dev/null", "-G", "localhost"])
    if own.startswith("kexalgorithms sntrup761x25519"):
        for kex in _FAST_KEX:
            option = f"KexAlgorithms=^{kex}"
            if _kex_line(["ssh", "-F", "/dev/null", "-o", option, "-G", "localhost"]):
                return own, option
    return own, ""


@functools.lru_cache(maxsize=256)
def fast_kex(argv: tuple[str, ...]) -> tuple[str, ...]:
    """A cheaper key exchange than OpenSSH 9.0-9.8's first choice, sntrup761x25519: its
    key generation costs the client tens of milliseconds of CPU per session, which a
    primary opening a session to every host at once feels (8 sessions: about 0.65 of
    0.85 CPU-seconds, docs/speed.md). Only for sessions that carry no file content:
    those keep the post-quantum default, as the launch's do (X25519 alone is not
    post-quantum; ML-KEM, where ssh has it, is).
    ``argv`` is the whole ssh command up to the destination. Nothing when the user's or
    the system's ssh config chooses the key exchange (``ssh -G`` shows a list other than
    OpenSSH's own), when OpenSSH's own first choice is not sntrup761x25519 (10.0 and
    later put ML-KEM first; before 9.0 X25519 was first), or when ssh cannot tell."""
    own, option = _kex_choice()
    if not option or _kex_line(["ssh", "-G", *argv[1:]]) != own:
        return ()
    return ("-o", option)


def remote_command(*words: str) -> str:
    """The command line a push session runs: read the script, run it with ``words``."""
    return f"exec sh -c {shell_quote(READ_SCRIPT)} sshcluster-push {shell_join(words)}"


def chain_words(hosts: Sequence[Host]) -> list[str]:
    """The hosts after the first of a chain, as remote.sh's receive takes them (no port:
    the host's ssh config's, else 22)."""
    return [w for h in hosts
            for w in (h.label, h.host, str(h.ssh_port) if h.ssh_port else "", h.user or "")]


class Session:
    """How the primary reaches one host: the launch's ssh with :data:`KEEPALIVE`."""

    def __init__(self, inventory: Inventory, host: Host) -> None:
        self.host = host
        self.argv = [*ssh_command(inventory, host), *KEEPALIVE, *fast_cipher(),
                     *(["-l", host.user] if host.user else []), "--", host.host]

    def run(self, words: Sequence[str], stdin: bytes = b"") -> Answer:
        """Run a small mode of remote.sh (scan, sums, touch) and return its result;
        :class:`~sshcluster.push.watch.Stalled` when the host's progress stopped.

        These sessions carry names, sizes, times and hashes, never a file's content: they
        take the cheaper key exchange (:func:`fast_kex`), so that asking every host at
        once what it holds costs little (an unchanged re-push is only these)."""
        argv = [*self.argv[:-2], *fast_kex(tuple(self.argv)), *self.argv[-2:]]
        try:
            return run_watched([*argv, remote_command(*words)], script() + stdin)
        except FileNotFoundError as e:
            raise _no_ssh() from e

    def popen(self, words: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start remote.sh's receive; the caller writes the script, then the stream."""
        try:
            return subprocess.Popen([*self.argv, remote_command(*words)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE,
                                    start_new_session=True)  # Ctrl-C is ours to handle
        except FileNotFoundError as e:
            raise _no_ssh() from e


def _no_ssh() -> PushError:
    return PushError("ssh is not installed on this machine (no ssh on PATH)",
                     hint="install the OpenSSH client (the openssh-client package)")


def _why_ssh(result: Answer | None, err: bytes) -> str:
    said = err.decode(errors="replace").strip().splitlines()
    return said[-1] if said else (f"ssh ended with status {result.returncode}"
                                  if result else "ssh ended")


class Plan(NamedTuple):
    """What one host lacks (None: it could not be asked, and ``why``), and whether it
    checks with ``b2sum`` (so the archive it gets must hold the BLAKE2b sums)."""
    todo: list[Entry] | None
    why: str = ""
    b2sum: bool = True


class Hashes:
    """The SHA-256 of each file, computed once however many hosts ask for it, and at
    once: the first to ask hashes it, the others wait for that."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sums: dict[str, Future[str]] = {}

    def __call__(self, e: Entry) -> str:
        with self._lock:
            mine = e.rel not in self._sums
            if mine:
                self._sums[e.rel] = Future()
            sum_ = self._sums[e.rel]
        if mine:
            try:
                sum_.set_result(file_hash(e.source))
            except OSError as err:  # (gone, or made unreadable, since the walk)
                sum_.set_exception(PushError(f"cannot read {e.source}: {err.strerror or err}"))
            except BaseException as err:
                sum_.set_exception(err)
        return sum_.result()


def plan_host(session: Session, manifest: Manifest, dest: str, hashes: Hashes) -> Plan:
    """What one host lacks, as its listing (remote.sh's scan) and, where only the
    mtime differs, its hashes say."""
    tops = sorted({e.rel.split("/", 1)[0] for e in manifest.entries})
    label = session.host.label
    try:
        listed = session.run(["scan", dest, *tops])
    except Stalled as e:
        return Plan(None, _stalled(e, label, f"listing {dest}"))
    if listed.returncode != 0:
        return Plan(None, f"cannot list {dest} on {session.host.label}: " + _why_ssh(
            listed, listed.stderr))
    text = decode_names(listed.stdout)
    kind = _HASH_LINE.search(text)
    b2sum = kind is None or kind.group(1) != "sha256"
    remote = parse_listing(text)
    doubtful = needs_hash(manifest, remote)
    same: list[str] = []
    if doubtful:
        ours = {e.rel: hashes(e) for e in doubtful}
        names = encode_names("".join(f"{e.rel}\n" for e in doubtful))
        try:
            summed = session.run(["sums", dest, str(progress_every())], names)
        except Stalled as e:
            return Plan(None, _stalled(e, label, f"hashing the files in {dest} whose "
                                                 "modification time differs"))
        theirs = {}
        for line in decode_names(summed.stdout).split("\n"):
            digest, _, name = line.partition("  ")
            theirs[name] = digest
        same = [e.rel for e in doubtful if theirs.get(e.rel) == ours[e.rel]]
        if same:
            # Same content, other mtime: set theirs to ours, so that next time the
            # quick check alone says "unchanged".
            mtimes = {e.rel: e.mtime for e in doubtful}
            lines = encode_names("".join(f"{mtimes[r]} {r}\n" for r in same))
            try:
                session.run(["touch", dest], lines)
            except Stalled as e:
                return Plan(None, _stalled(e, label, f"setting modification times in {dest}"))
    return Plan(changes(manifest, remote, same), "", b2sum)


def _stalled(e: Stalled, label: str, doing: str) -> str:
    if not e.answered:
        return f"no answer from {label} within {e.seconds} s ({doing})"
    return (f"{label} made no progress {doing} for {e.seconds} s (a process stopped, or "
            "its disk or a mount there stuck?), so the push gave it up")


def verdicts(out: bytes) -> dict[str, tuple[bool, str]]:
    """The verdict lines remote.sh printed, by host label."""
    found: dict[str, tuple[bool, str]] = {}
    for line in out.decode(errors="replace").split("\n"):  # (a host's words may hold U+2028)
        m = _VERDICT.match(line)
        if m:
            found[m.group(1)] = (m.group(2) == "ok", m.group(3) or "")
    return found


def failure(label: str, dest: str, why: str) -> tuple[str, str | None]:
    """A host's reason in the user's words, and the path it concerns (a full disk)."""
    m = _NO_SPACE.search(why)
    if m and "No space left on device" in why:
        path = f"{dest.rstrip('/')}/{m.group(1)}"
        return f"no space left on device on {label} writing {path}", path
    return why, None


def host_result(host: Host, ok: bool, why: str, dest: str, *, files: int, size: int,
                seconds: float, via: str, dirs: int = 0) -> HostPush:
    """One host's verdict as :class:`HostPush` (``files``, ``size``: the files and links
    sent, and their bytes; ``dirs``: the directories it lacked)."""
    if ok:
        detail = (f"{files} file{'s' if files != 1 else ''}, {size} bytes sent" if files
                  else f"{dirs} director{'ies' if dirs != 1 else 'y'} made" if dirs
                  else "unchanged")
        return HostPush(host.label, True, detail, files, size, seconds, via)
    reason, path = failure(host.label, dest, why)
    return HostPush(host.label, False, reason, 0, 0, seconds, via, path)


def plan_all(inventory: Inventory, hosts: Sequence[Host], manifest: Manifest, dest: str,
             ) -> dict[str, Plan]:
    """:func:`plan_host` for every host, all at once; by label."""
    hashes = Hashes()
    with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        plans = pool.map(lambda h: plan_host(Session(inventory, h), manifest, dest, hashes),
                         hosts)
        return {h.label: p for h, p in zip(hosts, plans, strict=True)}


def now() -> float:
    return time.monotonic()
