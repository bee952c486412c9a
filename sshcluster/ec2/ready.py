"""Ready when ``up`` returns: waiting until every instance's setup has installed R and the
spec's ``r_packages`` and they load.

The user data runs the setup detached and writes its outcome to a status file
(:mod:`sshcluster.ec2.userdata`): ``running``, then ``ready <R version>`` or
``failed: <what>``. ``up`` reads that file over SSH, verified with the host keys it has
just recorded, on every instance at once, each round, with its own deadline. A failed
setup is reported with the tail of its log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sshcluster.ec2.instances import Endpoint, Instance
from sshcluster.ec2.userdata import EXPIRY_FILE, SETUP_LOG, STATUS_FILE
from sshcluster.ec2.wait import Progress, Step, Watch, remaining
from sshcluster.errors import EC2Error

#: What ``up`` runs on an instance: whether the dead man's switch scheduled the shutdown
#: (``expiry: armed <expiry>``, else ``expiry: none``), the status, and the log's tail if
#: the setup failed.
STATUS_COMMAND = (f"a=$(cat {EXPIRY_FILE} 2>/dev/null) || a=none; echo \"expiry: $a\"; "
                  f"s=$(cat {STATUS_FILE} 2>/dev/null) || s=waiting; echo \"$s\"; "
                  f"case $s in failed*) tail -n 30 {SETUP_LOG} 2>&1;; esac")
#: Seconds one status read may take.
READ_TIMEOUT = 20.0


@dataclass(frozen=True)
class SetupStatus:
    """One instance's setup as its status file says: ``state`` is ``waiting`` (no status
    yet, or SSH not ready), ``running``, ``ready`` or ``failed``; ``detail`` is the rest
    of the status line (R's version, what failed); ``log_tail`` the setup log's end;
    ``expiry`` what the dead man's switch recorded (``armed <expiry>`` once the shutdown
    is scheduled; empty when nothing was recorded)."""

    state: str
    detail: str = ""
    log_tail: str = ""
    expiry: str = ""

    @property
    def armed(self) -> bool:
        """True when the instance's shutdown at the expiry is scheduled."""
        return self.expiry.startswith("armed")

    @classmethod
    def parse(cls, text: str) -> SetupStatus:
        """From the output of :data:`STATUS_COMMAND`."""
        expiry = ""
        if text.startswith("expiry: "):
            line, _, text = text.partition("\n")
            expiry = line.removeprefix("expiry: ").strip()
            expiry = "" if expiry == "none" else expiry
        first, _, rest = text.partition("\n")
        word, _, detail = first.strip().partition(" ")
        state = word.rstrip(":")
        if state not in ("running", "ready", "failed"):
            state, detail = "waiting", first.strip()
        return cls(state, detail.strip(), rest.rstrip(), expiry)


#: Reads one instance's setup status (the seam for tests; default: over SSH).
ReadStatus = Callable[[Instance, Endpoint], SetupStatus]


class SetupFailed(EC2Error):
    """The setup failed on some instances: ``failures`` maps an instance id to its
    :class:`SetupStatus` (with the tail of its log)."""

    def __init__(self, failures: dict[str, SetupStatus], total: int, *, hint: str) -> None:
        self.failures = failures
        lines = [f"the setup failed on {len(failures)} of {total} instances:"]
        for ident, status in sorted(failures.items()):
            lines.append(f"{ident}: {status.detail or status.state}")
            lines += [f"  | {line}" for line in status.log_tail.splitlines()]
        super().__init__("\n".join(lines), code="SetupFailed", hint=hint)


def ssh_status_reader(user: str, *, known_hosts: Path, identity_file: str | None
                      ) -> ReadStatus:
    """Read the status over SSH as ``user``, with the key ``identity_file`` (else the
    agent and the default keys), verifying host keys against ``known_hosts`` only."""

    def read(instance: Instance, endpoint: Endpoint) -> SetupStatus:
        return asyncio.run(_read(endpoint, user, known_hosts, identity_file))

    return read


async def _read(endpoint: Endpoint, user: str, known_hosts: Path,
                identity_file: str | None) -> SetupStatus:
    import asyncssh

    try:
        conn = await asyncio.wait_for(asyncssh.connect(
            endpoint.host, endpoint.port, username=user, known_hosts=str(known_hosts),
            client_keys=[identity_file] if identity_file else (),
            connect_timeout=READ_TIMEOUT), READ_TIMEOUT)
        async with conn:
            result = await asyncio.wait_for(conn.run(STATUS_COMMAND, check=False),
                                            READ_TIMEOUT)
    except asyncssh.HostKeyNotVerifiable as e:
        return SetupStatus("failed", f"the host key does not match the one its console "
                                     f"showed: {e}")
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as e:
        return SetupStatus("waiting", f"ssh: {e or type(e).__name__}")
    out = result.stdout if isinstance(result.stdout, str) else ""
    return SetupStatus.parse(out)


def wait_ready(instances: Sequence[Instance], endpoints: dict[str, Endpoint], *,
               read_status: ReadStatus, deadline: float, poll: float, report: Progress,
               packages: Sequence[str] = (), watch: Watch = lambda: None
               ) -> dict[str, SetupStatus]:
    """Wait until every instance's setup says ``ready``; return the statuses. Raises
    :class:`SetupFailed` as soon as one says ``failed``, and EC2Error at the deadline;
    ``watch`` is called before each further round (and raises if an instance ended)."""
    total = len(instances)
    what = "R" + (f" and {len(packages)} R package{'s' if len(packages) != 1 else ''}"
                  if packages else "")
    statuses: dict[str, SetupStatus] = {}
    while True:
        waiting = [i for i in instances if statuses.get(i.id, SetupStatus("")).state
                   != "ready"]
        for inst, status in zip(waiting, _read_all(waiting, endpoints, read_status),
                                strict=True):
            statuses[inst.id] = status
        _refuse_unarmed(statuses, total)
        ready = sum(1 for s in statuses.values() if s.state == "ready")
        report(Step("setup", ready, total, f"waiting for the setup: {what}"))
        failed = {i: s for i, s in statuses.items() if s.state == "failed"}
        if failed:
            raise SetupFailed(failed, total, hint="fix the setup (or r_packages) and start "
                                                  "again; --keep-on-failure keeps the "
                                                  "instances to look at them")
        if ready == total:
            return statuses
        if remaining(deadline) <= 0:
            late = {i: s for i, s in statuses.items() if s.state != "ready"}
            raise EC2Error(
                f"the setup of {len(late)} of {total} instances was not done before its "
                "deadline: " + ", ".join(f"{i} ({s.state}{': ' + s.detail if s.detail else ''})"
                                         for i, s in sorted(late.items())),
                code="SetupTimeout",
                hint="allow more time (--setup-timeout), or pass --no-wait and check later "
                     "with 'sshcluster render --check'")
        watch()
        time.sleep(min(poll, max(0.0, remaining(deadline))))


def _refuse_unarmed(statuses: dict[str, SetupStatus], total: int) -> None:
    """Raise if an instance whose user data ran shows no scheduled shutdown: nothing would
    end it at ``max_lifetime`` (an image that ignores the user data, a ``shutdown`` that
    failed). Not a :class:`SetupFailed`, so that ``--keep-on-failure`` never keeps it."""
    unarmed = sorted(i for i, s in statuses.items() if s.state != "waiting" and not s.armed)
    if unarmed:
        raise EC2Error(
            f"{len(unarmed)} of {total} instances have no scheduled shutdown, so "
            f"max_lifetime would not end them: {', '.join(unarmed)}",
            code="LifetimeNotArmed",
            hint="the image must run the user data with a working 'shutdown' (systemd); "
                 "choose another image")


def _read_all(instances: Sequence[Instance], endpoints: dict[str, Endpoint],
              read_status: ReadStatus) -> list[SetupStatus]:
    """Every instance's status, read at the same time."""
    import concurrent.futures

    if not instances:
        return []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(instances)))
    try:
        return list(pool.map(lambda i: read_status(i, endpoints[i.id]), instances))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # an interrupt does not wait


__all__ = ["STATUS_COMMAND", "ReadStatus", "SetupFailed", "SetupStatus", "ssh_status_reader",
           "wait_ready"]
