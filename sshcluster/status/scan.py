"""Listing and sorting sshcluster's processes on the hosts and on this machine."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from sshcluster.commands import run_command
from sshcluster.inventory import Host, Inventory
from sshcluster.ssh.command import ssh_command

#: What each host runs: the login user's processes, one ``PID PPID COMMAND`` line each,
#: and when each started (``start PID STAMP``: ps's lstart, its words joined by ``_``);
#: with $1 set (``PID@STAMP`` words), those are ended first (TERM, a second, then KILL),
#: each only while the process of that pid is still the one that started then (a pid the
#: kernel gave to another process since the look is left alone).
#: Only processes in this session's network namespace count (``net PID`` lines): on a
#: host that is all of the user's, but hosts that share one kernel (containers, test
#: hosts) see each other's.
#: This user's containers of the launch (labels ``sshcluster=worker`` and
#: ``sshcluster.user=UID``: a docker daemon shows every user's): ``container ENGINE NAME``
#: lines; with $2 set (``ENGINE:NAME`` words), those are removed first.
REMOTE = (
    'st() { set -- $(LC_ALL=C ps -o lstart= -p "$1" 2>/dev/null); '
    '[ $# -eq 5 ] && echo "$1_$2_$3_$4_$5"; }; '
    'if [ -n "$1" ]; then for s in TERM KILL; do for w in $1; do p=${w%%@*}; '
    '[ "$(st "$p")" = "${w#*@}" ] && kill -$s "$p" 2>/dev/null; done; '
    '[ $s = KILL ] || sleep 1; done; fi; '
    'for c in $2; do "${c%%:*}" rm -f "${c#*:}" >/dev/null 2>&1; done; '
    'for e in podman docker; do command -v $e >/dev/null 2>&1 && '
    '$e ps -a --filter label=sshcluster=worker --filter label=sshcluster.user=$(id -u) '
    '--format "{{.Names}}" 2>/dev/null '
    '| while read -r n; do echo "container $e $n"; done; done; '
    'LC_ALL=C ps -u "$(id -u)" -o pid= -o lstart= 2>/dev/null | '
    'while read -r p a b c d e; do echo "start $p ${a}_${b}_${c}_${d}_${e}"; done; '
    'echo "self $$"; net=$(readlink /proc/$$/ns/net 2>/dev/null); '
    'if [ -n "$net" ]; then for d in /proc/[0-9]*; do '
    '[ "$(readlink $d/ns/net 2>/dev/null)" = "$net" ] && echo "net ${d#/proc/}"; done; fi; '
    'exec ps -ww -u "$(id -u)" -o pid= -o ppid= -o args='
)
#: The word every launch script and worker of ours carries on its command line (the
#: script's $0; the workers' R code names it in its messages).
MARK = "sshcluster"
#: Seconds one host may take to answer.
STATUS_TIMEOUT = 30.0


@dataclass(frozen=True)
class Process:
    """One process: its pid, its parent's and its command line."""

    pid: int
    ppid: int
    command: str

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "ppid": self.ppid, "command": self.command}


@dataclass(frozen=True)
class HostStatus:
    """One host (or this machine): its live sessions with their workers, the strays,
    the strays ended, or why it could not be looked at (``error``)."""

    label: str
    sessions: tuple[Process, ...] = ()
    workers: tuple[Process, ...] = ()
    strays: tuple[Process, ...] = ()
    killed: tuple[int, ...] = ()
    error: str | None = None
    containers: tuple[str, ...] = ()
    stray_containers: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def summary(self) -> str:
        if self.error:
            return f"{self.label}: not looked at: {self.error}"
        parts = [f"{len(self.sessions)} live session{'s' * (len(self.sessions) != 1)}",
                 f"{len(self.workers)} worker process{'es' * (len(self.workers) != 1)}",
                 f"{len(self.strays)} stray{'s' * (len(self.strays) != 1)}"]
        if self.containers or self.stray_containers:
            parts.append(f"{len(self.containers)} live container"
                         f"{'s' * (len(self.containers) != 1)}, "
                         f"{len(self.stray_containers)} stray")
        if self.killed or self.removed:
            parts.append(f"{len(self.killed) + len(self.removed)} ended")
        return f"{self.label}: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.label, "error": self.error,
                "sessions": [p.to_dict() for p in self.sessions],
                "workers": [p.to_dict() for p in self.workers],
                "strays": [p.to_dict() for p in self.strays], "killed": list(self.killed),
                "containers": list(self.containers),
                "stray_containers": list(self.stray_containers), "removed": list(self.removed)}


@dataclass(frozen=True)
class StatusReport:
    """Every host's status, and this machine's (the supervisors)."""

    hosts: tuple[HostStatus, ...]
    primary: HostStatus = field(default_factory=lambda: HostStatus("this machine"))

    @property
    def strays(self) -> int:
        """Stray processes and containers on the hosts."""
        return sum(len(h.strays) + len(h.stray_containers) for h in self.hosts)

    @property
    def ok(self) -> bool:
        """True when every host answered and nothing is stray on them (a supervisor whose
        R session is gone ends by itself within seconds)."""
        return not any(h.strays or h.stray_containers or h.error for h in self.hosts)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "strays": self.strays, "primary": self.primary.to_dict(),
                "hosts": [h.to_dict() for h in self.hosts]}


def parse_containers(text: str) -> list[tuple[str, str]]:
    """The ``container ENGINE NAME`` lines: (engine, name) each."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "container":
            out.append((words[1], words[2]))
    return out


def parse_starts(text: str) -> dict[int, str]:
    """When each process started, from REMOTE's ``start PID STAMP`` lines."""
    starts = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "start" and words[1].isdigit():
            starts[int(words[1])] = words[2]
    return starts


def parse_ps(text: str) -> list[Process]:
    """``ps -o pid= -o ppid= -o args=`` lines as processes, without the listing itself
    and the processes it runs under (its ssh session: the line ``self PID`` names it)."""
    out = []
    me = None
    net: set[int] = set()
    for line in text.splitlines():
        words = line.split(None, 2)
        if len(words) == 2 and words[0] == "self" and words[1].isdigit():
            me = int(words[1])
        elif len(words) == 2 and words[0] == "net" and words[1].isdigit():
            net.add(int(words[1]))
        elif words and words[0] in ("container", "start"):
            continue
        elif len(words) >= 2 and words[0].isdigit() and words[1].isdigit():
            out.append(Process(int(words[0]), int(words[1]), words[2] if len(words) > 2 else ""))
        elif out:  # a command line with a newline in it (ps prints it as it is)
            last = out[-1]
            out[-1] = Process(last.pid, last.ppid, f"{last.command} {line.strip()}")
    parents = {p.pid: p.ppid for p in out}
    mine = set()
    while me is not None and me not in mine:
        mine.add(me)
        me = parents.get(me)
    return [p for p in out if p.pid not in mine
            and (not net or p.pid in net)]


#: What an sshd session process calls itself (OpenSSH 9.8 and later: sshd-session).
SSHD_SESSION = ("sshd:", "sshd-session:")
#: The processes a container engine runs a container's processes under: what runs in a
#: launch's container is the container's, live while a live session names it.
ENGINE_PARENTS = ("conmon", "containerd-shim", "containerd-shim-runc-v2")


def _words(p: Process) -> list[str]:
    return p.command.split()


def _is_session_script(p: Process) -> bool:
    """A host's launch script: ``sh -c SCRIPT sshcluster RSCRIPT MASTER PORT ...``."""
    words = _words(p)
    return len(words) > 2 and words[0].rsplit("/", 1)[-1] in ("sh", "dash", "bash") \
        and words[1] == "-c" and f" {MARK} " in f" {p.command} " \
        and "supervisor.sh" not in p.command


def _is_ours(p: Process) -> bool:
    """One of the shapes a launch starts on a host, and nothing else of the user's that
    merely names sshcluster (an ssh client, a supervisor, an editor): its script, the
    script's watchdog (``bash --norc --noprofile -c ... sshcluster SILENCE PID``) and the
    R workers (R running the worker code, which holds the hello's magic)."""
    words = _words(p)
    if not words:
        return False
    name = words[0].rsplit("/", 1)[-1]
    if _is_session_script(p):
        return True
    if name == "bash" and words[1:3] == ["--norc", "--noprofile"] and \
            f" {MARK} " in f" {p.command} ":
        return True
    return name in ("R", "Rscript") and "PROOF_MAGIC" in p.command


def classify(processes: Iterable[Process], alive: set[int] | None = None
             ) -> tuple[list[Process], list[Process], list[Process]]:
    """Sort a host's processes into live sessions, their workers and strays. A session
    is live while its parent is an sshd session process; ``alive`` (all pids of the
    host, default: those listed) tells which parents exist. What runs under a container
    engine is left to the containers' own count."""
    procs = {p.pid: p for p in processes}
    pids = alive if alive is not None else set(procs)
    scripts = [p for p in procs.values() if _is_session_script(p)]
    live = [p for p in scripts if p.ppid in procs and p.ppid in pids
            and procs[p.ppid].command.startswith(SSHD_SESSION)]
    live_ids = {p.pid for p in live}

    def ancestors(p: Process) -> Iterator[Process]:
        seen = set()
        while p.ppid in procs and p.pid not in seen:
            seen.add(p.pid)
            p = procs[p.ppid]
            yield p

    def under_live(p: Process) -> bool:
        return any(a.pid in live_ids for a in ancestors(p))

    def in_container(p: Process) -> bool:
        return any(_words(a) and _words(a)[0].rsplit("/", 1)[-1] in ENGINE_PARENTS
                   for a in ancestors(p))

    ours = [p for p in procs.values()
            if _is_ours(p) and p.pid not in live_ids and not in_container(p)]
    workers = [p for p in ours if under_live(p)]
    strays = [p for p in ours if not under_live(p)]
    # (and whatever a stray started, whatever it runs: it goes with the stray)
    stray_ids = {p.pid for p in strays}
    strays += [p for p in procs.values() if p.pid not in stray_ids
               and any(a.pid in stray_ids for a in ancestors(p))]
    return live, workers, sorted(strays, key=lambda p: p.pid)


def _sorted(label: str, text: str, **done: Any) -> HostStatus:
    """A host's status from what REMOTE printed: a container is live while a live
    session names it (SSHCLUSTER_CONTAINER_NAME=... on its command line)."""
    live, workers, strays = classify(parse_ps(text))
    # (whole words: session 1's name is the start of session 12's)
    named = {word for p in live for word in p.command.split()
             if word.startswith("SSHCLUSTER_CONTAINER_NAME=")}
    boxes = parse_containers(text)
    return HostStatus(label, tuple(live), tuple(workers), tuple(strays),
                      containers=tuple(n for _, n in boxes
                                       if f"SSHCLUSTER_CONTAINER_NAME={n}" in named),
                      stray_containers=tuple(f"{e}:{n}" for e, n in boxes
                                             if f"SSHCLUSTER_CONTAINER_NAME={n}" not in named),
                      **done)


async def _host(inventory: Inventory, host: Host, kill: bool, timeout: float) -> HostStatus:
    argv = [*ssh_command(inventory, host), *(["-l", host.user] if host.user else []), "--",
            host.host]
    try:
        first = await run_command([*argv, f"sh -c '{REMOTE}' sc-status"], timeout)
        if first.returncode != 0:
            return HostStatus(host.label, error=first.stderr.decode(errors="replace").strip()
                              or f"ssh exited with status {first.returncode}")
        seen = _sorted(host.label, first.stdout.decode(errors="replace"))
        if not (kill and (seen.strays or seen.stray_containers)):
            return seen
        starts = parse_starts(first.stdout.decode(errors="replace"))
        pids = " ".join(f"{p.pid}@{starts[p.pid]}" for p in seen.strays if p.pid in starts)
        boxes = " ".join(seen.stray_containers)
        again = await run_command([*argv, f"sh -c '{REMOTE}' sc-status '{pids}' '{boxes}'"],
                                  timeout)
        after = _sorted(host.label, again.stdout.decode(errors="replace"))
        left = {p.pid for p in after.strays}
        return replace(after, killed=tuple(p.pid for p in seen.strays if p.pid not in left),
                       removed=tuple(c for c in seen.stray_containers
                                     if c not in after.stray_containers))
    except (OSError, asyncio.TimeoutError) as e:
        return HostStatus(host.label, error=str(e) or "no answer in time")


def _supervisors() -> HostStatus:
    """This machine's supervisors (``sh supervisor.sh DIR HEARTBEAT RPID``): live while
    their R session is; strays are left as they are (they end by themselves)."""
    live: list[Process] = []
    strays: list[Process] = []
    me = os.getuid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != me:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                words = f.read().decode(errors="replace").split("\0")
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if len(words) > 4 and words[1].endswith("supervisor.sh") and words[4].isdigit():
            p = Process(int(entry), ppid, " ".join(w for w in words if w))
            (live if os.path.exists(f"/proc/{words[4]}") else strays).append(p)
    return HostStatus("this machine", tuple(live), (), tuple(strays))


async def status_async(inventory: Inventory, *, kill_strays: bool = False,
                       timeout: float = STATUS_TIMEOUT) -> StatusReport:
    """Every host's status at once, and this machine's supervisors."""
    hosts = await asyncio.gather(*(_host(inventory, h, kill_strays, timeout)
                                   for h in inventory.hosts))
    return StatusReport(tuple(hosts), _supervisors())


def status(inventory: Inventory, *, kill_strays: bool = False,
           timeout: float = STATUS_TIMEOUT) -> StatusReport:
    """:func:`status_async` from plain code."""
    return asyncio.run(status_async(inventory, kill_strays=kill_strays, timeout=timeout))


__all__ = ["MARK", "REMOTE", "STATUS_TIMEOUT", "HostStatus", "Process", "StatusReport",
           "classify", "parse_containers", "parse_ps", "parse_starts", "status", "status_async"]
