"""The steps that try what the fast launch's session does on a host besides starting R:
``worker_output`` (the workers' directory for their output, tried by the workers' own R
code, ``R/worker_output.R``) and ``lease`` (the host's lease, tried with the launch's own
shell code, ``R/lease.sh``, and let go of at once). Each is ``ok`` with a fixed result
where the inventory does not ask for it. Pure functions of the remote script's facts.
And what the session's ssh makes besides the reverse tunnel (:func:`forwards_warning`).
"""

from __future__ import annotations

from dataclasses import replace

from sshcluster.check.facts import Facts, r_died
from sshcluster.check.probe import LATE, RemoteContext
from sshcluster.check.report import NO_LEASE, NO_WORKER_OUTPUT, StepResult
from sshcluster.protocol import Fact
from sshcluster.ssh.config import ClientSettings


def worker_output_step(facts: Facts, ctx: RemoteContext, complete: bool) -> StepResult:
    """``worker_output``: the workers can write their output file in the inventory's
    directory on the host, and would not refuse it (a directory others may write, a
    file that is a link or someone else's)."""
    if ctx.launch != "fast" or ctx.worker_output in ("none", "console"):
        return NO_WORKER_OUTPUT
    if Fact.OUTPUT_LOG in facts:
        return StepResult("ok", f"the workers write to {facts.get(Fact.OUTPUT_LOG)}")
    if Fact.OUTPUT_ERR in facts:
        return StepResult(
            "failed", facts.get(Fact.OUTPUT_ERR) or "",
            hint=f"set 'worker_output:' in the inventory to a directory of the login user's "
                 f"own on {ctx.host.label} that others cannot write (chmod go-w it), or to "
                 "none or console", field="worker_output")
    return StepResult("failed", LATE if not complete else r_died(facts))


def lease_step(facts: Facts, ctx: RemoteContext, complete: bool) -> StepResult:
    """``lease``: with ``lease: true``, the host's lease can be taken as the launch takes
    it: flock(1) is there, file locks work in the lease directory, and no other job holds
    the host."""
    if ctx.launch != "fast" or not ctx.lease:
        return NO_LEASE
    rc = facts.get(Fact.LEASE)
    said = "; ".join(s.removeprefix("sshcluster: ") for s in facts.all(Fact.LEASE_SAID))
    if rc is None:
        return StepResult("failed", LATE if not complete else "no answer")
    if rc == "0":
        return StepResult("ok", "the host's lease is free (tried and let go)")
    if rc == "1":
        return StepResult(
            "failed", f"{ctx.host.label} is leased to {said or 'another job'}",
            hint="wait for that job to end, or end it ('sshcluster jobs' lists the leases); "
                 "'lease: false' in the inventory goes without leases", field="lease")
    missing = "flock(1) not found" in said
    return StepResult(
        "failed", said or f"the lease cannot be taken (exit status {rc})",
        hint=(f"install util-linux (flock) on {ctx.host.label}" if missing else
              f"file locks do not work in ~/.cache/sshcluster/leases on {ctx.host.label}")
        + ", or set 'lease: false' in the inventory", field="lease")


#: The forwards of an ssh config, as ``ssh -G`` names them.
_FORWARDS = ("localforward", "remoteforward", "dynamicforward")


def forwards_warning(result: StepResult, settings: ClientSettings | None, tunnel: bool
                     ) -> StepResult:
    """``resolve``'s ``result``, a warning when ssh with ``settings`` would also make the
    config's own forwards behind the reverse tunnel (``tunnel``): the launch's ssh then
    ends when one cannot be made (``ExitOnForwardFailure``: a port already taken, by an
    open ssh of the user's, or by the launch's session to another host)."""
    forwards = [f"{k} {v}" for k in _FORWARDS for v in (settings.raw.get(k, ())
                                                        if settings else ())]
    if result.status != "ok" or not forwards or not tunnel:
        return result
    return replace(result, status="warning", detail=(
        f"{result.detail}; the launch's ssh also makes the ssh config's "
        f"{'; '.join(forwards)}, and fails if one cannot be made (a port already taken)"),
        hint="keep these forwards to a Host alias of your own for interactive use, or use "
             "'tunnel: none'")


__all__ = ["forwards_warning", "lease_step", "worker_output_step"]
