"""This machine's records of the clusters it started.

``up`` writes a small JSON record per cluster in :func:`state_dir` before it starts
anything, adds the id of each thing it creates as AWS answers, and ``down`` removes it.
The records tell ``ls`` which clusters this machine knows and ``gc`` which of this owner's
clusters are orphans, including the cluster of an ``up`` that was killed (SIGKILL, a power
loss): its record still says ``starting``, but the process that wrote it is gone.

A process is named by its pid *and* its start time, on this machine (its host name) since
this boot (the kernel's boot id), so that a pid reused by another program, or the same pid
after a reboot, does not pass for the ``up`` that wrote the record.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import secrets
import socket
import subprocess
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sshcluster.ec2.instances import format_time, parse_time
from sshcluster.ec2.spec import is_region
from sshcluster.files import atomic_write


@dataclass(frozen=True)
class Record:
    """This machine's note of a cluster it started (see :func:`state_dir`)."""

    name: str
    region: str
    run_id: str
    owner: str
    expires: datetime
    status: str  # "starting" or "up"
    key_file: str | None = None
    known_hosts: str | None = None
    inventory: str | None = None
    #: What this run created, as AWS answered (cleanup uses these ids first).
    instance_ids: tuple[str, ...] = ()
    security_group: str | None = None
    key_pair: str | None = None
    image: str | None = None
    #: The ``up`` process that writes the record: host name, pid, start time, boot id.
    process: dict[str, str] = field(default_factory=dict)
    #: The detached job the cluster was started for (``run --ec2 --detach``): it lives
    #: until that job's results were fetched, or until its expiry.
    job: str | None = None

    def owner_gone(self) -> bool:
        """True if this is a ``starting`` record whose ``up`` is known to be gone: it ran
        on this machine and its process no longer exists (or this machine rebooted since).
        False when that cannot be told (another machine's record, an old record)."""
        if self.status != "starting" or not self.process:
            return False
        return not process_alive(self.process)


def boot_id() -> str | None:
    """This boot of this machine (Linux), or None."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot on Linux, ``ps`` elsewhere),
    or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        stat = ""
    if stat:
        # comm (field 2) may hold spaces and parentheses: split after its closing paren.
        fields = stat[stat.rindex(")") + 2:].split()
        return None if fields[0] in ("Z", "X") else fields[19]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=10, check=False)
        return out.stdout.strip() or None
    return None


def machine_id() -> str | None:
    """This machine's lasting id (systemd's machine-id), or None: unlike its host name,
    which moves with networks and OS updates, it stays."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            found = Path(path).read_text().strip()
            if found:
                return found
    return None


def this_process() -> dict[str, str]:
    """The identity of this process, as a record keeps it."""
    me = {"host": socket.gethostname(), "pid": str(os.getpid()),
          "start": process_start(os.getpid()) or ""}
    for key, value in (("boot_id", boot_id()), ("machine", machine_id())):
        if value:
            me[key] = value
    return me


def on_this_machine(identity: dict[str, str]) -> bool:
    """Whether the process ``identity`` names ran on this machine: its machine id and
    either its host name or its boot (cloned machines share a machine id; a renamed one
    keeps it); without a machine id (an older record), by its host name."""
    if identity.get("machine") and machine_id():
        return identity["machine"] == machine_id() and (
            identity.get("host") == socket.gethostname()
            or (bool(identity.get("boot_id")) and identity.get("boot_id") == boot_id()))
    return identity.get("host") == socket.gethostname()


def process_alive(identity: dict[str, str]) -> bool:
    """False if the process ``identity`` names (see :func:`this_process`) is known to be
    gone; True while it runs, and when that cannot be told from here (another
    machine's)."""
    if not on_this_machine(identity) or not identity.get("pid", "").isdigit():
        return True
    boot = boot_id()
    if boot and identity.get("boot_id") and identity["boot_id"] != boot:
        return False
    start = process_start(int(identity["pid"]))
    return start is not None and (not identity.get("start") or start == identity["start"])


def legacy_owner() -> str:
    """``user@host``: the owner tag of older sshcluster versions (host names change with
    networks and OS updates, so it is only accepted, never written)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


#: The per-user id, created once in the state directory.
OWNER_ID_FILE = "owner-id"
_owners: dict[tuple[str, str], str] = {}


def default_owner(records: Path | None = None, *, sts: Any = None) -> str:
    """The ``sshcluster:owner`` tag of what this user starts: who AWS says the caller is
    (STS GetCallerIdentity; an assumed role without its session name, which changes every
    session) and a per-user id created once in the state directory ``records``, e.g.
    ``123456789012:user/alice/3f9a1c2b``. Unlike ``user@host`` it survives a renamed
    host; the id keeps two people who share an IAM identity apart. ``sts`` defaults to a
    client for the default region (STS answers the same everywhere)."""
    records = records or state_dir()
    ident = _owner_id(records)
    key = (str(records.absolute()), os.environ.get("AWS_PROFILE", ""))
    if key not in _owners:
        if sts is None:
            from sshcluster.ec2.aws import make_service_client

            sts = make_service_client("sts", os.environ.get("AWS_DEFAULT_REGION")
                                      or os.environ.get("AWS_REGION") or "us-east-1")
        from sshcluster.ec2.aws import aws_errors

        with aws_errors("GetCallerIdentity"):
            arn = str(sts.get_caller_identity()["Arn"])
        _owners[key] = f"{principal(arn)}/{ident}"
    return _owners[key]


def principal(arn: str) -> str:
    """``account:kind/name`` of an STS caller ARN; an assumed role's session name (the
    last part, new every session) is left out."""
    parts = arn.split(":", 5)
    if len(parts) < 6:
        return arn
    account, resource = parts[4], parts[5]
    if resource.startswith("assumed-role/"):
        resource = "/".join(resource.split("/")[:2])
    return f"{account}:{resource}"


def _owner_id(records: Path) -> str:
    path = records / OWNER_ID_FILE
    with contextlib.suppress(OSError):
        text = path.read_text(encoding="utf-8").strip()
        if text:
            return text
    records.mkdir(parents=True, exist_ok=True)
    fresh = secrets.token_hex(4)
    try:  # created once: a concurrent first run keeps the one written first
        with path.open("x", encoding="utf-8") as f:
            f.write(fresh + "\n")
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip() or fresh
    return fresh


def my_owners(owner: str, records: Path | None = None) -> tuple[str, ...]:
    """``owner``, and, when it is this user's :func:`default_owner`, the owners this
    machine's records were written under and this machine's ``user@host``: a cluster
    started before the owner tag changed (an older version's ``user@host``, a host since
    renamed) is still this user's, to list, end and collect. Another ``owner``, given
    explicitly, is only itself."""
    records = records or state_dir()
    if owner != default_owner(records):
        return (owner,)
    found = {r.owner for r in load_records(records)} | {legacy_owner()}
    return (owner, *sorted(found - {owner}))


def state_dir() -> Path:
    """Where cluster records live: ``$SSHCLUSTER_STATE_DIR``, else
    ``$XDG_STATE_HOME/sshcluster/ec2``, else ``~/.local/state/sshcluster/ec2``."""
    if os.environ.get("SSHCLUSTER_STATE_DIR"):
        return Path(os.environ["SSHCLUSTER_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "sshcluster" / "ec2"


def record_path(directory: Path, region: str, name: str) -> Path:
    """The file of cluster ``name``'s record in ``region``."""
    return directory / f"{region}--{name}.json"


def save_record(directory: Path, record: Record) -> None:
    """Write ``record`` (readable by its owner only)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = {**asdict(record), "expires": format_time(record.expires),
            "instance_ids": list(record.instance_ids)}
    if record.job is None:
        del data["job"]  # (the records of clusters not started for a job stay as they were)
    atomic_write(record_path(directory, record.region, record.name),
                 json.dumps(data, indent=2) + "\n", mode=0o600)


def load_records(directory: Path | None = None) -> list[Record]:
    """Every cluster record on this machine; unreadable ones are skipped."""
    directory = directory or state_dir()
    out = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            expires = parse_time(data.pop("expires"))
            if expires is None:
                continue
            record = Record(expires=expires, **data)
            out.append(replace(record, instance_ids=tuple(record.instance_ids),
                               process={str(k): str(v) for k, v in record.process.items()}))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            continue
    return out


def record_regions(directory: Path | None = None) -> tuple[str, ...]:
    """The regions of this machine's records, from their file names (so that a record
    that cannot be read still counts)."""
    directory = directory or state_dir()
    paths = directory.glob("*--*.json") if directory.is_dir() else ()
    return tuple(sorted({region for p in paths
                         if is_region(region := p.name.split("--", 1)[0])}))


def find_record(directory: Path, region: str, name: str) -> Record | None:
    """The record of cluster ``name`` in ``region``, if this machine has one."""
    return next((r for r in load_records(directory) if r.region == region and r.name == name),
                None)


def remove_record(directory: Path, region: str, name: str) -> None:
    """Remove the record of cluster ``name`` in ``region`` (no error if there is none)."""
    record_path(directory, region, name).unlink(missing_ok=True)


__all__ = [
    "Record",
    "boot_id",
    "default_owner",
    "find_record",
    "legacy_owner",
    "load_records",
    "machine_id",
    "my_owners",
    "on_this_machine",
    "principal",
    "process_alive",
    "process_start",
    "record_path",
    "record_regions",
    "remove_record",
    "save_record",
    "state_dir",
    "this_process",
]
