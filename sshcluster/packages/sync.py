"""``sync``: give every host the reference's R packages, all hosts at once.

Per host, one ssh session asks what is there (``R/sync.sh``, mode ``probe``): R's
version and platform, the OS release, whether sshcluster's library for this
environment on a host like this one (``<library>/R-<x.y>/<platform>/<os>/<digest>``,
``R/library_dir.R``) is already complete, and an id that hosts sharing that directory
(one home on NFS) have in common. Then, once per directory:

* **same platform as the primary** (R major.minor, ``R.version$platform``, OS release):
  the primary's installed package directories, packed once (tar, gzip), are streamed
  over ssh, as renv's cache or conda-pack ship builds;
* **otherwise, or from a lockfile**: the pinned versions are installed from
  ``repos:`` (default: the primary's ``getOption("repos")``) by the host's own R.

Either way the packages land in a fresh directory, every one of them is loaded by the
host's R there, and only then is the directory renamed into place: a library is there
whole or not at all, and a package that will not load (a shared library missing on
that host) is named with the library from R's error. The user's own libraries are never
written. A host whose library is complete is sent nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import secrets
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from sshcluster.bootstrap import END_OF_SCRIPT, READ_SCRIPT
from sshcluster.errors import PackagesError, SyncFailed
from sshcluster.inventory import Host, Inventory
from sshcluster.packages.outcome import HostSync, Outcome, SyncReport, size
from sshcluster.packages.reference import Reference, reference_for
from sshcluster.protocol import SyncFact
from sshcluster.quoting import shell_quote
from sshcluster.ssh.command import SESSION_OPTIONS, ssh_command

#: Seconds one host's sync may take (an install from source can take minutes).
SYNC_TIMEOUT = 1800.0
#: Seconds past a sync's timeout that its ``.incoming-`` directory on a host is left
#: alone by other syncs (its host may still be finishing when the primary gives up).
INCOMING_MARGIN = 600
#: Hosts synced at the same time.
SYNC_CONCURRENCY = 32

#: Called with a host's label and what it is doing now (for progress displays).
SyncProgress = Callable[[str, str], None]

_R = resources.files("sshcluster.packages").joinpath("R")
_SH = _R.joinpath("sync.sh").read_text(encoding="utf-8")
_VERIFY_R = _R.joinpath("verify.R").read_text(encoding="utf-8")
_WHERE_R = resources.files("sshcluster").joinpath("R").joinpath("library_dir.R").read_text(
    encoding="utf-8")
_INSTALL_R = _R.joinpath("install.R").read_text(encoding="utf-8")
_MISSING_SO = re.compile(r"([^\s:'\"]+\.so[.0-9]*): cannot open shared object file")


@dataclass
class _Facts:
    values: dict[str, list[str]] = field(default_factory=dict)
    other: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        key, eq, value = line.rstrip("\r\n").partition("=")
        if eq and re.fullmatch(r"[A-Z_]+", key):
            self.values.setdefault(key, []).append(value)
        elif line.strip():
            self.other.append(line.rstrip())

    def get(self, key: str) -> str:
        v = self.values.get(key)
        return v[-1] if v else ""


class _Syncer:
    """One sync run: the inventory, the reference, the archive of the primary's builds
    (packed once, on first need) and the shared directories already being synced."""

    def __init__(self, inventory: Inventory, known: asyncio.Future[Reference],
                 progress: SyncProgress | None, timeout: float, workdir: Path) -> None:
        self.inventory, self.known, self.timeout = inventory, known, timeout
        self.progress = progress or (lambda label, what: None)
        self.workdir = workdir
        self.archive: asyncio.Task[Path] | None = None
        self.shared: dict[tuple[str, str], asyncio.Future[HostSync]] = {}
        self.slots = asyncio.Semaphore(SYNC_CONCURRENCY)

    def _no_reference(self) -> bool:
        """Whether reading the reference failed (or was cancelled)."""
        return self.known.done() and (self.known.cancelled()
                                      or self.known.exception() is not None)

    @property
    def ref(self) -> Reference:
        """The reference (known once the first probe's script is sent)."""
        return self.known.result()

    def _script(self, host: Host, mode: str) -> str:
        data = {
            "mode": mode, "rscript": host.rscript or "",
            "root": self.inventory.library_of(host), "digest": self.ref.digest,
            "token": secrets.token_hex(8), "manifest": "\n".join(self.ref.names),
            "where_r": _WHERE_R, "verify_r": _VERIFY_R,
            "install_r": _INSTALL_R if mode == "install" else "",
            "repos": " ".join(self.inventory.packages.repos or self.ref.repos),
            "pins": " ".join(f"{p.name}={p.version}" for p in self.ref.packages),
            # (how long its .incoming- directory is to be left alone on the host)
            "lifetime": str(math.ceil(self.timeout) + INCOMING_MARGIN),
        }
        return "".join(f"{k}={shell_quote(v)}\n" for k, v in data.items()) + _SH

    async def _ssh(self, host: Host, mode: str, stdin: Path | None = None) -> tuple[_Facts, int]:
        """Run ``R/sync.sh`` in ``mode`` on ``host`` (``stdin``: a file to stream to it).

        The probe starts before the primary's reference is known: its ssh connection is
        made meanwhile (most of an up-to-date sync's time), and the script goes over
        stdin once the reference is there, as one ``{ ...; }`` that sh reads whole
        before it runs any of it.
        """
        later = mode == "probe"
        # (the script never on the command line, where a csh or fish login shell would
        # misread it: on stdin, ahead of the data, read whole by READ_SCRIPT)
        command = "sh -s" if later else f"exec sh -c {shell_quote(READ_SCRIPT)}"
        # (SESSION_OPTIONS: a host that stops answering ends its session in about 15 s,
        # and never through the user's ControlMaster)
        argv = [*ssh_command(self.inventory, host), *SESSION_OPTIONS,
                *(["-l", host.user] if host.user else []), "--", host.host, command]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        facts, sent = _Facts(), 0
        try:
            assert proc.stdin is not None and proc.stdout is not None

            async def feed() -> None:
                nonlocal sent
                assert proc.stdin is not None
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    if later:
                        await asyncio.wait([self.known])
                        if self._no_reference():
                            proc.kill()  # (sync_async raises the reference's error)
                            return
                        self.progress(host.label, "looking")
                        proc.stdin.write(f"{{\n{self._script(host, mode)}\n}}\n".encode())
                        await proc.stdin.drain()
                    else:
                        proc.stdin.write(f"{self._script(host, mode)}\n{END_OF_SCRIPT}\n"
                                         .encode())
                        await proc.stdin.drain()
                    if stdin is not None:
                        with stdin.open("rb") as f:
                            while chunk := f.read(1 << 20):
                                proc.stdin.write(chunk)
                                sent += len(chunk)
                                await proc.stdin.drain()
                    proc.stdin.close()

            async def read() -> None:
                assert proc.stdout is not None
                async for raw in proc.stdout:
                    facts.add(raw.decode(errors="replace"))

            await asyncio.gather(feed(), read(), proc.wait())
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        return facts, sent

    async def _archive(self) -> Path:
        """The primary's builds of the reference's packages, as one tar.gz (made once)."""
        path = self.workdir / f"{self.ref.digest}.tar.gz"

        def pack() -> None:
            with tarfile.open(path, "w:gz", compresslevel=1) as tar:
                for p in self.ref.packages:
                    assert p.path is not None
                    tar.add(p.path, arcname=p.name)

        await asyncio.to_thread(pack)
        return path

    def _same_platform(self, facts: _Facts) -> bool:
        ref = self.ref
        minor = ".".join(facts.get(SyncFact.R_VERSION).split(".")[:2])
        return (all(p.path for p in ref.packages) and minor == ref.r_minor
                and facts.get(SyncFact.PLATFORM) == ref.platform
                and facts.get(SyncFact.OS) == ref.os_release)

    async def host(self, host: Host) -> HostSync:
        """Sync one host; never raises for the host's failure."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with self.slots:
            if self._no_reference():  # (a host that waited for a slot: nothing to start)
                return HostSync(host, "failed", "no reference")
            # (the probe's ssh starts now; the host's time starts with the reference)
            work = asyncio.ensure_future(self._host(host))
            try:
                first: list[asyncio.Future[Any]] = [self.known, work]
                try:
                    await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError:
                    work.cancel()
                    raise
                result = await asyncio.wait_for(work, self.timeout)
            except asyncio.TimeoutError:
                result = HostSync(host, "failed", f"not done within {self.timeout:g} s")
            except (OSError, PackagesError) as e:
                result = HostSync(host, "failed", str(e))
        result = replace(result, seconds=loop.time() - t0)
        if self._no_reference():
            return result  # (never looked: sync_async raises the reference's error)
        self.progress(host.label, f"{result.outcome}: {result.detail}" if result.detail
                      else result.outcome)
        return result

    async def _host(self, host: Host) -> HostSync:
        facts, _ = await self._ssh(host, "probe")
        library = facts.get(SyncFact.LIBRARY) or None
        if facts.get(SyncFact.FAILED) or not facts.get(SyncFact.STATE):
            return HostSync(host, "failed", _said(facts), library=library)
        if facts.get(SyncFact.STATE) == "complete":
            return HostSync(host, "up to date", f"{library} is complete", library=library)
        key = (facts.get(SyncFact.SHARED_ID), library or "")
        if key in self.shared:  # another host of the run writes this very directory
            first = await self.shared[key]
            if not first.ok:
                return HostSync(host, "failed", f"shares {library} with {first.label}, "
                                                "which failed", library=library)
            out, _ = await self._ssh(host, "verify")
            errors = _load_errors(out)
            if errors or out.get(SyncFact.STATE) != "verified":
                said = "; ".join([*(_load_error(p, e) for p, e in errors.items()),
                                  *self._wrong(out)]) or _said(out)
                return HostSync(host, "failed", f"shares {library} with {first.label}, but "
                                                f"will not load on {host.label}: {said}",
                                library=library, load_errors=errors)
            return HostSync(host, "shared", f"shares {library} with {first.label}",
                            library=library)
        self.shared[key] = done = asyncio.get_running_loop().create_future()
        try:
            result = await self._fill(host, facts, library)
        except BaseException as e:
            done.set_result(HostSync(host, "failed", f"{type(e).__name__}: {e}"))
            raise
        done.set_result(result)
        return result

    async def _fill(self, host: Host, facts: _Facts, library: str | None) -> HostSync:
        if self._same_platform(facts):
            if self.archive is None:
                self.archive = asyncio.ensure_future(self._archive())
            archive = await asyncio.shield(self.archive)
            self.progress(host.label, f"sending {size(archive.stat().st_size)}")
            out, sent = await self._ssh(host, "receive", archive)
            outcome: Outcome = "copied"
        else:
            self.progress(host.label, f"installing {len(self.ref.names)} packages (R "
                                      f"{facts.get(SyncFact.R_VERSION)}, "
                                      f"{facts.get(SyncFact.PLATFORM)})")
            out, sent = await self._ssh(host, "install")
            outcome = "installed"
        errors = _load_errors(out)
        if out.get(SyncFact.STATE) in ("complete", "there"):
            return HostSync(host, outcome, f"{len(self.ref.names)} packages in {library}",
                            sent, library)
        if errors:
            said = "; ".join(_load_error(p, e) for p, e in errors.items())
            return HostSync(host, "failed", f"will not load on {host.label}: {said}; nothing "
                                            "was put on the workers' library path", sent,
                            library, load_errors=errors)
        wrong = self._wrong(out)
        if wrong:
            return HostSync(host, "failed", f"not as pinned: {', '.join(wrong)} "
                                            f"({_said(out)})", sent, library)
        return HostSync(host, "failed", _said(out), sent, library)


    def _wrong(self, out: _Facts) -> list[str]:
        """The packages the host's R found at another version than the pinned one."""
        want = self.ref.versions
        return [f"{name} {v or 'missing'} (wanted {want[name]})" for name, _, v in
                (h.partition(" ") for h in out.values.get(SyncFact.HAVE, []))
                if name in want and v != want[name]]


def _said(facts: _Facts) -> str:
    said = "; ".join([*facts.other[-3:], *facts.values.get(SyncFact.FAILED, [])[-1:]])
    return said or "no answer"


def _load_errors(facts: _Facts) -> dict[str, str]:
    lines = facts.values.get(SyncFact.LOADFAIL, [])
    return {p: e for p, _, e in (x.partition("\t") for x in lines)}


def _load_error(package: str, error: str) -> str:
    m = _MISSING_SO.search(error)
    if m:
        return f"{package} needs the shared library {m.group(1)}, which is missing there"
    return f"{package}: {error[-300:]}"


async def _usable(inventory: Inventory, reference: Reference | None) -> Reference:
    ref = reference or await reference_for(inventory)
    if ref is None:
        raise PackagesError("nothing to sync: the inventory has no r_packages and no lockfile",
                            hint="list the packages the workers need under r_packages:")
    if ref.absent:
        raise PackagesError(f"the primary lacks {', '.join(ref.absent)}, needed by r_packages",
                            hint="install them here first; sync gives the hosts what the "
                                 "primary has")
    return ref


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sshcluster-sync-") as d:
        yield Path(d)


async def sync_async(inventory: Inventory, *, progress: SyncProgress | None = None,
                     timeout: float = SYNC_TIMEOUT, reference: Reference | None = None,
                     raise_on_failure: bool = False) -> SyncReport:
    """Make every host of ``inventory`` have the reference's packages (see the module).

    ``reference`` defaults to the inventory's (:func:`reference_for`). ``progress`` is
    called with a host's label and what it does now. Returns every host's outcome;
    with ``raise_on_failure``, a failed host raises :class:`SyncFailed` holding it.
    """
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    # (the hosts' ssh connections are made while the primary's R reads the reference)
    known = asyncio.ensure_future(_usable(inventory, reference))
    with _workdir() as workdir:
        syncer = _Syncer(inventory, known, progress, timeout, workdir)
        each = asyncio.gather(*(syncer.host(h) for h in inventory.hosts))
        try:
            try:
                ref = await known
            except BaseException:  # (its error, or Ctrl-C while the reference was read)
                await each  # (each probe kills its ssh at once, spawned or not yet: _ssh)
                raise
            hosts = await each
        finally:
            each.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await each
            if syncer.archive is not None and not syncer.archive.done():
                syncer.archive.cancel()
    report = SyncReport(ref, tuple(hosts), loop.time() - t0)
    if raise_on_failure and not report.ok:
        said = "; ".join(f"{h.label}: {h.detail}" for h in report.failed)
        raise SyncFailed(f"{len(report.failed)} of {len(report.hosts)} hosts did not get the "
                         f"packages: {said}", report=report)
    return report


def sync(inventory: Inventory, *, progress: SyncProgress | None = None,
         timeout: float = SYNC_TIMEOUT, reference: Reference | None = None,
         raise_on_failure: bool = False) -> SyncReport:
    """:func:`sync_async` from plain code; same arguments and result."""
    return asyncio.run(sync_async(inventory, progress=progress, timeout=timeout,
                                  reference=reference, raise_on_failure=raise_on_failure))


__all__ = ["SYNC_CONCURRENCY", "SYNC_TIMEOUT", "HostSync", "Outcome", "SyncProgress",
           "SyncReport", "sync", "sync_async"]
