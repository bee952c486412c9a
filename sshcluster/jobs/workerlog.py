"""What a job's workers print: a log per host, and ``--worker-output`` showing it live.

The job's launch sends each worker's ``cat``/``message`` lines to its host's session
(``worker_output: console``) and the primary's R appends them to ``workers/HOST.log``
in the run directory (the bootstrap's ``worker_logs``), as each task's answer comes in
and when the cluster stops. :class:`WorkerRelay` follows those files and prints each
new line after its host's name.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from sshcluster.inventory import Inventory
from sshcluster.launchplan import RenderOptions, launch_plan, with_library

if TYPE_CHECKING:
    from sshcluster.check.report import CheckReport

#: The run directory's folder of per-host worker logs.
WORKER_LOGS = "workers"
#: Seconds between two looks at the logs.
POLL = 0.2


def checked_as_a_job(inventory: Inventory) -> Inventory:
    """The inventory a job's check checks: its launch takes no lease (the job holds its
    hosts' leases itself, from before the check when it does not wait in line), so the
    check does not try the launch's (it would find the job's own lease holding it)."""
    return replace(inventory, lease=False)


def job_render_options(inventory: Inventory, options: RenderOptions,
                       logs: str | os.PathLike[str], *, checked: CheckReport,
                       own_ports: bool = False) -> RenderOptions:
    """``options`` for a job's bootstrap: the workers' output comes to the primary
    and into the per-host logs in ``logs`` unless the inventory or the options send it
    to a directory on the hosts (the classic launch has no such output). The job holds
    its hosts' leases itself, so its launch takes none. The workers load their
    packages first from sync's library for the inventory's packages, as named by the
    reference of the job's own check ``checked`` (the one the check compared the hosts
    with). ``own_ports``: see :class:`~sshcluster.bootstrap.RenderOptions`."""
    options = replace(with_library(inventory, options, checked), lease=False,
                      own_ports=own_ports)
    launch, output = launch_plan(inventory, options)
    if launch == "fast" and output in ("none", "console"):
        return replace(options, worker_output="console", worker_logs=str(logs))
    return options


class WorkerRelay:
    """Follows ``DIR/*.log`` in a thread and writes each whole new line to ``out`` as
    ``[HOST] line``; :meth:`stop` prints what is left and ends the thread."""

    def __init__(self, directory: Path, out: BinaryIO) -> None:
        self.directory = directory
        self.out = out
        self.seen: dict[Path, int] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _look(self) -> None:
        for path in sorted(self.directory.glob("*.log")):
            start = self.seen.get(path, 0)
            try:
                with path.open("rb") as f:
                    f.seek(start)
                    chunk = f.read()
            except OSError:
                continue
            end = chunk.rfind(b"\n")
            if end < 0:
                continue
            self.seen[path] = start + end + 1
            host = path.stem.encode()
            text = b"".join(b"[" + host + b"] " + line + b"\n"
                            for line in chunk[:end].split(b"\n"))
            with contextlib.suppress(OSError, ValueError):  # our terminal may be gone
                self.out.write(text)
                self.out.flush()

    def _follow(self) -> None:
        while not self.done.wait(POLL):
            self._look()

    def stop(self) -> None:
        """Print what is left, then stop following."""
        self.done.set()
        self.thread.join(5)
        self._look()
