"""The testbeds on this machine: list them, remove one, clean up the leftovers.

Every :class:`~sshcluster.testbed.Testbed` records what it creates in a JSON state file
(:func:`sshcluster.netns.state_dir`) before creating it, so another process can find and
remove it: :func:`remove_testbed` removes exactly one testbed, by name or workdir;
:func:`down_all` removes the leftovers, testbeds whose owner process has exited (a killed
run, or ``sshcluster testbed up``, which leaves its testbed up on purpose), and never one
whose owner still runs.

Example::

    from sshcluster.testbeds import list_testbeds, remove_testbed

    for record in list_testbeds():
        print(record.name, record.workdir, "owner running" if record.owner_alive else "")
    remove_testbed(workdir="/tmp/tb")
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sshcluster.errors import TestbedError
from sshcluster.netns import proc_start_time, state_dir, state_path, teardown

__all__ = ["TestbedRecord", "down_all", "list_testbeds", "parse_subnet", "remove_testbed"]


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


def parse_subnet(subnet: str) -> ipaddress.IPv4Network:
    """The IPv4 network ``subnet`` names (host bits allowed: ``10.213.5.9/24`` is
    ``10.213.5.0/24``); raises :class:`TestbedError` if it names none."""
    try:
        return ipaddress.IPv4Network(subnet, strict=False)
    except ValueError as e:
        raise TestbedError(
            f"subnet {subnet!r} is not an IPv4 network such as 10.213.5.0/24: {e}"
        ) from e
