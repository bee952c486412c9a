"""The check of one host: one function per step, and the one place that runs them.

:data:`STEPS` lists every step with the steps it needs; :func:`run_host` runs them in
that order within the run's deadline and skips a step when one it needs failed (or was
skipped). On the primary's side, ``resolve``, ``connect``, ``hostkey`` and ``auth`` each
have their function here; the remote steps are answered by one script per host (see
:mod:`sshcluster.check.probe`) whose facts each step's verdict reads, and ``callback`` also
asks the listener of :mod:`sshcluster.check.callback` what it saw.

A :class:`~sshcluster.check.context.HostCheck` holds what the steps of one host found and
what they opened (the socket, the ssh connection); :func:`run_host` closes those whatever
happens.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import asyncssh

from sshcluster.check.callback import callback_verdict, slow_lookup_warning
from sshcluster.check.context import CheckContext, HostCheck
from sshcluster.check.hints import (
    DNS_HINT,
    TIMEOUT_HINTS,
    auth_refused,
    blame,
    missing_identity,
)
from sshcluster.check.locale import launch_locale
from sshcluster.check.probe import (
    VERDICTS,
    callback_timeout,
    found,
    remote_script,
)
from sshcluster.check.report import SKIPPED, HostReport, StepResult
from sshcluster.check.session import forwards_warning, lease_step, worker_output_step
from sshcluster.containers.check import IN_IMAGE, container_verdict
from sshcluster.errors import SshclusterError
from sshcluster.inventory import AUTO
from sshcluster.packages.drift import host_versions
from sshcluster.protocol import Fact
from sshcluster.push.fanout_check import fanout_step
from sshcluster.push.shared import shared_dir_step
from sshcluster.ssh.command import ssh_command
from sshcluster.ssh.config import BREAKS_LAUNCH_HINT, client_settings
from sshcluster.ssh.connect import host_decision
from sshcluster.ssh.environment import sent_environment
from sshcluster.ssh.identities import KeyOffer

# --------------------------------------------------------------------------- the steps


async def resolve(hc: HostCheck) -> StepResult:
    """``resolve``: what ssh makes of the host (``ssh -G`` with the launch's options,
    the host's user and port), and the addresses of the name it connects to; a warning
    for the config's own forwards behind the reverse tunnel (:func:`forwards_warning`)."""
    return forwards_warning(await _resolve(hc), hc.settings, hc.ctx.tunnel)


async def _resolve(hc: HostCheck) -> StepResult:
    host, ctx = hc.host, hc.ctx
    try:  # (a path the launch's ssh command cannot carry is a RenderError)
        args = ssh_command(ctx.inventory, host)[1:] + (["-l", host.user] if host.user else [])
        s = hc.settings = await client_settings(host.host, args,
                                                config=ctx.connector.config)
    except SshclusterError as e:
        return StepResult("failed", e.message, hint=e.hint)
    if s.unsupported():
        return StepResult("failed", f"ssh would use {'; '.join(s.unsupported())} for "
                                    f"{host.label}, which the check cannot do as ssh does",
                          hint="see 'What the check cannot mirror' in docs/check.md")
    breaks = s.breaks_launch(tunnel=ctx.tunnel, script=ctx.inventory.launch == "fast")
    if breaks:
        return StepResult("failed", f"ssh would use {'; '.join(breaks)} for {host.label}, "
                                    "which breaks the launch", hint=BREAKS_LAUNCH_HINT)
    hc.decision, hc.key_problem = host_decision(s, args, ctx.inventory.known_hosts,
                                                ctx.connector.files, ctx.connector.accept_new)
    named = host.host if s.hostname == host.host else f"{host.host} is {s.hostname}"
    config = [f"port {s.port}"] if s.port != (host.ssh_port or 22) else []
    config += [f"user {s.user}"] if s.user != host.user and host.user else []
    via = f" ({', '.join(config)} in the ssh config)" if config else ""
    if s.proxy_jump:
        return StepResult("ok", f"{named}{via}, reached through ProxyJump {s.proxy_jump}")
    if s.proxy_command:
        return StepResult("ok", f"{named}{via}, reached through ProxyCommand "
                                f"{s.proxy_command}")
    family = {"inet": socket.AF_INET, "inet6": socket.AF_INET6}.get(s.address_family, 0)
    try:
        ipaddress.ip_address(s.hostname)
        hc.candidates = [(socket.AF_INET6 if ":" in s.hostname else socket.AF_INET,
                          (s.hostname, s.port))]
    except ValueError:
        try:
            raw = await asyncio.get_running_loop().getaddrinfo(
                s.hostname, s.port, family=family, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as e:  # UnicodeError: not a valid DNS name
            return StepResult("failed", f"cannot resolve {named}: "
                                        f"{getattr(e, 'strerror', None) or e}",
                              hint="check the name (DNS, /etc/hosts, or a Host alias in "
                                   "~/.ssh/config)")
        hc.candidates = [(fam, addr[:2]) for fam, _, _, _, addr in raw]
    address = str(hc.candidates[0][1][0])
    hc.address = address
    return StepResult("ok", f"{named}{via}" if address == s.hostname else
                      f"{named}{via}: {address}")


async def connect(hc: HostCheck) -> StepResult:
    """``connect``: TCP to the ssh port, each address in turn, within ssh's
    ConnectTimeout; or the way to the host through ProxyJump or ProxyCommand."""
    s, ctx = hc.settings, hc.ctx
    assert s is not None
    loop = asyncio.get_running_loop()
    hc.connect_by = min(ctx.deadline, loop.time() + (s.connect_timeout or ctx.timeout))
    if s.proxy_jump:
        tunnel, how = await ctx.connector.jump(s.proxy_jump, hc.connect_by, hc.opened)
        if tunnel is None:
            return StepResult("failed", f"through ProxyJump {s.proxy_jump}: {how}",
                              hint="check that 'ssh -o BatchMode=yes' reaches the jump host")
        hc.route = {"tunnel": tunnel}
        return StepResult("ok", f"through {how}")
    if s.proxy_command:
        hc.route = {"proxy_command": s.proxy_argv()}
        return StepResult("ok", "through the ProxyCommand (started with the handshake)")
    errors: list[str] = []
    for fam, addr in hc.candidates:
        sock = socket.socket(fam, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            if s.bind_address:
                sock.bind((s.bind_address, 0))
            await asyncio.wait_for(loop.sock_connect(sock, addr),
                                   max(0.0, hc.connect_by - loop.time()))
        except asyncio.TimeoutError:
            sock.close()
            errors.append(f"{addr[0]} port {addr[1]}: no answer within ConnectTimeout "
                          f"({s.connect_timeout:g} s), when ssh gives up"
                          if s.connect_timeout and hc.connect_by < ctx.deadline
                          else f"{addr[0]} port {addr[1]}: no answer within the deadline "
                               f"({ctx.timeout:g} s)")
            continue
        except OSError as e:
            sock.close()
            errors.append(f"{addr[0]} port {addr[1]}: "
                          f"{os.strerror(e.errno) if e.errno else e}")
            continue
        except BaseException:
            sock.close()
            raise
        hc.sock, hc.address = sock, str(addr[0])
        return StepResult("ok", f"{hc.address} port {s.port}")
    refused = any("refused" in e.lower() for e in errors)
    return StepResult(
        "failed", "; ".join(errors),
        hint=("sshd is not running there, or listens on another port (ssh_port: in the "
              "inventory, or Port in the ssh config)" if refused else
              "the host is down, or unreachable from here"))


async def hostkey(hc: HostCheck) -> StepResult:
    """``hostkey``: the key exchange, with the server's key checked as ssh checks it;
    it ends where authentication begins, in the handshake that ``auth`` finishes."""
    s, decision = hc.settings, hc.decision
    assert s is not None and decision is not None
    if hc.key_problem:
        return StepResult("failed", hc.key_problem,
                          hint="see 'What the check cannot mirror' in docs/check.md")
    hc.offer = await hc.ctx.connector.key_offer(s, hc.opened)
    kw = await hc.ctx.connector.options(s, decision, hc.opened, hc.offer)
    sock, hc.sock = hc.sock, None  # the connection owns it now
    hc.handshake = asyncio.ensure_future(asyncssh.connect(sock=sock, **hc.route, **kw))
    kex = asyncio.ensure_future(decision.kex_done.wait())
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait({hc.handshake, kex}, timeout=max(0.0, hc.connect_by - loop.time()),
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        kex.cancel()
    verdict = decision.verdict
    if decision.kex_done.is_set() or (hc.handshake.done() and not hc.handshake.exception()):
        return StepResult("ok", verdict.detail if verdict else "(no host key asked)")
    if not hc.handshake.done():
        within = (f"within ConnectTimeout ({s.connect_timeout:g} s), when ssh gives up"
                  if s.connect_timeout and hc.connect_by < hc.ctx.deadline
                  else f"within the deadline ({hc.ctx.timeout:g} s)")
        return StepResult("failed", f"no key exchange {within}",
                          hint=TIMEOUT_HINTS["hostkey"])
    error = hc.handshake.exception()
    if isinstance(error, asyncssh.HostKeyNotVerifiable) and verdict is not None:
        return StepResult("ok" if verdict.trusted else "failed", verdict.detail,
                          hint=verdict.hint)
    if isinstance(error, asyncssh.KeyExchangeFailed):
        return StepResult("failed", f"no common key exchange or host key algorithm: "
                                    f"{error.reason}",
                          hint="compare HostKeyAlgorithms and KexAlgorithms in the ssh "
                               "config with what the server offers")
    return _connection_failed(error)


async def auth(hc: HostCheck) -> StepResult:
    """``auth``: non-interactive login as ssh's user, with the keys ssh would offer, in
    its order (see :mod:`sshcluster.ssh.identities`)."""
    assert hc.handshake is not None and hc.settings is not None
    s = hc.settings
    try:
        hc.conn = await hc.handshake
    except asyncssh.PermissionDenied as e:
        return auth_refused(hc.host, s, hc.offer or KeyOffer(), e.reason,
                            hc.ctx.inventory.path)
    except (asyncssh.Error, OSError) as e:
        return _connection_failed(e)
    missing = missing_identity(hc.host)
    if missing:  # (ssh logs in, but not with the key the inventory names)
        line = hc.host.line_of("identity_file")
        return StepResult(
            "warning", f"logged in as {s.user}, but identity_file {missing} does not exist: "
                       f"ssh offers its default keys instead ({hc.offer.described()})"
                       if hc.offer else f"logged in as {s.user}, but identity_file "
                       f"{missing} does not exist",
            hint=f"fix 'identity_file: {hc.host.identity_file}'"
                 + (f" on line {line} of {hc.ctx.inventory.path or 'the inventory'}"
                    if line is not None else ""),
            line=line, field="identity_file")
    return StepResult("ok", f"logged in as {s.user}")


def _connection_failed(error: BaseException | None) -> StepResult:
    reason = getattr(error, "reason", None) or str(error) or type(error).__name__
    return StepResult("failed", f"ssh connection failed: {reason}",
                      hint="see sshd's log on the host (MaxStartups? a TCP wrapper?)")


async def _run_remote(hc: HostCheck) -> None:
    """Run the probe script once on the host, collecting its facts as they come."""
    assert hc.conn is not None and hc.settings is not None
    ctx = hc.ctx
    listener = ctx.listener
    if ctx.tunnel and not listener.error:
        # Through this very session, as the launch's ssh -R 127.0.0.1:P:127.0.0.1:P does.
        hc.tunnel_error = await listener.forward(hc.conn, hc.host.label)
    listener.expect(hc.nonce, hc.host.label)
    budget = max(1.0, ctx.remaining() - 1.0)
    hc.callback_timeout = callback_timeout(budget)
    inv = ctx.inventory
    script = remote_script(
        rscript=hc.host.rscript, r_packages=inv.r_packages,
        primary=None if inv.primary.host == AUTO else inv.primary.host,
        callback_host="127.0.0.1" if ctx.tunnel else None,
        primary_user=ctx.primary_user, primary_ssh_port=inv.primary.ssh_port,
        port=0 if listener.error or hc.tunnel_error else listener.port, token=hc.nonce,
        budget=budget, reference=ctx.reference, library_root=inv.library_of(hc.host),
        container=hc.host.container, workdir=inv.workdir, locale=launch_locale(inv.locale),
        classic=inv.launch == "classic",
        worker_output=inv.worker_output if inv.launch == "fast" else "none",
        lease=inv.lease and inv.launch == "fast", register=inv.register)
    try:
        # (with the variables the launch's ssh sends, SendEnv and SetEnv: R and the
        # host's shell start in what the launch's get)
        proc = await hc.conn.create_process("sh -s", encoding="utf-8", errors="replace",
                                            stderr=asyncssh.STDOUT,
                                            env=sent_environment(hc.settings))
        proc.stdin.write(script)
        proc.stdin.write_eof()
        async for line in proc.stdout:
            hc.facts.add(line)
        await proc.wait()
    except (asyncssh.Error, OSError) as e:  # the verdicts say what is missing
        hc.facts.other.append(f"the ssh session failed: {getattr(e, 'reason', '') or e}")


def _verdict(name: str, hc: HostCheck, complete: bool) -> StepResult:
    """The remote step ``name``'s verdict from what the script said (``complete``: all of
    it). For a host with a container:, the R steps' verdicts speak of R in the image."""
    verdict = (IN_IMAGE.get(name) if hc.host.container is not None else None) or (
        _VERDICTS[name])
    return verdict(hc.facts, hc.remote_context(), complete)


#: Each remote step's verdict (for a host with a container:, IN_IMAGE's go first).
_VERDICTS = {**VERDICTS, "worker_output": worker_output_step, "lease": lease_step,
             "container": container_verdict}


def _remote(name: str) -> Callable[[HostCheck], Awaitable[StepResult]]:
    """The step ``name``, answered by the probe script's facts."""

    async def step(hc: HostCheck) -> StepResult:
        if hc.remote is None:
            hc.remote = asyncio.ensure_future(_run_remote(hc))
        await asyncio.shield(hc.remote)
        return _verdict(name, hc, True)

    step.__name__ = name
    return step


def _late_remote(name: str) -> Callable[[HostCheck, bool], StepResult]:
    return lambda hc, complete: _verdict(name, hc, complete)


def _callback_result(hc: HostCheck, complete: bool) -> StepResult:
    ctx = hc.ctx
    port = ctx.listener.port
    target = (f"127.0.0.1:{port} (the reverse tunnel)" if ctx.tunnel else
              f"{hc.facts.get(Fact.PRIMARY) or 'the primary'}:{port}")
    return callback_verdict(
        hc.facts, complete=complete, target=target,
        listen_error=ctx.listener.error or hc.tunnel_error, tunnel=ctx.tunnel,
        timeout=hc.callback_timeout, confirmed=ctx.listener.confirmed(hc.host.label),
        who=f"R in {hc.host.container.image}" if hc.host.container else "R")


async def callback(hc: HostCheck) -> StepResult:
    """``callback``: R on the worker (in its image, for a host with a container:)
    reached the primary's port and its nonce arrived."""
    if hc.remote is not None:
        await asyncio.shield(hc.remote)
    return _callback_result(hc, True)


# --------------------------------------------------------------------------- the runner


@dataclass(frozen=True)
class Step:
    """One step: its name, the steps it needs, how it runs and, for a remote step, how
    it answers from what the script said when the run was cut short (``late``)."""

    name: str
    needs: tuple[str, ...]
    run: Callable[[HostCheck], Awaitable[StepResult]]
    late: Callable[[HostCheck, bool], StepResult] | None = None


#: Every step, in the order they run and are reported.
STEPS: tuple[Step, ...] = (
    Step("resolve", (), resolve),
    Step("connect", ("resolve",), connect),
    Step("hostkey", ("connect",), hostkey),
    Step("auth", ("hostkey",), auth),
    Step("rscript", ("auth",), _remote("rscript"), _late_remote("rscript")),
    Step("packages", ("rscript",), _remote("packages"), _late_remote("packages")),
    Step("cores", ("auth",), _remote("cores"), _late_remote("cores")),
    Step("load", ("auth",), _remote("load"), _late_remote("load")),
    Step("reverse_ssh", ("auth",), _remote("reverse_ssh"), _late_remote("reverse_ssh")),
    Step("callback", ("rscript",), callback, _callback_result),
    Step("worker_output", ("rscript",), _remote("worker_output"),
         _late_remote("worker_output")),
    Step("lease", ("auth",), _remote("lease"), _late_remote("lease")),
    Step("shared_dir", ("auth",), shared_dir_step),
    Step("fanout", ("auth",), fanout_step),
    Step("container", ("auth",), _remote("container"),  # (sshcluster/containers)
         _late_remote("container")),
)


async def run_host(hc: HostCheck) -> HostReport:
    """Run every step of ``hc`` in order, within the run's deadline, and report.

    A step runs only when every step it needs passed (a warning passes); otherwise it is
    skipped. A step cut off by the deadline fails with "no answer within the deadline";
    the remote steps then answer from what the script said so far.
    """
    ctx = hc.ctx
    loop = asyncio.get_running_loop()
    results: dict[str, StepResult] = {}
    current = STEPS[0]
    started = loop.time()

    async def run_steps() -> None:
        nonlocal current, started
        for step in STEPS:
            if not _ready(step, results):
                results[step.name] = SKIPPED
                continue
            current, started = step, loop.time()
            result = await step.run(hc)
            if step.late is None:  # timed here; the remote steps time themselves
                result = replace(result, seconds=loop.time() - started)
            results[step.name] = result

    try:
        await asyncio.wait_for(ctx.slots.acquire(), timeout=ctx.remaining())
    except asyncio.TimeoutError:
        results["resolve"] = StepResult(
            "failed", f"not started: all {ctx.concurrency} connection slots were busy "
                      "until the deadline", hint="raise --concurrency or --timeout")
        return _report(hc, results, complete=True)
    complete = True
    try:
        await asyncio.wait_for(run_steps(), timeout=ctx.remaining())
    except asyncio.TimeoutError:
        complete = False
        if current.late is None:
            results[current.name] = StepResult(
                "failed", f"no answer within the deadline ({ctx.timeout:g} s)",
                loop.time() - started,
                hint=DNS_HINT if current.name == "resolve" and hc.settings
                else TIMEOUT_HINTS.get(current.name))
    except Exception as e:  # a bug or an unexpected error: report it, go on
        results[current.name] = StepResult(
            "failed", f"unexpected error: {type(e).__name__}: {e}")
    finally:
        if ctx.shared is not None:  # (a host that never looks must not be waited for)
            ctx.shared.looked(hc.host.label)
        ctx.slots.release()
        await hc.close()
    # Straight to the primary: how long R's accept will take to name this host (out of
    # the slot: the lookup runs in a thread of its own, up to LOOKUP_WAIT)
    said = results.get("callback")
    if said is not None and said.status == "ok" and not ctx.tunnel:
        slow = await ctx.listener.lookup(hc.host.label, wait=ctx.remaining())
        if slow is not None:
            results["callback"] = slow_lookup_warning(said, *slow, hc.host.host)
    return _report(hc, results, complete=complete)


def _ready(step: Step, results: dict[str, StepResult]) -> bool:
    return all(results.get(n, SKIPPED).status in ("ok", "warning") for n in step.needs)


def _report(hc: HostCheck, results: dict[str, StepResult], *, complete: bool) -> HostReport:
    """Every step's result: a step the run did not get to is skipped, or, for a remote
    step whose needs passed, answered from what the script said."""
    for step in STEPS:
        if step.name not in results:
            results[step.name] = (step.late(hc, complete) if step.late and _ready(step, results)
                                  else SKIPPED)
    what = found(hc.facts)
    return HostReport(host=hc.host, checks={s.name: blame(s.name, hc.host, results[s.name])
                                            for s in STEPS},
                      ncore=what.ncore, rscript=what.rscript, r_version=what.r_version,
                      address=hc.address, seen_primary=what.seen_primary,
                      recorded_key=hc.decision.verdict.recorded
                      if hc.decision and hc.decision.verdict else None,
                      packages=host_versions(hc.facts.all(Fact.PKGV)),
                      r_platform=hc.facts.get(Fact.ENV_PLATFORM))


__all__ = ["STEPS", "TIMEOUT_HINTS", "CheckContext", "HostCheck", "Step", "run_host"]
