"""Network namespaces, the links and processes in them, and the state that names them all.

The low-level half of :mod:`sshcluster.testbed`: running ``ip`` and friends, finding and
killing the processes of a set of namespaces through ``/proc``, choosing and locking a
free subnet, and the JSON state file that records everything a testbed creates, with
:func:`teardown`, which removes what a state file lists (also for an owner that is gone).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sshcluster.errors import TestbedError

#: Where state files and subnet locks live; /run is a tmpfs, so nothing outlives a reboot
#: (and neither do the namespaces and links it describes).
RUN_DIR = Path("/run/sshcluster")
#: The default directory of the state files (see :func:`state_dir`).
STATE_DIR = RUN_DIR / "testbeds"
LOCK_DIR = RUN_DIR / "subnets"
#: Names another directory for the state files, so that a test can make and remove
#: testbeds (``down_all``, ``sshcluster testbed down --all``) without ever seeing the
#: other testbeds of this machine. The subnet locks stay shared.
STATE_DIR_ENV = "SSHCLUSTER_TESTBED_STATE_DIR"

DEFAULT_POOL = ipaddress.IPv4Network("10.213.0.0/16")

__all__ = [
    "DEFAULT_POOL",
    "LOCK_DIR",
    "RUN_DIR",
    "STATE_DIR",
    "STATE_DIR_ENV",
    "SubnetLock",
    "link_names",
    "lock_subnet",
    "netns_names",
    "pids_in_netns",
    "proc_start_time",
    "process_name",
    "run_command",
    "save_state",
    "state_dir",
    "state_path",
    "teardown",
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


def proc_start_time(pid: int) -> int | None:
    """The start time of a process in clock ticks since boot, or None if it is gone.

    A pid together with its start time names a process even after the pid is reused.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after its closing paren.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _alive(pid: int) -> bool:
    return proc_start_time(pid) is not None


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


def sshd_pids_using(directory: str) -> list[int]:
    """Pids of sshd processes whose command line names a file under ``directory``."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and process_name(int(entry.name)) == "sshd" \
                and f"-f {directory}" in _cmdline(int(entry.name)):
            out.append(int(entry.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _kill(pids: Iterable[int], *, grace: float = 2.0) -> list[int]:
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
            pending = {p for p in pending if _alive(p)}
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


# ---------------------------------------------------------------------------- subnets


def _used_networks() -> tuple[list[ipaddress.IPv4Network], list[ipaddress.IPv4Network]]:
    """(networks of this machine's IPv4 addresses, destinations of its IPv4 routes)."""
    addrs = json.loads(
        run_command(["ip", "-j", "-4", "addr", "show"], what="ip addr").stdout or "[]"
    )
    nets = [
        ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}").network
        for link in addrs
        for a in link.get("addr_info", [])
    ]
    routes = json.loads(
        run_command(["ip", "-j", "-4", "route", "show", "table", "all"], what="ip route").stdout
        or "[]"
    )
    dsts = []
    for r in routes:
        dst = r.get("dst", "default")
        if dst != "default":
            dsts.append(ipaddress.IPv4Network(dst, strict=False))
    return nets, dsts


def _conflict(net: ipaddress.IPv4Network) -> str | None:
    """Why ``net`` cannot be a testbed subnet on this machine, or None if it can.

    It may not overlap any address of this machine (that would route a test host's
    traffic somewhere real) nor any route at least as specific as itself; a wider route
    (say 10.0.0.0/8 via a VPN) is fine, as the bridge's /24 takes precedence.
    """
    nets, dsts = _used_networks()
    for other in nets:
        if net.overlaps(other):
            return f"overlaps {other}, which is on an interface of this machine"
    for other in dsts:
        if net.overlaps(other) and other.prefixlen >= net.prefixlen:
            return f"overlaps the route to {other}"
    return None


class SubnetLock:
    """An exclusive flock on one subnet, held as long as a testbed uses it.

    flock (not fcntl/lockf) because flock locks belong to the open file, so two testbeds
    in one process exclude each other too. A crashed owner's lock is released by the
    kernel; its bridge still holds the address, which :func:`_conflict` sees.
    """

    def __init__(self, net: ipaddress.IPv4Network) -> None:
        self.net = net
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        path = LOCK_DIR / f"{net.network_address}_{net.prefixlen}.lock"
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise

    def release(self) -> None:
        """Give the subnet up; safe to call more than once."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock_subnet(subnet: str | None) -> SubnetLock:
    """Lock the asked subnet, or the first free 10.213.X.0/24 if none was asked."""
    if subnet is not None:
        net = ipaddress.IPv4Network(subnet, strict=False)
        try:
            lock = SubnetLock(net)
        except BlockingIOError:
            raise TestbedError(
                f"subnet {net} is in use by another testbed", hint="pick another subnet="
            ) from None
        why = _conflict(net)
        if why:
            lock.release()
            raise TestbedError(f"subnet {net} cannot be used: it {why}")
        return lock
    for net in DEFAULT_POOL.subnets(new_prefix=24):
        try:
            lock = SubnetLock(net)
        except BlockingIOError:
            continue
        if _conflict(net) is None:
            return lock
        lock.release()
    raise TestbedError(
        f"no free /24 left in {DEFAULT_POOL} for a testbed",
        hint="remove testbeds you no longer need (sshcluster testbed down --name NAME), "
        "or pass subnet=",
    )


# ------------------------------------------------------------------------------ state


def state_dir() -> Path:
    """The directory of the state files: ``$SSHCLUSTER_TESTBED_STATE_DIR``, else
    :data:`STATE_DIR` (read at each call, so a test can change it)."""
    return Path(os.environ.get(STATE_DIR_ENV) or STATE_DIR)


def state_path(name: str) -> Path:
    """The state file of the testbed ``name``."""
    return state_dir() / f"{name}.json"


def save_state(state: Mapping[str, Any]) -> None:
    """Write the state file atomically, so a crash never leaves half of it."""
    state_dir().mkdir(parents=True, exist_ok=True)
    path = state_path(str(state["name"]))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)


def _ip_force_batch(lines: Sequence[str]) -> None:
    """Run ``ip`` commands in one batch, going on past (and ignoring) any that fail."""
    run_command(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n", check=False)


def teardown(state: Mapping[str, Any], popens: Iterable[subprocess.Popen[bytes]] = ()) -> list[str]:
    """Remove everything a state file lists; return what could not be removed."""
    netns: list[str] = list(state.get("netns", []))
    pids = [p for ps in pids_in_netns(netns).values() for p in ps]
    # The primary sshd lives in the root namespace; kill it only if that pid is still
    # the sshd we started (its config path is on its command line), as pids get reused.
    primary_cfg = state.get("primary_config")
    for pid in state.get("primary_pids", []):
        if primary_cfg and primary_cfg in _cmdline(pid):
            pids.append(pid)
    # A safety net: any sshd still running from this testbed's files, wherever it is (one
    # that got into its namespace after the scan above would outlive the namespace).
    workdir = state.get("workdir")
    if workdir:
        pids += sshd_pids_using(f"{workdir}/")
    left = _kill(set(pids))
    for proc in popens:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)  # reap our own children

    # Deleting the namespaces lets the kernel destroy all their veths in one batch (over
    # 2 s faster for 128 hosts than `ip link del` one by one, each waiting for RCU). If
    # a namespace outlives its name (another mount namespace still holds a bind mount
    # of it), its veth would stay: those are then deleted one by one.
    existing_ns = netns_names()
    lines = [f"netns del {ns}" for ns in netns if ns in existing_ns]
    if lines:
        _ip_force_batch(lines)
    veths = set(state.get("veths", []))
    deadline = time.monotonic() + 3.0
    while (links := link_names()) & veths and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = [f"link del {v}" for v in sorted(veths & links)]
    bridge = state.get("bridge")
    if bridge and bridge in links:
        lines.append(f"link del {bridge}")
    if lines:
        _ip_force_batch(lines)

    links = link_names()
    existing_ns = netns_names()
    leftovers = [f"process {p}" for p in left]
    leftovers += [f"netns {ns}" for ns in netns if ns in existing_ns]
    leftovers += [f"link {v}" for v in [*state.get("veths", []), bridge] if v and v in links]
    if not leftovers:
        workdir = state.get("workdir")
        if workdir and state.get("workdir_owned"):
            shutil.rmtree(workdir, ignore_errors=True)
        state_path(str(state["name"])).unlink(missing_ok=True)
    return leftovers
