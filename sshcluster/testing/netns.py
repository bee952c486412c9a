"""Network namespaces, the links between them, and the processes in them.

The low-level half of a :class:`~sshcluster.testing.Testbed`: running ``ip`` and
friends, building a bridge with one veth and namespace per host and deleting them again,
and finding and killing processes through ``/proc`` (the processes of a set of
namespaces, a process tree, the sshd servers started from a directory's files).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from pathlib import Path

from sshcluster.errors import TestbedError
from sshcluster.testing.hosts import TestHost

__all__ = [
    "alive",
    "cmdline",
    "delete_network",
    "descendants",
    "kill_processes",
    "link_names",
    "make_network",
    "netns_names",
    "parent_pid",
    "pids_in_netns",
    "proc_start_time",
    "process_name",
    "run_command",
    "sshd_pids_using",
]


def run_command(
    argv: Sequence[str],
    *,
    input: str | None = None,
    timeout: float = 30,
    check: bool = True,
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise a TestbedError that shows its stderr."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as e:
        raise TestbedError(f"{what or argv[0]}: {argv[0]} not found") from e
    except subprocess.TimeoutExpired as e:
        raise TestbedError(f"{what or ' '.join(argv)}: no answer within {timeout:g} s") from e
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise TestbedError(
            f"{what or ' '.join(argv)} failed (exit {proc.returncode})"
            + (f": {detail}" if detail else "")
        )
    return proc


# -------------------------------------------------------------------------- processes


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the name (state first), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after its closing paren.
    return stat[stat.rindex(")") + 2 :].split()


def proc_start_time(pid: int) -> int | None:
    """The start time of a process in clock ticks since boot, or None if it is gone.

    A pid together with its start time names a process even after the pid is reused.
    """
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None
    return int(fields[19])


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie, which PID 1 here may never reap, does not)."""
    return proc_start_time(pid) is not None


def parent_pid(pid: int) -> int | None:
    """The parent of process ``pid``, or None if it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` in the process tree (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            parent = parent_pid(int(entry.name))  # None: gone meanwhile
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _netns_ids(names: Iterable[str]) -> dict[tuple[int, int], str]:
    ids: dict[tuple[int, int], str] = {}
    for name in names:
        try:
            st = os.stat(f"/run/netns/{name}")
        except OSError:
            continue
        ids[(st.st_dev, st.st_ino)] = name
    return ids


def pids_in_netns(names: Iterable[str]) -> dict[str, list[int]]:
    """Every live process in each named network namespace (one pass over /proc).

    Same test as ``ip netns pids``, done once for all namespaces instead of once each.
    """
    ids = _netns_ids(names)
    found: dict[str, list[int]] = {name: [] for name in ids.values()}
    if not ids:
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue  # gone, a zombie, or a kernel thread
        name = ids.get((st.st_dev, st.st_ino))
        if name is not None:
            found[name].append(int(entry.name))
    return found


def process_name(pid: int) -> str | None:
    """The process name (``comm``, what ``pgrep -x`` matches), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().rstrip("\n")
    except OSError:
        return None


def cmdline(pid: int) -> str:
    """The command line of a process, its arguments joined by spaces ("" if it is gone)."""
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def sshd_pids_using(directory: str) -> list[int]:
    """Pids of sshd processes whose command line names a file under ``directory``."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and process_name(int(entry.name)) == "sshd" \
                and f"-f {directory}" in cmdline(int(entry.name)):
            out.append(int(entry.name))
    return out


def kill_processes(pids: Iterable[int], *, grace: float = 2.0) -> list[int]:
    """SIGTERM the processes, SIGKILL what is left after ``grace`` seconds.

    Returns the pids still alive at the end (normally none).
    """
    pending = {p for p in pids if p != os.getpid()}
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        for pid in pending:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pending and time.monotonic() < deadline:
            pending = {p for p in pending if alive(p)}
            if pending:
                time.sleep(0.01)
        if not pending:
            break
    return sorted(pending)


# ----------------------------------------------------------------- links and namespaces


def link_names() -> set[str]:
    """The names of every network interface in the root namespace."""
    out = run_command(["ip", "-j", "link", "show"], what="ip link show").stdout
    return {link["ifname"] for link in json.loads(out or "[]")}


def netns_names() -> set[str]:
    """The names of every named network namespace (as ``ip netns list`` shows them)."""
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def make_network(
    bridge: str,
    address: str,
    prefixlen: int,
    hosts: Sequence[TestHost],
    veths: Sequence[str],
    pool: Executor,
) -> None:
    """Make the bridge ``bridge`` with ``address/prefixlen`` and, for each host, its
    namespace and a veth (``veths``, in host order) from the bridge to its ``eth0``."""
    # One `ip -batch` for everything in the root namespace; the peer end of each veth
    # is created directly inside its namespace as eth0. addrgenmode none: no IPv6
    # link-local chatter on the bridge, the testbed is IPv4 only.
    lines = [
        f"link add {bridge} type bridge",
        f"link set {bridge} addrgenmode none",
        f"addr add {address}/{prefixlen} dev {bridge}",
        f"link set {bridge} up",
    ]
    for h, veth in zip(hosts, veths, strict=True):
        lines += [
            f"netns add {h.netns}",
            f"link add {veth} type veth peer name eth0 netns {h.netns}",
            f"link set {veth} addrgenmode none",
            f"link set {veth} master {bridge}",
            f"link set {veth} up",
        ]
    run_command(["ip", "-batch", "-"], input="\n".join(lines) + "\n", what="creating the network")

    def inside(h: TestHost) -> None:
        run_command(
            ["ip", "-n", h.netns, "-batch", "-"],
            input=(
                "link set lo up\n"
                "link set eth0 addrgenmode none\n"
                f"addr add {h.address}/{prefixlen} dev eth0\n"
                "link set eth0 up\n"
            ),
            what=f"configuring {h.netns}",
        )

    list(pool.map(inside, hosts))


def _ip_force_batch(lines: Sequence[str]) -> None:
    """Run ``ip`` commands in one batch, going on past (and ignoring) any that fail."""
    run_command(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n", check=False)


def delete_network(netns: Sequence[str], veths: Sequence[str], bridge: str | None) -> list[str]:
    """Delete the namespaces, the veths and the bridge (those that exist); return what is
    still there afterwards (``netns NAME``, ``link NAME``)."""
    # Deleting the namespaces lets the kernel destroy all their veths in one batch (over
    # 2 s faster for 128 hosts than `ip link del` one by one, each waiting for RCU). If
    # a namespace outlives its name (another mount namespace still holds a bind mount
    # of it), its veth would stay: those are then deleted one by one.
    existing_ns = netns_names()
    lines = [f"netns del {ns}" for ns in netns if ns in existing_ns]
    if lines:
        _ip_force_batch(lines)
    wanted = set(veths)
    deadline = time.monotonic() + 3.0
    while (links := link_names()) & wanted and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = [f"link del {v}" for v in sorted(wanted & links)]
    if bridge and bridge in links:
        lines.append(f"link del {bridge}")
    if lines:
        _ip_force_batch(lines)

    links = link_names()
    existing_ns = netns_names()
    left = [f"netns {ns}" for ns in netns if ns in existing_ns]
    left += [f"link {v}" for v in [*veths, bridge] if v and v in links]
    return left
