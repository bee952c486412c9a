"""The preflight check: prove, for every host at once, that the cluster will start.

:func:`check` (plain code) and :func:`check_async` (asyncio) take an
:class:`~sshcluster.inventory.Inventory` and return a
:class:`~sshcluster.check.report.CheckReport` with one verdict per host and step::

    from sshcluster.inventory import load_inventory
    from sshcluster.check.preflight import check, verified_inventory

    inv = load_inventory("hosts.yaml")
    report = check(inv, timeout=10)
    for host in report.failed:
        print(host.label, host.failed)
    ready = verified_inventory(report, inv, allow_partial=True)   # ncore: auto filled in

Per host, in order: ``resolve`` (what OpenSSH's ``ssh -G`` says the launch's ssh will
do, see :mod:`sshcluster.ssh.config`), ``connect`` (TCP, or ProxyJump / ProxyCommand),
``hostkey`` (checked as ssh checks it, see :mod:`sshcluster.ssh.knownhosts`), ``auth``
(non-interactive, with the keys ssh would offer), then one remote command (see
:mod:`sshcluster.check.probe`) answers ``rscript``, ``packages``, ``cores``, ``load``,
``reverse_ssh``, ``callback`` and, for a host with a ``container:``, ``container`` (then
R runs inside the image, see :mod:`sshcluster.containers.check`). All hosts run at once
(at most ``concurrency`` connections), and the whole run ends by ``timeout`` seconds,
whatever the hosts do: a step cut off by the deadline fails, a step that could not run
because an earlier one failed is skipped. The steps themselves are in
:mod:`sshcluster.check.steps`, the callback listener in
:mod:`sshcluster.check.callback`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import re
import secrets
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sshcluster.check.callback import CallbackListener
from sshcluster.check.context import CheckContext, HostCheck
from sshcluster.check.probe import REMOTE_STEPS
from sshcluster.check.report import CheckReport, HostReport
from sshcluster.check.steps import run_host
from sshcluster.commands import run_command
from sshcluster.connections import host_links, workers_note
from sshcluster.containers.check import compare_digests
from sshcluster.errors import CheckFailed, SshclusterError
from sshcluster.inventory import AUTO, Host, Inventory
from sshcluster.net import R_PORT_RANGE
from sshcluster.packages.reference import Reference, reference_for
from sshcluster.primary import refuse_ipv6_primary
from sshcluster.protocol import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT, register_needs
from sshcluster.push.marker import start_marker
from sshcluster.ssh.config import SshConfigError, client_settings
from sshcluster.ssh.connect import Connector
from sshcluster.ssh.knownhosts import KnownHostsFiles

#: The range R itself picks its PSOCK port from; used when the inventory has no ``port``.
PORT_RANGE = R_PORT_RANGE

#: Called with each host's report as soon as that host is done (for progress displays).
ProgressCallback = Callable[[HostReport], None]


async def check_async(
    inventory: Inventory,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    concurrency: int = DEFAULT_CONCURRENCY,
    accept_new: bool = False,
    ssh_config: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    tunnel: bool | None = None,
) -> CheckReport:
    """Check every host of ``inventory`` at once; return the :class:`CheckReport`.

    ``timeout`` bounds the whole run in seconds (a host not done by then fails at the
    step it was in); ``concurrency`` bounds the hosts checked at the same time.
    Each host is checked with the settings OpenSSH's ``ssh -G`` gives for it with the
    launch's options: its HostName, Port, User, identities, agent, proxies and the
    known_hosts files it reads, to which the inventory's ``known_hosts:`` is added.
    ``accept_new`` records unknown keys (in the inventory's file if it has one, else in
    ssh's first UserKnownHostsFile), never changed ones. ``ssh_config`` lists OpenSSH
    client config files to use instead of ssh's own (``ssh -F``; ``[]``: none at all;
    default: the files ssh reads, as the launch does). ``progress`` is called with
    each host's report as it completes. ``tunnel`` (default: the inventory's, which for
    the fast launch is the reverse tunnel) checks the callback as the tunnelled launch
    makes it: through an ssh reverse forward of the port, bound to 127.0.0.1 on each
    host. With ``r_packages`` (or a ``lockfile:``) the ``packages`` step compares each
    host's versions with the primary's (or the lockfile's), see
    :mod:`sshcluster.packages`. Never raises for a host's failure.
    """
    if timeout <= 0:
        raise SshclusterError(f"timeout must be positive, not {timeout}")
    if concurrency < 1:
        raise SshclusterError(f"concurrency must be at least 1, not {concurrency}")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    tunnel = inventory.effective_tunnel == "reverse" if tunnel is None else tunnel
    if not tunnel:  # (R on each host would call back to an address it cannot reach)
        refuse_ipv6_primary(inventory, asked=None if inventory.effective_tunnel == "none"
                            else "--tunnel none")
    with _config_file(ssh_config) as config:
        connector = Connector(config, KnownHostsFiles(), accept_new)
        async with CallbackListener(port=inventory.port, loopback_only=tunnel,
                                    hosts=len(inventory.hosts)) as listener:
            r_version, connector.default_host_key_algs, reference = await asyncio.gather(
                _primary_r_version(), _default_host_key_algorithms(),
                reference_for(inventory))
            ctx = CheckContext(
                inventory=inventory, timeout=timeout, deadline=t0 + timeout,
                listener=listener, connector=connector,
                primary_user=inventory.primary.user or getpass.getuser(),
                slots=asyncio.Semaphore(concurrency), concurrency=concurrency,
                tunnel=tunnel, primary_r_version=r_version, reference=reference,
                shared=start_marker(inventory))

            async def one(host: Host) -> HostReport:
                report = await run_host(HostCheck(ctx, host, secrets.token_hex(16)))
                if progress is not None:
                    progress(report)
                return report

            primary_loads = asyncio.ensure_future(_primary_loads(inventory, timeout))
            try:
                reports = await asyncio.gather(*(one(h) for h in inventory.hosts))
            except BaseException:
                primary_loads.cancel()
                raise
            finally:
                if ctx.shared is not None:
                    ctx.shared.remove_local()
            loads_note = await primary_loads  # (this machine's R may take the longest)
    reports = list(compare_digests(reports))  # (containers: the same image everywhere)
    primary, note = _primary_address(inventory, reports)
    connections = workers_note(
        sum(r.workers for r in reports), ctx.primary_r_version,
        links=sum(r.workers if inventory.launch == "classic" else host_links(
            r.workers, relay=inventory.relay, fork=inventory.fork, lease=inventory.lease)
            for r in reports))
    return CheckReport(
        primary=primary, port=listener.port, hosts=tuple(reports),
        primary_r_version=ctx.primary_r_version, primary_rscript=shutil.which("Rscript"),
        notes=(*([note] if note else []), *([connections] if connections else []),
               *listener.notes(), *_absent_note(reference), *loads_note),
        seconds=loop.time() - t0,
        reference=reference)


def _absent_note(reference: Reference | None) -> list[str]:
    if reference is None or not reference.absent:
        return []
    return [f"the primary itself lacks {', '.join(reference.absent)} (needed by r_packages): "
            "install them here first, so that sync can give them to the hosts"]


#: The mark of the lines _primary_loads reads (a profile of the user's may print).
_NOLOAD = "SSHCLUSTER-NOLOAD "


async def _primary_loads(inventory: Inventory, timeout: float) -> list[str]:
    """A note when this machine's own R cannot load what ``register:`` needs: the
    launch loads it on the primary too, and stops there (no host is to blame)."""
    needs = register_needs(inventory.register)
    rscript = shutil.which("Rscript")
    if not needs or not rscript:
        return []
    code = ("for (p in commandArgs(TRUE)) tryCatch(loadNamespace(p), error = function(e) "
            f"cat('\\n{_NOLOAD}', p, ': ', gsub('[[:space:]]+', ' ', conditionMessage(e)), "
            "'\\n', sep = ''))")
    try:
        done = await run_command([rscript, "-e", code, *needs], timeout=timeout)
    except (OSError, asyncio.TimeoutError):
        return []
    said = [line[len(_NOLOAD):] for line in done.stdout.decode(errors="replace").splitlines()
            if line.startswith(_NOLOAD)]
    if not said:
        return []
    return [f"this machine's R cannot load what register: needs ({'; '.join(said)}): the "
            "launch loads it on the primary too, and stops there; install it here first"]


@contextlib.contextmanager
def _config_file(files: Sequence[str] | None) -> Iterator[str | None]:
    """The ``ssh -F`` argument for ``files``: none (ssh's own files), ``none`` (no file),
    the file, or a temporary file that includes them all in order."""
    if files is None or len(files) == 1:
        yield files[0] if files else None
        return
    if not files:
        yield "none"
        return
    with tempfile.TemporaryDirectory(prefix="sshcluster-") as tmp:
        path = Path(tmp) / "config"
        path.write_text("".join(f'Include "{Path(f).resolve()}"\n' for f in files))
        yield str(path)


async def _default_host_key_algorithms() -> tuple[str, ...]:
    """OpenSSH's own HostKeyAlgorithms list (``ssh -G`` with no config at all)."""
    with contextlib.suppress(SshConfigError):
        settings = await client_settings("localhost", config="none")
        return settings.host_key_algorithms
    return ()


async def _primary_r_version() -> str | None:
    """The primary's own R version (for the version-mismatch warning)."""
    rscript = shutil.which("Rscript")
    if not rscript:
        return None
    try:
        done = await run_command([rscript, "--version"], timeout=5)
    except (OSError, asyncio.TimeoutError):
        return None
    said = (done.stdout + done.stderr).decode(errors="replace")
    m = re.search(r"version (\d+\.\d+\.\d+)", said)
    return m.group(1) if m else None


def seen_primary(reports: Sequence[HostReport]) -> tuple[str | None, str]:
    """The primary's address as the workers of ``reports`` see it (None unless they all
    agree), and a sentence saying so."""
    seen: dict[str, list[str]] = {}
    for r in reports:
        if r.seen_primary:
            seen.setdefault(r.seen_primary, []).append(r.label)
    if not seen:
        return None, "primary.host is auto, but no worker reported the primary's address"
    if len(seen) == 1:
        address = next(iter(seen))
        return address, f"primary.host auto: the workers see the primary as {address}"
    who = "; ".join(f"{a} ({', '.join(h)})" for a, h in seen.items())
    return None, (f"primary.host auto: the workers see the primary at different addresses: "
                  f"{who}; set primary.host to one they can all reach")


def _primary_address(inventory: Inventory, reports: Sequence[HostReport]
                     ) -> tuple[str, str | None]:
    if inventory.primary.host != AUTO:
        return inventory.primary.host, None
    address, note = seen_primary(reports)
    if address is None:  # report the address most workers saw
        counts = Counter(r.seen_primary for r in reports if r.seen_primary)
        address = counts.most_common(1)[0][0] if counts else AUTO
    return address, note


def check(inventory: Inventory, **kwargs: Any) -> CheckReport:
    """Run :func:`check_async` from plain (non-async) code; same arguments and result."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(check_async(inventory, **kwargs))
    raise SshclusterError("check() was called inside a running event loop",
                          hint="use 'await check_async(...)' there")


# --------------------------------------------------------------------------- verified spec


def verified_inventory(report: CheckReport, inventory: Inventory, *,
                       allow_partial: bool = False) -> Inventory:
    """The inventory as the check found it: ready to render.

    ``ncore: auto`` becomes the detected core count; a host whose Rscript is not where
    the primary's is gets its own ``rscript`` (not a host with a ``container:``);
    ``primary.host: auto`` becomes the detected address. A failed host raises
    :class:`CheckFailed` (with the report), unless ``allow_partial``, which drops it
    (``report.failed`` says which). Its ``check_note`` says so, and
    :func:`~sshcluster.bootstrap.write_bootstrap` writes that into the file's header, as
    ``sshcluster render --check`` does.
    """
    by_label = {r.label: r for r in report.hosts}
    if report.failed and not allow_partial:
        raise CheckFailed(f"{len(report.failed)} of {len(report.hosts)} hosts failed the "
                          "check", report=report,
                          hint="fix them, or pass --allow-partial to leave them out")
    paths = {r.rscript for r in report.succeeded if r.rscript}
    reference = report.primary_rscript
    hosts: list[Host] = []
    for h in inventory.hosts:
        r = by_label.get(h.label)
        if r is None or not r.ok:
            continue
        ncore = h.ncore if h.ncore is not None else r.ncore
        rscript = h.rscript
        # (a container's Rscript is the image's: the launch runs what the check ran there)
        if rscript is None and r.rscript and h.container is None and (
            (reference and r.rscript != reference) or (not reference and len(paths) > 1)
        ):
            rscript = r.rscript
        hosts.append(dataclasses.replace(h, ncore=ncore, rscript=rscript))
    if not hosts:
        raise CheckFailed("no host passed the check", report=report)
    primary = inventory.primary
    if primary.host == AUTO:
        address, note = seen_primary(report.succeeded)
        if address is None:
            raise CheckFailed(note, report=report, hint="set primary.host in the inventory")
        primary = dataclasses.replace(primary, host=address)
    return dataclasses.replace(inventory, primary=primary, hosts=tuple(hosts),
                               check_note=report.header_note())


__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_TIMEOUT",
    "PORT_RANGE",
    "REMOTE_STEPS",
    "ProgressCallback",
    "check",
    "check_async",
    "verified_inventory",
]
