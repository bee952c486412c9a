"""What runs on a worker during the preflight check, and what its answer means.

The check runs ONE remote command per host: a POSIX ``sh`` script (:func:`remote_script`)
that finds Rscript, starts it once (base package only, so R starts in a few
milliseconds) to report the R version, look for the R packages and make the callback
to the primary with R's own ``socketConnection``, while it also reads the core count,
load and memory and, in the background, ssh-es back to the primary. Every result comes
back as one ``KEY=value`` line; :func:`parse_facts` collects them and
:func:`remote_steps` turns them into step verdicts. Both are pure functions, tested
without any host.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sshcluster.inventory import Host
from sshcluster.quoting import r_string, r_vector, shell_quote
from sshcluster.report import SKIPPED, StepResult

#: Steps answered by the remote script, in report order.
REMOTE_STEPS = ("rscript", "packages", "cores", "load", "reverse_ssh", "callback")

#: A host whose available memory is below this many MiB (or below 5 % of its
#: total) gets a warning.
LOW_MEMORY_MIB = 256

# The R part. Arguments: primary address, callback port (0: do not call back), connect
# timeout in seconds. Every value that is not an argument is put in with r_string.
_R_CODE = """\
a <- commandArgs(TRUE)
cat("R_VERSION=", as.character(getRversion()), "\\nT_RSTART=", proc.time()[["elapsed"]],
    "\\n", sep = "")
t0 <- Sys.time()
pk <- {packages}
found <- basename(find.package(pk, quiet = TRUE))
cat("R_MISSING=", paste(setdiff(pk, found), collapse = ","), "\\nT_PACKAGES=",
    as.numeric(Sys.time() - t0, units = "secs"), "\\n", sep = "")
if (a[2] != "0") {{
  t0 <- Sys.time()
  r <- tryCatch({{
    con <- socketConnection(a[1], as.integer(a[2]), open = "a+b", blocking = TRUE,
                            timeout = as.numeric(a[3]))
    writeLines({token}, con)
    flush(con)
    x <- readLines(con, n = 1L)
    close(con)
    if (identical(x, "ok")) "ok" else paste("the primary answered:",
                                           if (length(x)) x else "nothing")
  }}, error = function(e) conditionMessage(e), warning = function(w) conditionMessage(w))
  cat("CALLBACK=", gsub("[\\r\\n]+", " ", r), "\\nT_CALLBACK=",
      as.numeric(Sys.time() - t0, units = "secs"), "\\n", sep = "")
}}
"""

# The shell part. Wrapped in { ... } </dev/null so that sh reads it whole from stdin
# before anything runs: nothing started by it can eat the rest of the script.
_SH = """\
{{
tick() {{ _t=0; read -r _t _x </proc/uptime 2>/dev/null; }}
say() {{ printf '%s\\n' "$1"; }}
budget={budget}
to=
command -v timeout >/dev/null 2>&1 && to="timeout $budget"
say "SSH_CONNECTION=$SSH_CONNECTION"
set -- $SSH_CONNECTION
primary={primary}
[ -n "$primary" ] || primary=${{1:-}}
say "PRIMARY=$primary"
(
  tick; a=$_t; n=0; rc=; kex="-o KexAlgorithms=^curve25519-sha256"
  if [ -z "$primary" ]; then
    err="no SSH_CONNECTION on this host, so the primary's address is unknown"; rc=skip
  else
    while :; do
      # A subsystem nobody has: sshd refuses it right after the login succeeded, so
      # this proves host key, non-interactive auth and a session channel without
      # starting the primary user's shell (and its rc files) at all.
      err=$($to ssh -o BatchMode=yes -o ConnectTimeout={connect_timeout} $kex {ssh_args} \
-s -- "$primary" sshcluster-check 2>&1 </dev/null)
      rc=$?
      case "$rc:$err" in
        255:*"subsystem request failed"*) rc=0; err=;;
        # sshd drops connections beyond MaxStartups while many workers log in at once
        255:*kex_exchange_identification*|255:*"closed by remote host"*|\
255:*"reset by peer"*)
          # (default MaxStartups 10:30:100): back off a little, with jitter, and retry
          n=$((n+1))
          if [ $n -lt 6 ]; then
            sleep "0.$(( ($$ + n * 7) % 9 + 1 ))" 2>/dev/null || sleep 1; continue
          fi;;
        # an ssh too old for "^" in KexAlgorithms: its own defaults then
        255:*KexAlgorithms*) if [ -n "$kex" ]; then kex=; continue; fi;;
      esac
      break
    done
  fi
  tick
  printf '%s\\n' "$err" | while IFS= read -r l; do [ -n "$l" ] && say "REVERSE_ERR=$l"; done
  say "REVERSE=$rc $a $_t"
) &
tick; a=$_t
n=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null)
say "NPROC=$n"
if [ -r /proc/loadavg ]; then
  read -r l1 l5 l15 _x </proc/loadavg; say "LOADAVG=$l1 $l5 $l15"
else
  say "UPTIME=$(uptime 2>/dev/null)"
fi
if [ -r /proc/meminfo ]; then
  while read -r k v _x; do
    case $k in MemTotal:) say "MEM_TOTAL_KB=$v";; MemAvailable:) say "MEM_AVAIL_KB=$v";; esac
  done </proc/meminfo
fi
tick; say "T_LOCAL=$a $_t"
a=$_t
rs={rscript}
if [ -n "$rs" ]; then
  case $rs in
    /*) if [ ! -f "$rs" ] || [ ! -x "$rs" ]; then
          say "RSCRIPT_ERR=no executable file $rs"; rs=
        fi;;
    *) r2=$(command -v -- "$rs" 2>/dev/null) || r2=
       [ -n "$r2" ] || say "RSCRIPT_ERR=$rs is not on the PATH of a non-interactive shell: $PATH"
       rs=$r2;;
  esac
else
  rs=$(command -v Rscript 2>/dev/null) || rs=
  [ -n "$rs" ] || say "RSCRIPT_ERR=Rscript is not on the PATH of a non-interactive shell: $PATH"
fi
say "RSCRIPT=$rs"
tick; say "T_LOOKUP=$a $_t"
if [ -n "$rs" ]; then
  # Through a line reader: the background ssh above writes to the same stdout, and
  # only whole-line writes keep the two from mixing inside a line.
  {{ $to "$rs" --default-packages=NULL -e {r_code} {callback_host} {port} {callback_timeout} 2>&1
    say "R_EXIT=$?"; }} | while IFS= read -r l; do say "$l"; done
fi
wait
say "DONE=1"
}} </dev/null
"""


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
) -> str:
    """Return the script that ``sh -s`` runs on a worker (sent on its stdin).

    ``primary`` is the address to call back (None: the client address of the worker's
    ``SSH_CONNECTION``); ``port`` the callback port (0: do not call back); ``token`` the
    nonce to send; ``budget`` how many seconds the remote commands may take;
    ``callback_host`` where R calls back when that is not the primary's address (the
    host's own 127.0.0.1, at the end of a reverse tunnel).
    """
    whole = max(1, int(budget))
    r_code = _R_CODE.format(packages=r_vector(r_packages), token=r_string(token))
    ssh_args = ["-l", primary_user]
    if primary_ssh_port:
        ssh_args += ["-p", str(primary_ssh_port)]
    return _SH.format(
        budget=whole,
        primary=shell_quote(primary or ""),
        connect_timeout=max(1, whole - 1),
        ssh_args=" ".join(shell_quote(a) for a in ssh_args),
        rscript=shell_quote(rscript or ""),
        r_code=shell_quote(r_code),
        port=int(port),
        callback_timeout=max(1, whole - 1),
        callback_host=shell_quote(callback_host) if callback_host else '"$primary"',
    )


# --------------------------------------------------------------------------- facts

_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")


@dataclass
class Facts:
    """What the remote script reported so far: ``KEY=value`` lines, and any other lines
    (error messages from R or the shell) in ``other``."""

    values: dict[str, list[str]] = field(default_factory=dict)
    other: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        """Record one output line."""
        line = line.rstrip("\r\n")
        m = _LINE.match(line)
        if m:
            self.values.setdefault(m.group(1), []).append(m.group(2))
        elif line.strip():
            self.other.append(line)

    def get(self, key: str) -> str | None:
        """The last value reported for ``key``, or None."""
        v = self.values.get(key)
        return v[-1] if v else None

    def all(self, key: str) -> list[str]:
        """Every value reported for ``key``."""
        return self.values.get(key, [])

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def number(self, key: str) -> float | None:
        """The value of ``key`` as a number, or None."""
        v = self.get(key)
        try:
            return float(v) if v is not None else None
        except ValueError:
            return None

    def span(self, key: str) -> float:
        """Seconds between the two uptime stamps of ``key`` (``"start end"``), or 0."""
        v = self.get(key)
        if not v:
            return 0.0
        parts = v.split()
        try:
            return max(0.0, float(parts[-1]) - float(parts[-2]))
        except (ValueError, IndexError):
            return 0.0


def parse_facts(lines: Iterable[str]) -> Facts:
    """Collect the remote script's output lines."""
    facts = Facts()
    for line in lines:
        facts.add(line)
    return facts


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class RemoteOutcome:
    """The verdicts of the remote steps plus what was found on the host."""

    steps: dict[str, StepResult]
    ncore: int | None = None
    rscript: str | None = None
    r_version: str | None = None
    seen_primary: str | None = None


def remote_steps(
    host: Host,
    facts: Facts,
    *,
    complete: bool,
    primary_r_version: str | None = None,
    callback_timeout: float = 0.0,
    callback_error: str | None = None,
    primary_label: str = "the primary",
    port: int = 0,
    tunnel: bool = False,
) -> RemoteOutcome:
    """Turn the remote script's facts into verdicts for steps 5-10.

    ``complete`` is False when the deadline cut the script off: a step with no answer
    then failed by timing out. ``callback_error`` is set when the primary could not
    listen on the callback port at all (or, with ``tunnel``, the host could not listen on
    the reverse-forwarded port).
    """
    late = "no answer before the deadline"
    steps: dict[str, StepResult] = {}
    seen = (facts.get("SSH_CONNECTION") or "").split()
    seen_primary = seen[0] if seen else None
    primary_addr = facts.get("PRIMARY") or primary_label

    # rscript
    rscript = facts.get("RSCRIPT") or None
    r_version = facts.get("R_VERSION") or None
    lookup = facts.span("T_LOOKUP")
    rstart = facts.number("T_RSTART") or 0.0
    r_ok = False
    if facts.get("RSCRIPT_ERR"):
        steps["rscript"] = StepResult(
            "failed", facts.get("RSCRIPT_ERR") or "", lookup,
            hint=("set the host's 'rscript:' in the inventory to the full path of Rscript "
                  "there (run 'command -v Rscript' in a login shell on the host to find it)"),
        )
    elif r_version:
        r_ok = True
        detail = f"{rscript} (R {r_version})"
        if primary_r_version and primary_r_version != r_version:
            steps["rscript"] = StepResult(
                "warning", f"{detail}; the primary has R {primary_r_version}",
                lookup + rstart,
                hint="use the same R version everywhere: objects and packages built by one "
                     "R may not work in another",
            )
        else:
            steps["rscript"] = StepResult("ok", detail, lookup + rstart)
    elif rscript and "R_EXIT" in facts:
        said = "; ".join(facts.other[-3:]) or f"exit status {facts.get('R_EXIT')}"
        steps["rscript"] = StepResult("failed", f"{rscript} did not run: {said}", lookup)
    else:
        steps["rscript"] = StepResult("failed", late if not complete else (
            "the check script gave no answer: " + ("; ".join(facts.other[-3:]) or "nothing")))

    # packages
    if not r_ok:
        steps["packages"] = SKIPPED
    elif "R_MISSING" in facts:
        missing = [p for p in (facts.get("R_MISSING") or "").split(",") if p]
        secs = facts.number("T_PACKAGES") or 0.0
        if missing:
            steps["packages"] = StepResult(
                "failed", f"not installed: {', '.join(missing)}", secs,
                hint=f"install them on {host.host} (install.packages({_r_list(missing)}), "
                     "or the distribution's r-cran-* packages)",
            )
        else:
            steps["packages"] = StepResult("ok", "all present" if facts.get("R_MISSING") == ""
                                           else "", secs)
    else:
        steps["packages"] = StepResult("failed", late if not complete else _r_died(facts))

    # cores
    ncore: int | None = None
    local = facts.span("T_LOCAL")
    try:
        ncore = int(facts.get("NPROC") or "")
    except ValueError:
        ncore = None
    if ncore is not None and ncore > 0:
        if host.ncore is not None and host.ncore > ncore:
            steps["cores"] = StepResult(
                "warning", f"ncore: {host.ncore} declared, but the host has {ncore} cores",
                local, hint=f"set 'ncore: {ncore}' or 'ncore: auto' for {host.label}")
        else:
            steps["cores"] = StepResult("ok", f"{ncore} cores", local)
    elif "NPROC" in facts:
        steps["cores"] = StepResult("failed", "cannot count the cores (no nproc, getconf or "
                                    "sysctl on the host)", local)
    else:
        steps["cores"] = StepResult("failed", late if not complete else "no answer")
        ncore = None

    # load
    steps["load"] = _load_step(facts, ncore, local, late, complete)

    # reverse_ssh
    steps["reverse_ssh"] = _reverse_step(facts, host, late, complete)

    # callback
    target = f"127.0.0.1:{port} (the reverse tunnel)" if tunnel else f"{primary_addr}:{port}"
    if callback_error:
        steps["callback"] = StepResult(
            "failed", callback_error,
            hint=("choose another 'port:' in the inventory" if not tunnel else
                  "choose another 'port:' in the inventory (a port taken on a host cannot "
                  "be forwarded), and check that sshd there allows it "
                  "(AllowTcpForwarding yes)"))
    elif not r_ok:
        steps["callback"] = SKIPPED
    elif "CALLBACK" in facts:
        answer = facts.get("CALLBACK") or ""
        secs = facts.number("T_CALLBACK") or 0.0
        if answer == "ok":
            steps["callback"] = StepResult("ok", f"R reached {target}, nonce checked", secs)
        else:
            if callback_timeout and secs >= callback_timeout - 0.5:
                why = (f"no answer from {target} within {secs:.0f} s (packets dropped by a "
                       "firewall, or a wrong primary address)")
            elif "cannot be opened" in answer and secs < 1.0:
                why = (f"connection to {target} refused or unreachable ({answer}): a "
                       "firewall rejects it, or the address is not the primary's")
            else:
                why = f"R could not talk to {target}: {answer}"
            steps["callback"] = StepResult(
                "failed", why, secs,
                hint=("ssh works, so launching with '--tunnel reverse' carries R's "
                      "connection through the ssh session; or open the port on the "
                      "primary's firewall, or set primary.host to an address the workers "
                      "can reach") if not tunnel else
                     "the forward is up but R's connection through it failed: see sshd's "
                     "log on the host",
            )
    else:
        steps["callback"] = StepResult("failed", late if not complete else _r_died(facts))

    return RemoteOutcome(steps=steps, ncore=ncore, rscript=rscript, r_version=r_version,
                         seen_primary=seen_primary)


def _r_list(names: Sequence[str]) -> str:
    return r_vector(names)


def _r_died(facts: Facts) -> str:
    said = "; ".join(facts.other[-3:])
    return f"R stopped early (exit status {facts.get('R_EXIT')}){': ' + said if said else ''}"


def _load_step(facts: Facts, ncore: int | None, secs: float, late: str,
               complete: bool) -> StepResult:
    load1: float | None = None
    la = facts.get("LOADAVG")
    if la:
        try:
            load1 = float(la.split()[0])
        except (ValueError, IndexError):
            load1 = None
    elif facts.get("UPTIME"):
        m = re.search(r"load averages?:\s*([0-9.]+)", facts.get("UPTIME") or "")
        load1 = float(m.group(1)) if m else None
    total = facts.number("MEM_TOTAL_KB")
    avail = facts.number("MEM_AVAIL_KB")
    if load1 is None and avail is None:
        if "T_LOCAL" in facts:
            return StepResult("ok", "load and memory unknown on this system", secs)
        return StepResult("failed", late if not complete else "no answer")
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


def _mib(mib: float) -> str:
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def _reverse_step(facts: Facts, host: Host, late: str, complete: bool) -> StepResult:
    v = facts.get("REVERSE")
    if v is None:
        return StepResult("failed", late if not complete else "no answer")
    rc = v.split()[0] if v.split() else ""
    secs = facts.span("REVERSE")
    target = facts.get("PRIMARY") or "the primary"
    errors = [e for e in facts.all("REVERSE_ERR") if e]
    if rc == "0":
        return StepResult("ok", f"ssh back to {target} works", secs)
    said = "; ".join(errors[-2:]) or f"ssh exit status {rc}"
    text = " ".join(errors).lower()
    if "permission denied" in text:
        hint = (f"add a public key of {host.label}'s user to ~/.ssh/authorized_keys of the "
                "primary's user (primary.user in the inventory)")
    elif "host key verification failed" in text:
        hint = (f"on {host.label}, run 'ssh {target} true' once to record the primary's host "
                "key (or add it to that host's known_hosts)")
    elif "refused" in text or "timed out" in text or "no route" in text:
        hint = ("is sshd running on the primary and reachable from the worker? "
                "(primary.ssh_port sets a port other than 22)")
    elif "could not resolve" in text or "name or service" in text:
        hint = "set primary.host to an address the workers can resolve"
    elif rc == "124":
        said = "ssh back to the primary did not finish before the deadline"
        hint = "a firewall may drop the worker's ssh to the primary"
    elif rc == "127" or "not found" in text:
        hint = "install an ssh client on the worker"
    else:
        hint = f"try it by hand on {host.label}: ssh -o BatchMode=yes {target} true"
    return StepResult("failed", f"ssh back to {target}: {said}", secs, hint=hint)


__all__ = [
    "LOW_MEMORY_MIB",
    "REMOTE_STEPS",
    "Facts",
    "RemoteOutcome",
    "parse_facts",
    "remote_script",
    "remote_steps",
]
