"""The public call: :func:`push`.

Direct fan-out: every host that lacks something gets its own ssh session, all fed from
one archive (hosts that lack the same files share it). Chain fan-out (``fanout: chain``
in the inventory, for hosts that can ssh to each other): the primary sends the archive
once, to the first host, and each host passes it on to the next as it arrives; ``tree``
makes two such chains, so the primary sends each byte twice and the chains are half as
long. A host left without a verdict because one before it in the chain was lost gets a
direct copy afterwards. A destination inside the inventory's ``shared_dir`` is one
directory for every host: one copy is sent, to the first host.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from sshcluster.errors import PushError
from sshcluster.inventory import Fanout, Host, Inventory
from sshcluster.push.manifest import Entry, Manifest, local_manifest
from sshcluster.push.result import HostPush, PushResult
from sshcluster.push.stream import Fanout as Stream
from sshcluster.push.stream import stall_seconds
from sshcluster.push.transfer import (
    Progress,
    Session,
    chain_words,
    host_result,
    now,
    plan_all,
    script,
    verdicts,
)

__all__ = ["push"]


def push(
    inventory: Inventory,
    sources: Sequence[str | os.PathLike[str]],
    dest: str | None = None,
    *,
    fanout: Fanout | None = None,
    progress: Progress | None = None,
) -> PushResult:
    """Copy ``sources`` (files or directories) to ``dest`` on every host of
    ``inventory``; each source lands at ``dest/<its name>``.

    ``dest`` defaults to the inventory's ``workdir`` (a relative one is relative to the
    login directory on each host). ``fanout`` overrides the inventory's. ``progress`` is
    called, from other threads, with (host label, bytes sent so far, bytes to send).
    Never raises for a host's failure: :attr:`PushResult.hosts` has every host's
    verdict. Raises :class:`~sshcluster.errors.PushError` when the push cannot start
    (no destination, a source that cannot be read). Ctrl-C stops every session; each
    host then removes what it had unpacked, and no file is left half-written under its
    final name.

    Example::

        inv = sshcluster.load_inventory("hosts.yaml")     # with workdir: /srv/work
        result = sshcluster.push(inv, ["data"])            # /srv/work/data on every host
        assert result.ok, [h.detail for h in result.failed]
    """
    t0 = now()
    dest = _host_path(dest or inventory.workdir)
    if not dest:
        raise PushError("no destination: give one, or set workdir: in the inventory",
                        hint="sshcluster push hosts.yaml data --to /srv/work")
    if not sources:
        raise PushError("nothing to push: name at least one file or directory")
    manifest = local_manifest(sources)
    fan = fanout or inventory.fanout
    shared = _in_shared_dir(dest, inventory.shared_dir)
    targets = list(inventory.hosts[:1] if shared else inventory.hosts)
    plans = plan_all(inventory, targets, manifest, dest)
    out: dict[str, HostPush] = {}
    senders: list[tuple[Host, list[Entry]]] = []
    # the hosts that check with b2sum: only then does the archive carry BLAKE2b sums
    b2 = {label for label, plan in plans.items() if plan.b2sum}
    for h in targets:
        todo, why, _ = plans[h.label]
        if todo is None:
            out[h.label] = host_result(h, False, why, dest, files=0, size=0,
                                       seconds=now() - t0, via="direct")
        elif not todo:
            out[h.label] = host_result(h, True, "", dest, files=0, size=0,
                                       seconds=now() - t0, via="direct")
        else:
            senders.append((h, todo))
    sent = _Run()
    try:
        if fan != "direct" and len(senders) > 1:
            left = _chains(inventory, senders, manifest, dest, fan, progress, out, sent, t0,
                           b2)
            senders = [(h, todo) for h, todo in senders if h.label in left]
        _direct(inventory, senders, manifest, dest, progress, out, sent, t0, b2)
    except BaseException:
        sent.stop()  # Ctrl-C (or a bug): no session outlives the call
        raise
    if shared:
        first = out[targets[0].label]
        for h in inventory.hosts[1:]:
            out[h.label] = HostPush(
                h.label, first.ok, f"sees the copy sent to {first.host} ({dest} is in "
                f"shared_dir {inventory.shared_dir})" if first.ok else
                f"not sent: the copy to {first.host} failed", via="shared_dir")
    return PushResult(dest, tuple(out[h.label] for h in inventory.hosts),
                      manifest.skipped, sent.bytes, now() - t0, "shared_dir" if shared else fan)


class _Run:
    """What one push has going: the bytes written to ssh so far, and every session and
    archive, so that Ctrl-C, which only the main thread sees, can stop them all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes = 0
        self.procs: list[subprocess.Popen[bytes]] = []
        self.streams: list[Stream] = []
        self.stopped = False
        #: Tells the hosts' receives of this push from another push's (the lock in DEST).
        self.id = secrets.token_hex(8)

    def add(self, proc: subprocess.Popen[bytes]) -> None:
        with self.lock:
            self.procs.append(proc)
            if self.stopped:
                proc.terminate()

    def stop(self) -> None:
        """Stop every archive and session (each host then drops what it unpacked)."""
        with self.lock:
            self.stopped = True
            for stream in self.streams:
                stream.cancel()
            for p in self.procs:
                if p.poll() is None:
                    p.terminate()


def _host_path(dest: str | None) -> str | None:
    """``dest`` as the hosts take it: ``~`` and ``~/x`` are the login directory and
    ``x`` in it, a relative path (ssh starts there; the inventory reads ``workdir`` so),
    since the hosts' sh is given the path quoted and would make a directory named ``~``.
    ``~user`` is refused."""
    if not dest or not dest.startswith("~"):
        return dest
    if dest == "~" or dest.startswith("~/"):
        return dest[2:].strip("/") or "."
    raise PushError(f"{dest.split('/')[0]} (another user's home) is not expanded on the "
                    "hosts", hint="write the whole path")


def _in_shared_dir(dest: str, shared: str | None) -> bool:
    if not shared:
        return False
    d, s = os.path.normpath(dest), os.path.normpath(shared)
    return d == s or d.startswith(s.rstrip("/") + "/")


def _dirs(manifest: Manifest) -> list[Entry]:
    return [e for e in manifest.entries if e.kind == "d"]


def _stream(inventory: Inventory, heads: Sequence[Host], words: Sequence[Sequence[str]],
            entries: list[Entry], manifest: Manifest, progress: Progress | None,
            sent: _Run, b2sums: bool) -> list[tuple[bytes, bytes]]:
    """One archive of ``entries`` (and every directory: those in ``entries`` are the
    hosts' reason to get one) to each of ``heads`` (running remote.sh with ``words``);
    their (stdout, stderr). ``b2sums``: a host it reaches checks with b2sum. Ctrl-C
    stops them all and is raised again."""
    entries = [e for e in entries if e.kind != "d"]
    size = sum(e.size for e in entries)
    lock = threading.Lock()
    counts = [0] * len(heads)

    def on_sent(i: int, n: int) -> None:
        with lock:
            sent.bytes += n - counts[i]
            counts[i] = n
        if progress is not None:
            progress(heads[i].label, n, size)

    procs: list[subprocess.Popen[bytes]] = []
    try:
        for h, w in zip(heads, words, strict=True):
            procs.append(Session(inventory, h).popen(w))
            sent.add(procs[-1])
        stream = Stream(procs, script(sent.id), entries, _dirs(manifest), on_sent, b2sums)
        sent.streams.append(stream)
        stream.run()
        outs = []
        for p in procs:
            while p.poll() is None:  # (short waits, so that Ctrl-C is seen)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(0.2)
        for i, p in enumerate(procs):
            assert p.stdout is not None and p.stderr is not None
            err = p.stderr.read()
            if stream.stalled[i]:  # (the last line: the reason given)
                err += (f"\nit took no more of the data for {stall_seconds()} s (its disk or a "
                        "mount there stuck?), so the push gave it up").encode()
            outs.append((p.stdout.read(), err))
        if stream.error is not None:
            raise PushError(f"reading the sources failed: {stream.error}") from stream.error
        return outs
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        raise
    finally:
        for p in procs:
            for f in (p.stdin, p.stdout, p.stderr):
                if f is not None:
                    f.close()


def _counts(todo: Sequence[Entry]) -> tuple[int, int, int]:
    """Files (and links) and their bytes, and directories, of what a host lacks."""
    files = [e for e in todo if e.kind != "d"]
    return len(files), sum(e.size for e in files), len(todo) - len(files)


def _collect(hosts: Sequence[Host], outs: Sequence[tuple[bytes, bytes]], dest: str,
             sizes: dict[str, tuple[int, int, int]], via: str, out: dict[str, HostPush],
             t0: float) -> list[str]:
    """Record the verdicts found in ``outs``; the labels of ``hosts`` that have none."""
    found: dict[str, tuple[bool, str]] = {}
    for stdout, _ in outs:
        found.update(verdicts(stdout))
    missing = []
    for h in hosts:
        if h.label in found:
            ok, why = found[h.label]
            files, size, dirs = sizes[h.label]
            out[h.label] = host_result(h, ok, why, dest, files=files, size=size,
                                       seconds=now() - t0, via=via, dirs=dirs)
        else:
            missing.append(h.label)
    return missing


def _direct(inventory: Inventory, senders: Sequence[tuple[Host, list[Entry]]],
            manifest: Manifest, dest: str, progress: Progress | None,
            out: dict[str, HostPush], sent: _Run, t0: float, b2: set[str]) -> None:
    """Hosts that lack the same files share one archive; the groups run at once."""
    groups: dict[tuple[str, ...], list[tuple[Host, list[Entry]]]] = {}
    for h, todo in senders:
        groups.setdefault(tuple(e.rel for e in todo), []).append((h, todo))

    def one(group: list[tuple[Host, list[Entry]]]) -> None:
        hosts = [h for h, _ in group]
        todo = group[0][1]
        outs = _stream(inventory, hosts, [["receive", dest, h.label] for h in hosts],
                       todo, manifest, progress, sent, any(h.label in b2 for h in hosts))
        sizes = dict.fromkeys((h.label for h in hosts), _counts(todo))
        for h, (stdout, stderr) in zip(hosts, outs, strict=True):
            if _collect([h], [(stdout, stderr)], dest, sizes, "direct", out, t0):
                why = stderr.decode(errors="replace").strip().splitlines()
                out[h.label] = host_result(
                    h, False, f"{h.label} was lost during the push: "
                    f"{why[-1] if why else 'ssh ended'}",
                    dest, files=0, size=0, seconds=now() - t0, via="direct")

    if len(groups) <= 1:
        for g in groups.values():
            one(g)
        return
    pool = ThreadPoolExecutor(max_workers=len(groups))
    try:
        for f in [pool.submit(one, g) for g in groups.values()]:
            f.result()
    except BaseException:
        sent.stop()  # before the wait below: Ctrl-C reaches this thread only
        raise
    finally:
        pool.shutdown(wait=True)


def _chains(inventory: Inventory, senders: Sequence[tuple[Host, list[Entry]]],
            manifest: Manifest, dest: str, fan: str, progress: Progress | None,
            out: dict[str, HostPush], sent: _Run, t0: float, b2: set[str]) -> set[str]:
    """Send one archive down each chain; return the labels left without a verdict."""
    wanted = {e.rel for _, todo in senders for e in todo}
    entries = [e for e in manifest.files if e.rel in wanted]  # every host gets the union
    hosts = [h for h, _ in senders]
    chains = [hosts] if fan == "chain" else [c for c in (hosts[0::2], hosts[1::2]) if c]
    outs = _stream(inventory, [c[0] for c in chains],
                   [["receive", dest, c[0].label, *chain_words(c[1:])] for c in chains],
                   entries, manifest, progress, sent, any(h.label in b2 for h in hosts))
    counts = _counts([e for e in manifest.entries if e.rel in wanted])
    missing = set(_collect(hosts, outs, dest, dict.fromkeys((h.label for h in hosts), counts),
                           fan, out, t0))
    # A host the one before it could not reach gets a direct copy, as does one left
    # without a verdict by a host lost before it.
    return missing | {h.label for h in hosts if h.label in out and not out[h.label].ok
                      and out[h.label].detail.startswith("from ")}
