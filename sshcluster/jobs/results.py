"""A job's results: the files its workers wrote under ``results/`` in their workdir,
brought back from every host into one directory.

    report = fetch_results(inventory, "out/")
    report.files        # {"node1": 3, ...}: files brought from each host
    report.errors       # {"node4": "ssh: connect to host ...": hosts that failed}

A file whose name (its path under ``results/``) is found on one host only lands at
``out/NAME``; a name found on several hosts lands at ``out/HOST/NAME`` for each of them,
so no host's file overwrites another's. Each host sends a tar stream; only regular files
and directories are kept (no links, devices, absolute names or ``..``), so a host cannot
write outside ``out/``. Every host is asked at once, and every host's outcome is kept.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sshcluster.inventory import Host, Inventory
from sshcluster.jobs.remote import argv, dir_word, script_input

#: The directory, under each worker's workdir, whose files come back.
RESULTS = "results"
#: Seconds a host may be silent while sending its results before it is given up.
SILENCE_TIMEOUT = 300.0


@dataclass(frozen=True)
class ResultsReport:
    """What came back: ``files`` per host label, ``errors`` per host that failed, and
    ``dest``, the directory they went to."""

    dest: str
    files: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Files brought back from all hosts."""
        return sum(self.files.values())


def host_dir_name(label: str) -> str:
    """A host's label as a directory name (``[::1]:2222`` -> ``__1_2222``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", label).strip("_") or "host"


def _sender(inventory: Inventory) -> str:
    wd = inventory.workdir
    enter = f"cd -- {dir_word(wd)} 2>/dev/null || exit 0\n" if wd else ""
    return (enter + f"[ -d {RESULTS} ] || exit 0\n"
            f"exec tar -C {RESULTS} -cf - .\n")


def _receive(inventory: Inventory, host: Host, staging: Path) -> tuple[int, str | None]:
    """Unpack ``host``'s results into ``staging``; return (files, error or None)."""
    proc = subprocess.Popen(argv(inventory, host), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    files, problem = 0, None
    try:
        proc.stdin.write(script_input(_sender(inventory)))
        proc.stdin.close()
        timer = threading.Timer(SILENCE_TIMEOUT, proc.kill)
        timer.start()
        try:
            first = proc.stdout.peek(1) if hasattr(proc.stdout, "peek") else b"x"
            if first:
                with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                    for member in tar:
                        if not (member.isfile() or member.isdir()):
                            continue  # links, devices, fifos: never written here
                        tar.extract(member, staging, filter="data")
                        files += member.isfile()
        finally:
            timer.cancel()
    except (tarfile.TarError, OSError) as e:
        problem = f"its results could not be read: {e}"
    finally:
        with contextlib.suppress(OSError):
            proc.stdout.close()
        try:
            rc = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        reader.join(5)
    if rc != 0 and problem is None:
        said = b"".join(err).decode(errors="replace").strip().splitlines()
        problem = said[-1] if said else f"exit status {rc}"
    return files, problem


def _names(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def fetch_results(inventory: Inventory, dest: str | os.PathLike[str],
                  hosts: Sequence[Host] | None = None) -> ResultsReport:
    """Bring every host's ``results/`` (under its workdir) into ``dest`` (see the
    module's text); ``hosts`` defaults to the inventory's."""
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    chosen = list(hosts if hosts is not None else inventory.hosts)
    staging = {h.label: out / f".incoming-{host_dir_name(h.label)}" for h in chosen}
    for path in staging.values():
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
    report = ResultsReport(dest=str(out))
    try:
        with ThreadPoolExecutor(max(1, min(16, len(chosen)))) as pool:
            outcomes = list(pool.map(lambda h: _receive(inventory, h, staging[h.label]),
                                     chosen))
        names = {h.label: _names(staging[h.label]) for h in chosen}
        seen: dict[str, int] = {}
        for label, (_, problem) in zip(names, outcomes, strict=True):
            if problem is None:
                for name in names[label]:
                    seen[name] = seen.get(name, 0) + 1
        for h, (_, problem) in zip(chosen, outcomes, strict=True):
            if problem is not None:
                report.errors[h.label] = problem
                continue
            for name in names[h.label]:
                target = out / name if seen[name] == 1 else out / host_dir_name(h.label) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging[h.label] / name, target)
            report.files[h.label] = len(names[h.label])
    finally:
        for path in staging.values():
            shutil.rmtree(path, ignore_errors=True)
    return report
