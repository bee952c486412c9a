"""This machine's records of the clusters it started.

``up`` writes a small JSON record per cluster in :func:`state_dir` before it starts
anything, and ``down`` removes it. The records tell ``ls`` which clusters this machine
knows and ``gc`` which of this owner's clusters are orphans.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

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


def default_owner() -> str:
    """``user@host`` of this machine: the ``sshcluster:owner`` tag of what it starts."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


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
    data = {**asdict(record), "expires": format_time(record.expires)}
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
            out.append(Record(expires=expires, **data))
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
    "default_owner",
    "find_record",
    "load_records",
    "record_path",
    "record_regions",
    "remove_record",
    "save_record",
    "state_dir",
]
