"""The check's ``fanout`` step: with ``fanout: chain`` (or ``tree``), can each host ssh
to the host it passes a push on to?

Over the host's own check connection, the host runs ``ssh -o BatchMode=yes`` to its
successor (the next host in inventory order; in a tree, two chains: the one after next)
with its own keys and known_hosts, as ``push`` will. A host that cannot gets a warning,
not a failure: push then copies to its successor directly (slower, not broken).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import asyncssh

from sshcluster.check.report import NO_FANOUT, StepResult
from sshcluster.quoting import shell_join

if TYPE_CHECKING:  # (steps imports this module)
    from sshcluster.check.context import HostCheck

__all__ = ["fanout_step"]

#: Seconds the host's ssh to its successor may take to connect.
_CONNECT = 10


async def fanout_step(hc: HostCheck) -> StepResult:
    """``fanout``: this host reaches its successor in the push chain by ssh."""
    inv = hc.ctx.inventory
    if inv.fanout == "direct":
        return NO_FANOUT
    hosts = list(inv.hosts)
    i = next(k for k, h in enumerate(hosts) if h.label == hc.host.label)
    step = 1 if inv.fanout == "chain" else 2
    if i + step >= len(hosts):
        return StepResult("ok", f"last in its chain ({inv.fanout})")
    nxt = hosts[i + step]
    argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"ConnectTimeout={_CONNECT}",
            *(["-p", str(nxt.ssh_port)] if nxt.ssh_port else []),  # (else the host's config's)
            *(["-l", nxt.user] if nxt.user else []), "--", nxt.host, "true"]
    assert hc.conn is not None
    try:
        r = await hc.conn.run(shell_join(argv) + " </dev/null",
                              timeout=max(1.0, min(hc.ctx.remaining(), 3 * _CONNECT)))
        ok, said = r.exit_status == 0, str(r.stderr or "").strip()
    except (asyncssh.Error, OSError, asyncio.TimeoutError) as e:
        ok, said = False, str(e) or type(e).__name__
    if ok:
        return StepResult("ok", f"passes a push on to {nxt.label} (ssh works)")
    last = said.splitlines()[-1] if said else "ssh failed"
    return StepResult(
        "warning", f"{hc.host.label} cannot ssh to {nxt.label}, the next host of the push "
                   f"{inv.fanout}: {last}; push copies to it directly instead",
        hint=f"on {hc.host.label}, 'ssh -o BatchMode=yes {nxt.host} true' must work: a key "
             f"that {nxt.label} accepts, and its host key in known_hosts")
