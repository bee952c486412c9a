"""A job's run directory: what ran, where, how long each phase took, and how it ended.

    RUNS/JOBID/script.R        a copy of the script as it was run
    RUNS/JOBID/cluster.R       the bootstrap rendered for it
    RUNS/JOBID/log             what the script printed (stdout and stderr, in order)
    RUNS/JOBID/run.json        the summary (:class:`RunResult`, as ``--json`` prints it)

RUNS is ``$SSHCLUSTER_STATE_DIR/runs``, else ``$XDG_STATE_HOME/sshcluster/runs``, else
``~/.local/state/sshcluster/runs``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sshcluster.files import atomic_write


def runs_dir() -> Path:
    """Where run directories live (see the module's text)."""
    if os.environ.get("SSHCLUSTER_STATE_DIR"):
        return Path(os.environ["SSHCLUSTER_STATE_DIR"]) / "runs"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "sshcluster" / "runs"


@dataclass(frozen=True)
class RunResult:
    """How a job ended. ``status`` is the script's own exit status (128 + N when a signal
    N ended the job; 1 when the job failed before the script ran, ``error`` says why).
    ``phases`` holds the seconds each phase took: check, lease, render, launch (the
    bootstrap's source()), script (the user's script), stop, results, release."""

    job: str
    script: str
    args: tuple[str, ...]
    status: int
    hosts: tuple[str, ...]
    left_out: tuple[str, ...]
    phases: dict[str, float]
    started: str
    run_dir: str
    versions: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    signal: str | None = None
    #: With ``--results``: ``dir``, ``files`` (per host) and ``errors`` (per host).
    results: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """Whether the script ran and exited with status 0."""
        return self.status == 0 and self.error is None

    @property
    def wall(self) -> float:
        """Seconds from the job's start to its end."""
        return sum(self.phases.values())

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data."""
        data = asdict(self)
        data["args"] = list(self.args)
        data["hosts"] = list(self.hosts)
        data["left_out"] = list(self.left_out)
        data["phases"] = {k: round(v, 3) for k, v in self.phases.items()}
        return data

    def to_json(self) -> str:
        """The summary, as ``sshcluster run --json`` prints it."""
        return json.dumps(self.to_dict(), indent=2)


def write_record(result: RunResult) -> Path:
    """Write ``run.json`` into the result's run directory; return its path."""
    path = Path(result.run_dir) / "run.json"
    # (whole or not at all: a full disk or a kill mid-write leaves no half a record)
    atomic_write(path, result.to_json() + "\n", mode=0o600)
    return path


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (Linux: field 22 of /proc/PID/stat), so that a new
    process that got an old pid is not taken for the old one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def write_owner(run_dir: Path, script: str) -> None:
    """Note in ``run_dir`` which process runs the job (``owner``: its pid and start
    time, then the script's name)."""
    (run_dir / "owner").write_text(
        f"{os.getpid()} {_start_time(os.getpid()) or ''}\n{os.path.basename(script)}\n")


def owner_alive(run_dir: Path) -> bool:
    """Whether the process that noted itself as the job's owner still runs."""
    try:
        first = (run_dir / "owner").read_text().splitlines()[0]
        pid_text, _, start = first.strip().partition(" ")
        pid = int(pid_text)
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return not start or _start_time(pid) == start


def read_note(run_dir: Path, name: str) -> str | None:
    """A note the job's R session wrote (``driver.R``), or None."""
    try:
        return (run_dir / name).read_text().strip() or None
    except OSError:
        return None
