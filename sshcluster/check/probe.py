"""What runs on a worker during the preflight check, and what its answer means.

The check runs ONE remote command per host: a POSIX ``sh`` script (:func:`remote_script`)
that finds Rscript, starts it once (base package only, so R starts in a few
milliseconds) to report the R version, look for the R packages and make the callback
to the primary with R's own ``socketConnection``, while it also reads the core count,
load and memory and, in the background, ssh-es back to the primary. The script
(``probe.sh``) and its R part have one function per step; every result comes back as one
``KEY=value`` line. :func:`parse_facts` collects them and one verdict function per step
(:data:`VERDICTS`; the ``callback`` verdict is in :mod:`sshcluster.check.callback`) turns
them into a :class:`~sshcluster.check.report.StepResult`. All are pure functions, tested
without any host.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources

from sshcluster.check.facts import Facts, parse_facts, r_died
from sshcluster.check.locale import locale_hint, locale_warning, r_locale_error
from sshcluster.check.report import StepResult
from sshcluster.containers.spec import Container
from sshcluster.inventory import Host, Packages
from sshcluster.net import r_address
from sshcluster.packages.drift import (
    drift,
    drift_verdict,
    host_versions,
    not_loading,
    registered_without,
)
from sshcluster.packages.reference import Reference
from sshcluster.protocol import (
    HOST_SHELL,
    REMOTE_STEPS,
    WORKER_SHARED_R,
    Fact,
    register_needs,
)
from sshcluster.quoting import r_string, r_vector, shell_quote

#: A host whose available memory is below this many MiB (or below 5 % of its
#: total) gets a warning.
LOW_MEMORY_MIB = 256

# The R part (R/probe.R): one function per step, one R start for all of them. Arguments:
# the address to call back, the callback port (0: do not call back), the connect timeout
# in seconds; the nonce comes in the environment. Its ``#@name`` lines are where the
# callback step (R/callback.R), the packages step against a reference and the packages
# call go; every value that is not an argument is put in with r_string.
_R = resources.files("sshcluster.check").joinpath("R")
_LAUNCH = resources.files("sshcluster").joinpath("R")
#: (the launch's own R that the workers' code and the check's share: WORKER_SHARED_R)
_R_CODE = "".join([*(_LAUNCH.joinpath(f).read_text(encoding="utf-8") for f in WORKER_SHARED_R),
                   _R.joinpath("probe.R").read_text(encoding="utf-8")])
#: The worker's side of the callback step (``step_callback``): connect, send the nonce,
#: read the answer, report it as ``CALLBACK=`` and ``T_CALLBACK=`` lines.
_R_CALLBACK = _R.joinpath("callback.R").read_text(encoding="utf-8")

#: The shell part (``probe.sh``): one function per step. Python only prepends the data,
#: as shell variables.
_SH = resources.files("sshcluster.check").joinpath("probe.sh").read_text(encoding="utf-8")
#: The packages step against a reference (``step_environment``, and where the library
#: is: ``sshcluster_library_dir``).
_ENVIRONMENT_R = "".join([
    resources.files("sshcluster").joinpath("R").joinpath("library_dir.R").read_text(
        encoding="utf-8"),
    resources.files("sshcluster.packages").joinpath("R").joinpath(
        "environment.R").read_text(encoding="utf-8")])
#: The launch's own shell functions (HOST_SHELL: the workers' locale, the workdir, the
#: lease), before ``probe.sh``, so that the check tries them as the launch does and its R
#: starts as the launch's workers do.
_HOST_SH = "".join(_LAUNCH.joinpath(f).read_text(encoding="utf-8") for f in HOST_SHELL)
#: For a host with a container: the launch's own container functions, then the check's
#: (``step_container``, ``r_in_image``), before ``probe.sh``.
_BOX = resources.files("sshcluster.containers")
_CONTAINER_SH = "".join(_BOX.joinpath(f).read_text(encoding="utf-8")
                        for f in ("container.sh", "probe.sh"))


def remote_script(
    *,
    rscript: str | None,
    r_packages: Sequence[str],
    primary: str | None,
    primary_user: str,
    primary_ssh_port: int | None,
    port: int,
    token: str,
    budget: float,
    callback_host: str | None = None,
    reference: Reference | None = None,
    library_root: str = "",
    container: Container | None = None,
    workdir: str | None = None,
    locale: Sequence[str] = (),
    classic: bool = False,
    worker_output: str = "none",
    lease: bool = False,
    register: Sequence[str] = (),
) -> str:
    """Return the script that ``sh -s`` runs on a worker (sent on its stdin).

    ``primary`` is the address to call back (None: the client address of the worker's
    ``SSH_CONNECTION``); ``port`` the callback port (0: do not call back); ``token`` the
    nonce to send; ``budget`` how many seconds the remote commands may take;
    ``callback_host`` where R calls back when that is not the primary's address (the
    host's own 127.0.0.1, at the end of a reverse tunnel). With a ``reference``, the
    packages step reports the version of each of its packages, looking first in
    sshcluster's library for it under ``library_root``. With a ``container``, the engine
    and the image are checked first and R runs inside the image, as the launch's workers
    do there (``workdir`` made as the launch makes it, and mounted; without one, the login
    directory). ``locale`` holds the ``NAME=VALUE`` pairs the launch hands the host
    (:func:`sshcluster.check.locale.launch_locale`): R starts with them. Without a
    container, R starts in ``workdir`` too, made and entered as the launch does; with
    ``classic`` (the classic launch, whose workers take both once started) R starts in the
    session's own environment and login directory, the host's lack of the locale
    reported all the same. A
    ``worker_output`` directory is tried as the workers try it, and with ``lease`` the
    host's lease as the launch takes it (and let go of at once). The packages step looks
    for the packages the registrations ``register`` load too.
    """
    whole = max(1, int(budget))
    needs = register_needs(register)
    if reference is None:
        wanted = tuple(dict.fromkeys((*r_packages, *needs)))
        environment, call = "", f"step_packages({r_vector(wanted)})"
        if needs:
            call += f"\nstep_loads({r_vector(needs)})"
    else:
        environment = _ENVIRONMENT_R.rstrip()
        names = tuple(dict.fromkeys((*reference.names, *reference.absent, *needs)))
        call = (f"step_environment({r_vector(names)}, {r_string(library_root)}, "
                f"{r_string(reference.digest)})")
        if needs:
            call = f"step_loads({r_vector(needs)}, {call})"
    r_code = (_R_CODE.replace("#@callback", _R_CALLBACK.rstrip(), 1)
              .replace("#@environment", environment, 1).replace("#@packages", call, 1)
              .replace("#@output", "" if worker_output in ("none", "console") else
                       f"step_worker_output({r_string(worker_output)})", 1))
    data = {
        "budget": str(whole),
        "primary": primary or "",
        "primary_user": primary_user,
        "primary_ssh_port": str(primary_ssh_port or ""),
        "connect_timeout": str(max(1, whole - 1)),
        "rscript": rscript or "",
        "r_code": r_code,
        "nonce": token,
        "port": str(int(port)),
        "callback_host": callback_host or "",
        "callback_timeout": str(callback_timeout(budget)),
        "engine": container.engine if container else "",
        "image": container.image if container else "",
        "pull": container.pull if container else "",
        "container_options": container.options_line if container else "",
        "workdir": workdir or "",
        "locale": " ".join(locale),
        "classic": "1" if classic else "",
        "lease": "1" if lease else "",
    }
    # Wrapped in { ... } </dev/null so that sh reads it whole from stdin before anything
    # runs: nothing started by it can eat the rest of the script.
    assignments = "".join(f"{name}={shell_quote(value)}\n" for name, value in data.items())
    return ("{\n" + assignments + (_CONTAINER_SH if container else "") + _HOST_SH + _SH
            + "} </dev/null\n")


def callback_timeout(budget: float) -> int:
    """Seconds R waits for the primary to accept its callback, out of ``budget``."""
    return max(1, int(budget) - 1)


# --------------------------------------------------------------------------- verdicts

#: What a step says when the deadline cut the script off before it answered.
LATE = "no answer before the deadline"


@dataclass(frozen=True)
class RemoteContext:
    """What the remote verdicts need besides the facts: the inventory's ``host``, the
    primary's own R version (None: no R on the primary), and whether the inventory
    says ``reverse_ssh: required``; and what the launch does on the host."""

    host: Host
    primary_r_version: str | None = None
    reverse_ssh_required: bool = False
    reference: Reference | None = None
    packages: Packages = field(default_factory=Packages)
    inventory_path: str | None = None
    #: The inventory's launch (the fast one's workers need R 4.1, the classic's do not),
    #: ``workdir``, ``worker_output`` and ``lease``.
    launch: str = "fast"
    workdir: str | None = None
    worker_output: str = "none"
    lease: bool = False
    #: The inventory's ``register:`` (the launch loads what each needs on every worker).
    register: tuple[str, ...] = ()


@dataclass(frozen=True)
class Found:
    """What the script found on the host: the core count, Rscript and its R version,
    and the primary's address as the host sees it."""

    ncore: int | None = None
    rscript: str | None = None
    r_version: str | None = None
    seen_primary: str | None = None


def found(facts: Facts) -> Found:
    """What the facts say about the host (None for what they do not say)."""
    seen = (facts.get(Fact.SSH_CONNECTION) or "").split()
    return Found(ncore=_ncore(facts), rscript=facts.get(Fact.RSCRIPT) or None,
                 r_version=facts.get(Fact.R_VERSION) or None,
                 seen_primary=r_address(seen[0]) if seen else None)


def rscript_step(facts: Facts, ctx: RemoteContext, complete: bool) -> StepResult:
    """``rscript``: found, started, and its R version (a warning when it is not the
    primary's). ``complete`` is False when the deadline cut the script off."""
    rscript = facts.get(Fact.RSCRIPT) or None
    r_version = facts.get(Fact.R_VERSION) or None
    lookup = facts.span(Fact.T_LOOKUP)
    if facts.get(Fact.RSCRIPT_ERR):
        return StepResult(
            "failed", facts.get(Fact.RSCRIPT_ERR) or "", lookup,
            hint=("set the host's 'rscript:' in the inventory to the full path of Rscript "
                  "there (run 'command -v Rscript' in a login shell on the host to find it)"),
        )
    if Fact.WORKDIR_ERR in facts:  # (R/workdir.sh: the launch fails there too)
        return StepResult(
            "failed", f"R not started: {'; '.join(facts.all(Fact.WORKDIR_ERR))}", lookup,
            hint=f"make 'workdir: {ctx.workdir}' possible for the login user on "
                 f"{ctx.host.label} (a directory it can create and enter), or set another "
                 "workdir: in the inventory: the launch makes it and starts the workers there",
            field="workdir")
    if r_version:
        secs = lookup + (facts.number(Fact.T_RSTART) or 0.0)
        detail = f"{rscript} (R {r_version})"
        if facts.get(Fact.R_TOO_OLD) and ctx.launch == "fast":  # (R/r_version.R)
            return StepResult(
                "failed", f"{detail}: {facts.get(Fact.R_TOO_OLD)}", secs,
                hint=f"set the host's 'rscript:' in the inventory to a newer R on "
                     f"{ctx.host.label} (or install one there); 'launch: classic' starts "
                     "R's own workers, which run on older R too")
        if ctx.primary_r_version and ctx.primary_r_version != r_version:
            return StepResult(
                "warning", f"{detail}; the primary has R {ctx.primary_r_version}", secs,
                hint="use the same R version everywhere: objects and packages built by one "
                     "R may not work in another",
            )
        # (the workers' locale: R started with what the launch hands the host)
        odd = locale_warning(facts.all(Fact.LOCALE), facts.other, ctx.host.label)
        if odd is not None:
            return StepResult("warning", f"{detail}; {odd.detail}", secs, hint=odd.hint)
        return StepResult("ok", detail, secs)
    if rscript and Fact.R_EXIT in facts:
        said = "; ".join(facts.other[-3:]) or f"exit status {facts.get(Fact.R_EXIT)}"
        return StepResult("failed", f"{rscript} did not run: {said}", lookup,
                          hint=locale_hint(ctx.host.label, [v.split()[1] for v in facts.all(
                              Fact.LOCALE)], ctx.launch) if r_locale_error(facts.other) else None)
    return StepResult("failed", LATE if not complete else (
        "the check script gave no answer: " + ("; ".join(facts.other[-3:]) or "nothing")))


def packages_step(facts: Facts, ctx: RemoteContext, complete: bool) -> StepResult:
    """``packages``: every ``r_packages:`` package is installed, and every package a
    ``register:`` entry loads is installed and loads (as the launch loads it)."""
    if Fact.R_MISSING not in facts:
        return StepResult("failed", LATE if not complete else r_died(facts))
    missing = [p for p in (facts.get(Fact.R_MISSING) or "").split(",") if p]
    secs = facts.number(Fact.T_PACKAGES) or 0.0
    broken = {p: why for p, _, why in (v.partition(" ") for v in facts.all(Fact.R_NOLOAD))
              if p not in missing}
    if ctx.reference is not None:
        lacking = tuple(p for p in (facts.get(Fact.ENV_LIB_MISSING) or "").split(",") if p)
        d = drift(ctx.reference, host_versions(facts.all(Fact.PKGV)), facts.get(Fact.ENV_R),
                  ctx.packages, lacking)
        verdict = drift_verdict(d, ctx.reference, ctx.host, ctx.packages,
                                library=facts.get(Fact.ENV_LIB) or None, seconds=secs,
                                inventory_path=ctx.inventory_path)
        listed = {*ctx.reference.names, *ctx.reference.absent}
        unlisted = [p for p in missing if p not in listed]
        if not unlisted and not broken:
            return verdict
        why = "; ".join(filter(None, [
            f"not installed: {', '.join(unlisted)} ({registered_without(unlisted, ctx.register)})"
            if unlisted else "", not_loading(broken, ctx.register)]))
        return StepResult("failed", "; ".join(
            [why, *([verdict.detail] if verdict.status != "ok" and verdict.detail else [])]),
            secs, hint=f"add {', '.join([*unlisted, *broken])} to r_packages (or the lockfile) "
                       f"and run 'sshcluster sync {ctx.inventory_path or 'INVENTORY'}', "
                       "or leave the registration out (register: in the inventory)")
    if missing or broken:
        said = registered_without(missing, ctx.register)
        names = [*missing, *broken]
        return StepResult("failed", "; ".join(filter(None, [
            f"not installed: {', '.join(missing)}" + (f" ({said})" if said else "")
            if missing else "", not_loading(broken, ctx.register)])), secs,
            hint=f"install them on {ctx.host.host} (install.packages({r_vector(names)}), "
                 "or the distribution's r-cran-* packages)")
    return StepResult("ok", "all present" if facts.get(Fact.R_MISSING) == "" else "", secs)


def cores_step(facts: Facts, ctx: RemoteContext, complete: bool) -> StepResult:
    """``cores``: the core count; a warning when the inventory declares more."""
    local = facts.span(Fact.T_LOCAL)
    ncore = _ncore(facts)
    if ncore is not None:
        host = ctx.host
        if host.ncore is not None and host.ncore > ncore:
            return StepResult(
                "warning", f"ncore: {host.ncore} declared, but the host has {ncore} cores",
                local, hint=f"set 'ncore: {ncore}' or 'ncore: auto' for {host.label}")
        return StepResult("ok", f"{ncore} cores", local)
    if Fact.NPROC in facts:
        return StepResult("failed", "cannot count the cores (no nproc, getconf or sysctl on "
                                    "the host)", local)
    return StepResult("failed", LATE if not complete else "no answer")


def load_step(facts: Facts, ctx: RemoteContext, complete: bool) -> StepResult:
    """``load``: load average and free memory; a warning when the host is busy."""
    secs = facts.span(Fact.T_LOCAL)
    ncore = _ncore(facts)
    load1: float | None = None
    la = facts.get(Fact.LOADAVG)
    if la:
        try:
            load1 = float(la.split()[0])
        except (ValueError, IndexError):
            load1 = None
    elif facts.get(Fact.UPTIME):
        m = re.search(r"load averages?:\s*([0-9.]+)", facts.get(Fact.UPTIME) or "")
        load1 = float(m.group(1)) if m else None
    total = facts.number(Fact.MEM_TOTAL_KB)
    avail = facts.number(Fact.MEM_AVAIL_KB)
    if load1 is None and avail is None:
        if Fact.T_LOCAL in facts:
            return StepResult("ok", "load and memory unknown on this system", secs)
        return StepResult("failed", LATE if not complete else "no answer")
    parts: list[str] = []
    warn: list[str] = []
    if load1 is not None:
        parts.append(f"load {load1:g}")
        if ncore and load1 >= ncore:
            warn.append(f"busy: load average {load1:g} on {ncore} cores")
    if avail is not None:
        mib = avail / 1024
        parts.append(f"{_mib(mib)} free" + (f" of {_mib(total / 1024)}" if total else ""))
        if mib < LOW_MEMORY_MIB or (total and avail < 0.05 * total):
            warn.append(f"low memory: {_mib(mib)} available")
    if warn:
        return StepResult("warning", "; ".join(warn), secs,
                          hint="the R workers will compete with what already runs there")
    return StepResult("ok", ", ".join(parts), secs)


def reverse_ssh_step(facts: Facts, ctx: RemoteContext, complete: bool) -> StepResult:
    """``reverse_ssh``: the worker logs in to the primary with ``ssh -o BatchMode=yes``.

    No launch needs that login (the workers reach the primary over TCP, or through the
    primary's own ssh -R), so a failure is a warning unless the inventory says
    ``reverse_ssh: required``; the detail says which."""
    v = facts.get(Fact.REVERSE)
    if v is None:
        return StepResult("failed" if ctx.reverse_ssh_required else "warning",
                          LATE if not complete else "no answer")
    rc = v.split()[0] if v.split() else ""
    secs = facts.span(Fact.REVERSE)
    target = facts.get(Fact.PRIMARY) or "the primary"
    need = ("required by the inventory (reverse_ssh: required)" if ctx.reverse_ssh_required
            else "the launch does not need it")
    if rc == "0":
        return StepResult("ok", f"ssh back to {target} works ({need})", secs)
    errors = [e for e in facts.all(Fact.REVERSE_ERR) if e]
    said = "; ".join(errors[-2:]) or f"ssh exit status {rc}"
    if rc == "124":
        said = "ssh back to the primary did not finish before the deadline"
    return StepResult("failed" if ctx.reverse_ssh_required else "warning",
                      f"ssh back to {target}: {said} ({need})", secs,
                      hint=_reverse_hint(rc, " ".join(errors).lower(), ctx.host.label, target))


def _reverse_hint(rc: str, text: str, label: str, target: str) -> str:
    if "permission denied" in text:
        return (f"add a public key of {label}'s user to ~/.ssh/authorized_keys of the "
                "primary's user (primary.user in the inventory)")
    if "host key verification failed" in text:
        return (f"on {label}, run 'ssh {target} true' once to record the primary's host key "
                "(or add it to that host's known_hosts)")
    if "refused" in text or "timed out" in text or "no route" in text:
        return ("is sshd running on the primary and reachable from the worker? "
                "(primary.ssh_port sets a port other than 22)")
    if "could not resolve" in text or "name or service" in text:
        return "set primary.host to an address the workers can resolve"
    if rc == "124":
        return "a firewall may drop the worker's ssh to the primary"
    if rc == "127" or "not found" in text:
        return "install an ssh client on the worker"
    return f"try it by hand on {label}: ssh -o BatchMode=yes {target} true"


#: The remote steps that the script's facts alone decide (``callback`` also needs the
#: primary's side: see :mod:`sshcluster.check.callback`).
VERDICTS: dict[str, Callable[[Facts, RemoteContext, bool], StepResult]] = {
    "rscript": rscript_step,
    "packages": packages_step,
    "cores": cores_step,
    "load": load_step,
    "reverse_ssh": reverse_ssh_step,
}


def _ncore(facts: Facts) -> int | None:
    try:
        n = int(facts.get(Fact.NPROC) or "")
    except ValueError:
        return None
    return n if n > 0 else None


def _mib(mib: float) -> str:
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


__all__ = [
    "LATE",
    "LOW_MEMORY_MIB",
    "REMOTE_STEPS",
    "VERDICTS",
    "Facts",
    "Found",
    "RemoteContext",
    "callback_timeout",
    "cores_step",
    "found",
    "load_step",
    "packages_step",
    "parse_facts",
    "remote_script",
    "reverse_ssh_step",
    "rscript_step",
]
