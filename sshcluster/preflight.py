"""The preflight check: prove, for every host at once, that the cluster will start.

:func:`check` (plain code) and :func:`check_async` (asyncio) take an
:class:`~sshcluster.inventory.Inventory` and return a
:class:`~sshcluster.report.CheckReport` with one verdict per host and step::

    from sshcluster.inventory import load_inventory
    from sshcluster.preflight import check, verified_inventory

    inv = load_inventory("hosts.yaml")
    report = check(inv, timeout=10)
    for host in report.failed:
        print(host.label, host.failed)
    ready = verified_inventory(report, inv, allow_partial=True)   # ncore: auto filled in

Per host, in order: ``resolve`` (through ``~/.ssh/config`` aliases), ``connect`` (TCP),
``hostkey`` (always verified against known_hosts), ``auth`` (non-interactive), then one
remote command (see :mod:`sshcluster.probe`) answers ``rscript``, ``packages``,
``cores``, ``load``, ``reverse_ssh`` and ``callback``. All hosts run at once (at most
``concurrency`` connections), and the whole run ends by ``timeout`` seconds, whatever
the hosts do: a step cut off by the deadline fails, a step that could not run because
an earlier one failed is skipped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import getpass
import hmac
import ipaddress
import os
import random
import re
import secrets
import shutil
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import asyncssh

from sshcluster.errors import CheckFailed, SshclusterError
from sshcluster.hostkeys import KnownHosts, fingerprint
from sshcluster.inventory import AUTO, Host, Inventory
from sshcluster.net import R_PORT_RANGE, known_hosts_name
from sshcluster.probe import REMOTE_STEPS, Facts, remote_script, remote_steps
from sshcluster.report import SKIPPED, STEPS, CheckReport, HostReport, StepResult

#: Default per-run deadline in seconds.
DEFAULT_TIMEOUT = 10.0
#: Default bound on hosts checked at the same time. Each host takes about a second, so 32
#: at a time check hundreds of hosts within the default timeout; more at once mostly makes
#: the workers' logins to the primary collide with its sshd's MaxStartups (10:30:100 by
#: default), and on hosts that share a machine it thrashes.
DEFAULT_CONCURRENCY = 32
#: The range R itself picks its PSOCK port from; used when the inventory has no ``port``.
PORT_RANGE = R_PORT_RANGE

#: Called with each host's report as soon as that host is done (for progress displays).
ProgressCallback = Callable[[HostReport], None]


# --------------------------------------------------------------------------- one host


class _HostRun:
    """The mutable state of one host's check: results so far and the running step."""

    def __init__(self, ctx: _Run, host: Host, token: str) -> None:
        self.ctx = ctx
        self.host = host
        self.token = token
        self.results: dict[str, StepResult] = {}
        self.current = STEPS[0]
        self.started = ctx.loop.time()
        self.facts = Facts()
        self.remote_started = False
        self.callback_timeout = 0.0
        self.address: str | None = None
        self.hostkey: tuple[str, str, str | None] | None = None  # status, detail, hint
        self.key_host = host.host
        self.key_port: int | None = None
        self.tunnel_error: str | None = None

    def begin(self, step: str) -> None:
        self.current = step
        self.started = self.ctx.loop.time()

    def done(self, status: str, detail: str = "", hint: str | None = None) -> None:
        secs = self.ctx.loop.time() - self.started
        self.results[self.current] = StepResult(status, detail, secs, hint)  # type: ignore[arg-type]
        self.started = self.ctx.loop.time()

    def fail(self, detail: str, hint: str | None = None) -> None:
        self.done("failed", detail, hint)

    def report(self, *, complete: bool) -> HostReport:
        checks: dict[str, StepResult] = {}
        outcome = None
        if self.remote_started:
            outcome = remote_steps(
                self.host, self.facts, complete=complete,
                primary_r_version=self.ctx.primary_r_version,
                callback_timeout=self.callback_timeout,
                callback_error=self.ctx.listen_error or self.tunnel_error,
                port=self.ctx.port, tunnel=self.ctx.tunnel,
            )
        for step in STEPS:
            if step in self.results:
                checks[step] = self.results[step]
            elif outcome is not None and step in outcome.steps:
                checks[step] = outcome.steps[step]
            elif step == self.current and not complete:
                secs = self.ctx.loop.time() - self.started
                checks[step] = StepResult(
                    "failed", f"no answer within the deadline ({self.ctx.timeout:g} s)", secs,
                    hint=_TIMEOUT_HINTS.get(step))
            else:
                checks[step] = SKIPPED
        return HostReport(
            host=self.host, checks=checks,
            ncore=outcome.ncore if outcome else None,
            rscript=outcome.rscript if outcome else None,
            r_version=outcome.r_version if outcome else None,
            address=self.address,
            seen_primary=outcome.seen_primary if outcome else None,
        )


_TIMEOUT_HINTS = {
    "connect": "the host is down, or a firewall drops packets to its ssh port",
    "hostkey": "sshd accepted the connection but did not finish the handshake",
    "auth": "sshd is slow to authenticate (DNS lookups by sshd? set UseDNS no)",
}


class _Client(asyncssh.SSHClient):
    """Times the handshake and decides about keys known_hosts does not trust."""

    def __init__(self, run: _HostRun) -> None:
        self.run = run

    def validate_host_public_key(self, host: str, addr: str, port: int,
                                 key: asyncssh.SSHKey) -> bool:
        run, known = self.run, self.run.ctx.known_hosts
        shown = known_hosts_name(host, port)
        old = known.known_keys(host, addr, port)
        if old:
            files = known.files_naming(host, addr, port) or known.files
            olds = ", ".join(fingerprint(k) for k in old)
            run.hostkey = (
                "failed",
                f"HOST KEY CHANGED for {shown}: the server offers {fingerprint(key)}, "
                f"known_hosts has {olds}. Someone may be intercepting the connection, "
                "or the host was reinstalled.",
                "only if you know why the key changed: "
                + "; ".join(f"ssh-keygen -R '{shown}' -f {f}" for f in files)
                + ", then check again with --accept-new",
            )
            return False
        if known.accept_new and known.record_to:
            where = known.record(host, port, key)
            run.hostkey = ("ok", f"new key {fingerprint(key)} recorded in {where} "
                                 "(accept-new)", None)
            return True
        run.hostkey = (
            "failed",
            f"{shown} is not in known_hosts (it offers {fingerprint(key)})",
            f"check that fingerprint with the host's owner, then run 'ssh {shown}' once, or "
            "pass --accept-new to record it",
        )
        return False

    def begin_auth(self, username: str) -> None:
        if self.run.current == "hostkey":
            if self.run.hostkey is not None and self.run.hostkey[0] == "ok":
                self.run.done("ok", self.run.hostkey[1])
            else:
                self.run.done("ok", "matches known_hosts")
            self.run.begin("auth")


async def _check_host(run: _HostRun) -> None:
    ctx, host = run.ctx, run.host
    loop = ctx.loop

    # resolve: the config file may turn an alias into another name, port and user
    try:
        options = asyncssh.SSHClientConnectionOptions(**ctx.ssh_kwargs(run))
    except (OSError, ValueError, asyncssh.Error) as e:
        run.fail(f"bad ssh options for {host.label}: {e}",
                 hint="check identity_file and ~/.ssh/config for this host")
        return
    target = options.host or host.host
    port = int(options.port or 22)
    run.key_host, run.key_port = options.host_key_alias or target, port
    if options.proxy_command or options.tunnel:
        # ProxyCommand / ProxyJump: asyncssh resolves and connects through it.
        run.done("ok", f"{host.host} is reached through a proxy")
        run.begin("connect")
        sock = None
    else:
        # "node1 is 10.0.0.5", "node1 is n1.example.org (HostName in the ssh config)"
        named = (f"{host.host} is {target} (HostName in the ssh config)"
                 if target != host.host else target)
        try:
            ipaddress.ip_address(target)
            infos: list[tuple[int, tuple[Any, ...]]] = [
                (socket.AF_INET6 if ":" in target else socket.AF_INET, (target, port))]
        except ValueError:
            try:
                raw = await loop.getaddrinfo(target, port, type=socket.SOCK_STREAM)
            except OSError as e:
                run.fail(f"cannot resolve {named}: {e.strerror or e}",
                         hint="check the name (DNS, /etc/hosts, or a Host alias in "
                              "~/.ssh/config)")
                return
            infos = [(fam, addr[:2]) for fam, _, _, _, addr in raw]
        run.address = str(infos[0][1][0])
        run.done("ok", named if named.startswith(f"{host.host} is {run.address}") else
                 run.address if target == run.address else f"{named}: {run.address}")

        # connect: TCP to the ssh port, each address in turn
        run.begin("connect")
        sock = None
        errors: list[str] = []
        for fam, addr in infos:
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                await loop.sock_connect(s, addr)
            except OSError as e:
                s.close()
                why = os.strerror(e.errno) if e.errno else str(e)
                errors.append(f"{addr[0]} port {addr[1]}: {why}")
                continue
            except BaseException:
                s.close()
                raise
            sock, run.address = s, str(addr[0])
            break
        if sock is None:
            refused = any("refused" in e.lower() for e in errors)
            run.fail(
                "; ".join(errors),
                hint=("sshd is not running there, or listens on another port (ssh_port: in "
                      "the inventory)" if refused else
                      "the host is down, or unreachable from here"),
            )
            return
        run.done("ok", f"{run.address} port {port}")

    # hostkey + auth: one asyncssh handshake; _Client marks the boundary between them
    run.begin("hostkey")
    conn: asyncssh.SSHClientConnection | None = None
    try:
        try:
            conn = await asyncssh.connect(sock=sock, options=options,
                                          **ctx.ssh_kwargs(run))
        except asyncssh.HostKeyNotVerifiable as e:
            if run.hostkey is not None:
                run.fail(run.hostkey[1], hint=run.hostkey[2])
            else:
                run.fail(f"host key not verified: {e.reason}",
                         hint="see the known_hosts entries for this host")
            return
        except asyncssh.KeyExchangeFailed as e:
            run.fail(f"no common key exchange or host key algorithm: {e.reason}",
                     hint="the host key type in known_hosts may not be one the server has")
            return
        except asyncssh.PermissionDenied as e:
            if run.current != "auth":
                run.begin("auth")
            user = options.username
            keys = host.identity_file or "the default keys and the ssh agent"
            run.fail(
                f"permission denied for {user}@{host.label} ({e.reason}; tried {keys})",
                hint=f"put the public key in ~{user}/.ssh/authorized_keys on {host.label}, or "
                     "set identity_file in the inventory; test with ssh -o BatchMode=yes",
            )
            return
        except (asyncssh.Error, OSError) as e:
            reason = getattr(e, "reason", None) or str(e) or type(e).__name__
            run.fail(f"ssh connection failed: {reason}",
                     hint="see sshd's log on the host (MaxStartups? a TCP wrapper?)")
            return
        if run.current == "hostkey":  # no begin_auth call (no auth needed)
            run.done("ok", "matches known_hosts")
            run.begin("auth")
        run.done("ok", f"logged in as {options.username}")

        # With tunnel: reverse, the workers reach the primary's port through this very
        # session, as the launch's ssh -R 127.0.0.1:P:127.0.0.1:P does.
        if ctx.tunnel and not ctx.listen_error:
            try:
                await conn.forward_remote_port("127.0.0.1", ctx.port, "127.0.0.1", ctx.port)
            except (asyncssh.Error, asyncssh.ChannelListenError, OSError) as e:
                run.tunnel_error = (
                    f"the reverse tunnel cannot listen on 127.0.0.1:{ctx.port} on "
                    f"{host.label}: {getattr(e, 'reason', '') or e}")

        # steps 5-10: one remote command
        run.begin("rscript")
        run.remote_started = True
        budget = max(1.0, ctx.deadline - loop.time() - 1.0)
        script = remote_script(
            rscript=host.rscript, r_packages=ctx.inventory.r_packages,
            primary=None if ctx.inventory.primary.host == AUTO else ctx.inventory.primary.host,
            callback_host="127.0.0.1" if ctx.tunnel else None,
            primary_user=ctx.primary_user, primary_ssh_port=ctx.inventory.primary.ssh_port,
            port=0 if ctx.listen_error or run.tunnel_error else ctx.port, token=run.token,
            budget=budget,
        )
        run.callback_timeout = max(1, int(budget) - 1)
        proc = await conn.create_process("sh -s", encoding="utf-8", errors="replace",
                                         stderr=asyncssh.STDOUT)
        proc.stdin.write(script)
        proc.stdin.write_eof()
        async for line in proc.stdout:
            run.facts.add(line)
        await proc.wait()
    finally:
        if conn is not None:
            conn.abort()
        elif sock is not None:
            sock.close()


# --------------------------------------------------------------------------- the run


class _Run:
    """One check run: shared state of every host's check."""

    def __init__(self, inventory: Inventory, *, timeout: float, accept_new: bool,
                 ssh_config: Sequence[str] | None, user_known_hosts: str | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.inventory = inventory
        self.timeout = timeout
        self.deadline = self.loop.time() + timeout
        files = [user_known_hosts] if user_known_hosts else []
        if inventory.known_hosts:
            files.append(inventory.known_hosts)
        record_to = inventory.known_hosts or user_known_hosts
        self.known_hosts = KnownHosts(files, record_to=record_to, accept_new=accept_new)
        if ssh_config is None:
            default = os.path.expanduser("~/.ssh/config")
            ssh_config = [default] if os.path.isfile(default) else []
        self.ssh_config = [str(c) for c in ssh_config]
        self.primary_user = inventory.primary.user or getpass.getuser()
        self.primary_r_version: str | None = None
        self.port = 0
        self.listen_error: str | None = None
        self.tunnel = False
        self.tokens: dict[str, str] = {}  # token -> host label
        self.called_back: set[str] = set()
        self._keys: dict[str, Any] = {}

    def ssh_kwargs(self, run: _HostRun) -> dict[str, Any]:
        host = run.host
        kw: dict[str, Any] = {
            "host": host.host,
            "config": self.ssh_config,
            # Never None: that would switch verification off.
            "known_hosts": self.known_hosts.trusted,
            "client_factory": lambda: _Client(run),
            "password_auth": False,
            "kbdint_auth": False,
            "connect_timeout": None,
        }
        if host.ssh_port:
            kw["port"] = host.ssh_port
        if host.user:
            kw["username"] = host.user
        if host.identity_file:
            kw["client_keys"] = self._load_keys(host.identity_file)
        return kw

    def _load_keys(self, path: str) -> Any:
        if path not in self._keys:
            try:
                self._keys[path] = asyncssh.load_keypairs([path])
            except (OSError, asyncssh.KeyImportError) as e:
                raise ValueError(f"cannot load identity_file {path}: {e}") from None
        return self._keys[path]

    async def listen(self) -> asyncio.AbstractServer | None:
        """Listen for the workers' callbacks on the inventory's port (or a free one)."""
        wanted = self.inventory.port
        candidates = [wanted] if wanted else random.sample(
            range(PORT_RANGE[0], PORT_RANGE[1] + 1), 50)
        last: OSError | None = None
        for port in candidates:
            try:
                server = await asyncio.start_server(self._callback, host=None, port=port,
                                                    reuse_address=True)
            except OSError as e:
                last = e
                if e.errno == errno.EADDRINUSE and not wanted:
                    continue
                break
            self.port = port
            return server
        self.port = wanted or 0
        self.listen_error = (f"the primary cannot listen on port "
                             f"{wanted or 'in {}-{}'.format(*PORT_RANGE)}: "
                             f"{last.strerror if last else 'no free port'}")
        return None

    async def _callback(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=self.timeout)
            token = line.decode("ascii", "replace").strip()
            match = next((t for t in self.tokens if hmac.compare_digest(t, token)), None)
            if match is not None:
                self.called_back.add(self.tokens[match])
                writer.write(b"ok\n")
            else:
                writer.write(b"wrong nonce\n")
            await writer.drain()
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    async def primary_r(self) -> None:
        """The primary's own R version (for the version-mismatch warning)."""
        rscript = shutil.which("Rscript")
        if not rscript:
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                rscript, "--version", stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL)
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=5)
        except (OSError, asyncio.TimeoutError):
            return
        m = re.search(r"version (\d+\.\d+\.\d+)", out.decode(errors="replace"))
        if m:
            self.primary_r_version = m.group(1)


async def check_async(
    inventory: Inventory,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    concurrency: int = DEFAULT_CONCURRENCY,
    accept_new: bool = False,
    ssh_config: Sequence[str] | None = None,
    user_known_hosts: str | None = "~/.ssh/known_hosts",
    progress: ProgressCallback | None = None,
    tunnel: bool | None = None,
) -> CheckReport:
    """Check every host of ``inventory`` at once; return the :class:`CheckReport`.

    ``timeout`` bounds the whole run in seconds (a host not done by then fails at the
    step it was in); ``concurrency`` bounds the hosts checked at the same time.
    Host keys are verified against ``user_known_hosts`` plus the inventory's
    ``known_hosts:``; ``accept_new`` records unknown keys (in the inventory's file if it
    has one, else the user's), never changed ones. ``ssh_config`` lists OpenSSH client
    config files (default: ``~/.ssh/config`` if it exists). ``progress`` is called with
    each host's report as it completes. ``tunnel`` (default: the inventory's ``tunnel:
    reverse``) checks the callback as the tunnelled launch makes it: through an ssh
    reverse forward of the port, bound to 127.0.0.1 on each host. Never raises for a
    host's failure.
    """
    if timeout <= 0:
        raise SshclusterError(f"timeout must be positive, not {timeout}")
    if concurrency < 1:
        raise SshclusterError(f"concurrency must be at least 1, not {concurrency}")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    known = os.path.expanduser(user_known_hosts) if user_known_hosts else None
    ctx = _Run(inventory, timeout=timeout, accept_new=accept_new, ssh_config=ssh_config,
               user_known_hosts=known)
    ctx.tunnel = inventory.tunnel == "reverse" if tunnel is None else tunnel
    server, _ = await asyncio.gather(ctx.listen(), ctx.primary_r())
    slots = asyncio.Semaphore(concurrency)
    runs = []
    for host in inventory.hosts:
        token = secrets.token_hex(16)
        ctx.tokens[token] = host.label
        runs.append(_HostRun(ctx, host, token))

    async def one(run: _HostRun) -> HostReport:
        complete = False
        try:
            await asyncio.wait_for(slots.acquire(), timeout=ctx.deadline - loop.time())
        except asyncio.TimeoutError:
            run.fail(f"not started: all {concurrency} connection slots were busy until "
                     "the deadline", hint="raise --concurrency or --timeout")
            report = run.report(complete=True)
        else:
            try:
                run.begin("resolve")
                await asyncio.wait_for(_check_host(run),
                                       timeout=max(0.0, ctx.deadline - loop.time()))
                complete = True
            except asyncio.TimeoutError:
                pass
            except Exception as e:  # a bug or an unexpected error: report it, go on
                run.fail(f"unexpected error: {type(e).__name__}: {e}")
                complete = True
            finally:
                slots.release()
            report = run.report(complete=complete)
        if progress is not None:
            progress(report)
        return report

    try:
        reports = await asyncio.gather(*(one(r) for r in runs))
    finally:
        if server is not None:
            server.close()
    # Fold the primary's own view of the callbacks into the verdicts.
    reports = [_confirm_callback(r, ctx) for r in reports]
    primary, notes = _primary_address(inventory, reports)
    return CheckReport(
        primary=primary, port=ctx.port, hosts=tuple(reports),
        primary_r_version=ctx.primary_r_version, primary_rscript=shutil.which("Rscript"),
        notes=tuple(notes), seconds=loop.time() - t0,
    )


def _confirm_callback(report: HostReport, ctx: _Run) -> HostReport:
    cb = report.checks["callback"]
    if cb.status != "ok" or report.label in ctx.called_back:
        return report
    checks = dict(report.checks)
    checks["callback"] = StepResult("failed", "the worker says it called back, but the "
                                    "primary did not see its nonce", cb.seconds)
    return dataclasses.replace(report, checks=checks)


def _primary_address(inventory: Inventory, reports: Sequence[HostReport]
                     ) -> tuple[str, list[str]]:
    if inventory.primary.host != AUTO:
        return inventory.primary.host, []
    seen: dict[str, list[str]] = {}
    for r in reports:
        if r.seen_primary:
            seen.setdefault(r.seen_primary, []).append(r.label)
    if not seen:
        return AUTO, ["primary.host is auto, but no worker reported the primary's address"]
    counts = Counter({a: len(h) for a, h in seen.items()})
    best = counts.most_common(1)[0][0]
    if len(seen) == 1:
        return best, [f"primary.host auto: the workers see the primary as {best}"]
    who = "; ".join(f"{a} ({', '.join(h)})" for a, h in seen.items())
    return best, [f"primary.host auto: the workers see the primary at different addresses: "
                  f"{who}; set primary.host to one they can all reach"]


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
    the primary's is gets its own ``rscript``; ``primary.host: auto`` becomes the detected
    address. A failed host raises :class:`CheckFailed` (with the report), unless
    ``allow_partial``, which drops it (``report.failed`` says which).
    """
    by_label = {r.label: r for r in report.hosts}
    if report.failed and not allow_partial:
        raise CheckFailed(f"{len(report.failed)} of {len(report.hosts)} hosts failed the "
                          f"check: {report.summary()}", report=report,
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
        if rscript is None and r.rscript and (
            (reference and r.rscript != reference) or (not reference and len(paths) > 1)
        ):
            rscript = r.rscript
        hosts.append(dataclasses.replace(h, ncore=ncore, rscript=rscript))
    if not hosts:
        raise CheckFailed("no host passed the check", report=report)
    primary = inventory.primary
    if primary.host == AUTO:
        seen = {r.seen_primary for r in report.succeeded if r.seen_primary}
        if len(seen) != 1:
            raise CheckFailed(
                "primary.host is auto, but " + (
                    "no worker reported the primary's address" if not seen else
                    f"the workers see the primary at different addresses: {sorted(seen)}"),
                report=report, hint="set primary.host in the inventory")
        primary = dataclasses.replace(primary, host=seen.pop())
    return dataclasses.replace(inventory, primary=primary, hosts=tuple(hosts))


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
