"""The testbeds on this machine: their state files; list them, remove one, clean up.

Every :class:`~sshcluster.testing.Testbed` records what it creates in a JSON state file
(:func:`state_dir`) before creating it, so another process can find and remove it:
:func:`teardown` removes what one state file lists (also for an owner that is gone),
:func:`remove_testbed` removes exactly one testbed, by name or workdir, and
:func:`down_all` removes the leftovers, testbeds whose owner process has exited (a killed
run, or ``sshcluster testbed up``, which leaves its testbed up on purpose), and never one
whose owner still runs.

Example::

    from sshcluster.testing import list_testbeds, remove_testbed

    for record in list_testbeds():
        print(record.name, record.workdir, "owner running" if record.owner_alive else "")
    remove_testbed(workdir="/tmp/tb")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sshcluster.errors import TestbedError
from sshcluster.testing.netns import (
    cmdline,
    delete_network,
    kill_processes,
    link_names,
    pids_in_netns,
    proc_start_time,
    sshd_pids_using,
)

__all__ = [
    "RUN_DIR",
    "STATE_DIR",
    "STATE_DIR_ENV",
    "TestbedRecord",
    "down_all",
    "list_testbeds",
    "new_state",
    "refuse_taken",
    "remove_testbed",
    "save_state",
    "state_dir",
    "state_path",
    "teardown",
]

#: Where state files and subnet locks live; /run is a tmpfs, so nothing outlives a reboot
#: (and neither do the namespaces and links it describes).
RUN_DIR = Path("/run/sshcluster")
#: The default directory of the state files (see :func:`state_dir`).
STATE_DIR = RUN_DIR / "testbeds"
#: Names another directory for the state files, so that a test can make and remove
#: testbeds (``down_all``, ``sshcluster testbed down --all``) without ever seeing the
#: other testbeds of this machine. The subnet locks stay shared.
STATE_DIR_ENV = "SSHCLUSTER_TESTBED_STATE_DIR"


# ------------------------------------------------------------------------ state files


def state_dir() -> Path:
    """The directory of the state files: ``$SSHCLUSTER_TESTBED_STATE_DIR``, else
    :data:`STATE_DIR` (read at each call, so a test can change it)."""
    return Path(os.environ.get(STATE_DIR_ENV) or STATE_DIR)


def state_path(name: str) -> Path:
    """The state file of the testbed ``name``."""
    return state_dir() / f"{name}.json"


def new_state(
    name: str,
    *,
    subnet: str,
    bridge: str,
    netns: Sequence[str],
    veths: Sequence[str],
    workdir: Path,
    workdir_owned: bool,
    primary_config: Path,
) -> dict[str, Any]:
    """The state of a testbed this process is about to build (no primary sshd yet).

    Save it (:func:`save_state`) before creating anything it names, and again after
    adding a primary sshd's pid to ``primary_pids``.
    """
    return {
        "name": name,
        "owner_pid": os.getpid(),
        "owner_start": proc_start_time(os.getpid()),
        "subnet": subnet,
        "bridge": bridge,
        "netns": list(netns),
        "veths": list(veths),
        "workdir": str(workdir),
        "workdir_owned": workdir_owned,
        "primary_config": str(primary_config),
        "primary_pids": [],
    }


def save_state(state: Mapping[str, Any]) -> None:
    """Write the state file atomically, so a crash never leaves half of it."""
    state_dir().mkdir(parents=True, exist_ok=True)
    path = state_path(str(state["name"]))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)


def teardown(state: Mapping[str, Any], popens: Iterable[subprocess.Popen[bytes]] = ()) -> list[str]:
    """Remove everything a state file lists; return what could not be removed.

    ``popens`` are the sshd processes this process started, reaped once they are killed.
    """
    netns: list[str] = list(state.get("netns", []))
    pids = [p for ps in pids_in_netns(netns).values() for p in ps]
    # The primary sshd lives in the root namespace; kill it only if that pid is still
    # the sshd we started (its config path is on its command line), as pids get reused.
    primary_cfg = state.get("primary_config")
    for pid in state.get("primary_pids", []):
        if primary_cfg and primary_cfg in cmdline(pid):
            pids.append(pid)
    # A safety net: any sshd still running from this testbed's files, wherever it is (one
    # that got into its namespace after the scan above would outlive the namespace).
    workdir = state.get("workdir")
    if workdir:
        pids += sshd_pids_using(f"{workdir}/")
    left = kill_processes(set(pids))
    for proc in popens:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)  # reap our own children

    leftovers = [f"process {p}" for p in left]
    leftovers += delete_network(netns, list(state.get("veths", [])), state.get("bridge"))
    if not leftovers:
        if workdir and state.get("workdir_owned"):
            shutil.rmtree(workdir, ignore_errors=True)
        state_path(str(state["name"])).unlink(missing_ok=True)
    return leftovers


# -------------------------------------------------------------------------- testbeds


@dataclass(frozen=True)
class TestbedRecord:
    """A testbed that is up on this machine, as its state file describes it.

    ``owner_pid`` is the process that built it; ``owner_alive`` is true while that very
    process (not a later one with the same pid) still runs. The owner of a testbed made
    by ``sshcluster testbed up`` has always exited: that command leaves it up on purpose.
    """

    __test__ = False  # not a pytest test class, despite the name

    name: str
    workdir: Path | None
    subnet: str | None
    owner_pid: int | None
    owner_alive: bool


def _read_states() -> tuple[list[dict[str, Any]], list[str]]:
    """(the content of every readable state file, a problem for each unreadable one)."""
    states: list[dict[str, Any]] = []
    problems: list[str] = []
    directory = state_dir()
    if not directory.is_dir():
        return states, problems
    for path in sorted(directory.glob("*.json")):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            problems.append(f"{path}: unreadable ({e})")
            continue
        if not isinstance(state, dict) or state.get("name") != path.stem:
            problems.append(f"{path}: not a testbed state file")
            continue
        states.append(state)
    return states, problems


def _record(state: Mapping[str, Any]) -> TestbedRecord:
    owner, started = state.get("owner_pid"), state.get("owner_start")
    alive = isinstance(owner, int) and started is not None and proc_start_time(owner) == started
    workdir = state.get("workdir")
    return TestbedRecord(
        name=str(state["name"]),
        workdir=Path(workdir) if workdir else None,
        subnet=state.get("subnet"),
        owner_pid=owner if isinstance(owner, int) else None,
        owner_alive=alive,
    )


def list_testbeds() -> list[TestbedRecord]:
    """Every testbed that is up on this machine (with a readable state file), by name."""
    return [_record(s) for s in _read_states()[0]]


def _describe(records: Sequence[TestbedRecord]) -> str:
    if not records:
        return "there are no testbeds on this machine"
    return "testbeds on this machine: " + ", ".join(
        f"{r.name} ({r.workdir})" if r.workdir else r.name for r in records
    )


def refuse_taken(name: str, workdir: Path | None) -> None:
    """Raise :class:`TestbedError` if a testbed named ``name`` exists, or one that is up
    uses the directory ``workdir``."""
    if state_path(name).exists() or f"{name}-br" in link_names():
        raise TestbedError(
            f"a testbed named {name} already exists",
            hint=f"remove it with `sshcluster testbed down --name {name}`",
        )
    if workdir is not None:
        # Building there would overwrite the keys and known_hosts of a testbed that is
        # still up, and the inventories written for it would fail host key checks.
        for other in list_testbeds():
            if other.workdir == workdir:
                raise TestbedError(
                    f"the directory {workdir} belongs to testbed {other.name}, which is still up",
                    hint=f"remove it first with `sshcluster testbed down --dir {workdir}`, "
                    "or choose another directory",
                )


def remove_testbed(name: str | None = None, *, workdir: Path | str | None = None) -> str:
    """Remove the one testbed named exactly ``name``, or the one whose workdir is ``workdir``.

    ``workdir`` is the directory given to ``Testbed(workdir=...)`` (``sshcluster testbed
    up --dir DIR``); the directory itself is left in place. The testbed goes even if its
    owner is still running, as it was named explicitly. Returns its name; raises
    :class:`TestbedError` if no testbed (or more than one) matches, or naming what could
    not be removed.

    Example::

        remove_testbed("sc1a2b")            # as printed by `sshcluster testbed up`
        remove_testbed(workdir="/tmp/tb")
    """
    states, _ = _read_states()
    if name is not None and workdir is None:
        matches = [s for s in states if s["name"] == name]
        what = f"named {name!r}"
    elif workdir is not None and name is None:
        wd = Path(workdir).resolve()
        matches = [s for s in states if s.get("workdir") and Path(s["workdir"]) == wd]
        what = f"with the directory {wd}"
    else:
        raise TypeError("remove_testbed() takes a name or a workdir (exactly one)")
    if not matches:
        raise TestbedError(
            f"there is no testbed {what}", hint=_describe([_record(s) for s in states])
        )
    if len(matches) > 1:
        names = ", ".join(s["name"] for s in matches)
        raise TestbedError(
            f"more than one testbed {what}: {names}", hint="remove them one by one by name"
        )
    state = matches[0]
    leftovers = teardown(state)
    if leftovers:
        raise TestbedError(
            f"testbed {state['name']} was not removed completely: {', '.join(leftovers)}",
            hint="see `ip netns list`, `ip link` and " + str(state_path(state["name"])),
        )
    return str(state["name"])


def down_all(prefix: str = "") -> list[str]:
    """Remove the leftover testbeds: those whose owner process has exited.

    Only testbeds whose name starts with ``prefix`` (every one for ``""``) are looked
    at; a testbed whose owner is still running is never removed, so concurrent test runs
    and programs do not break each other. A leftover is one whose creating process
    crashed, was killed, or left it up on purpose, as ``sshcluster testbed up`` does: so
    ``down_all()`` also removes every testbed made by that command, anyone's. To remove
    one testbed, use :func:`remove_testbed`, which matches its name exactly.

    For each leftover, kills every process in its namespaces and its primary sshd, and
    deletes its namespaces, veths, bridge and (if the testbed made it) workdir. Returns
    the names of the testbeds removed; raises :class:`TestbedError` naming what could
    not be removed.
    """
    removed: list[str] = []
    states, failed = _read_states()
    for state in states:
        name = str(state["name"])
        if not name.startswith(prefix):
            continue
        record = _record(state)
        if record.owner_alive:
            continue
        if record.owner_pid is None:  # cannot tell whether its owner runs: leave it
            failed.append(f"{name}: no owner recorded (remove it by name)")
            continue
        leftovers = teardown(state)
        if leftovers:
            failed.append(f"{name}: {', '.join(leftovers)}")
        else:
            removed.append(name)
    if failed:
        raise TestbedError(
            "could not remove every leftover testbed: " + "; ".join(failed),
            hint="see `ip netns list`, `ip link` and the files in " + str(state_dir()),
        )
    return removed

