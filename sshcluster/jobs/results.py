"""A job's results: the files its workers wrote under ``results/`` in their workdir,
brought back from every host into one directory.

    report = fetch_results(inventory, "out/")
    report.files        # {"node1": 3, ...}: files brought from each host
    report.errors       # {"node4": "ssh: connect to host ...": hosts that failed}

A file whose name (its path under ``results/``) is found on one host only lands at
``out/NAME``; a name found on several hosts (or a file of one host's where another's has a
directory: ``fit`` and ``fit/a.rds``) lands at ``out/HOST/NAME`` for each of them, so no
host's file overwrites another's. A file that cannot be written (a directory of its name
already in ``out``) is named in the host's error; its other files still come. Each host
sends a tar stream; only regular files and directories are kept (no links, devices,
absolute names or ``..``), so a host cannot write outside ``out/``. Every host is asked at
once, and every host's outcome is kept.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sshcluster.errors import SshclusterError
from sshcluster.inventory import Host, Inventory
from sshcluster.jobs.remote import argv, dir_word, script_input

#: The directory, under each worker's workdir, whose files come back.
RESULTS = "results"
#: Seconds a host may be silent while sending its results before it is given up.
SILENCE_TIMEOUT = 300.0


class ResultsError(SshclusterError):
    """The results' directory cannot be made or written here."""

    exit_code = 2


_WHERE = "name a directory you can write with --results / --to"


def _make(path: Path, made: list[Path]) -> None:
    """``path`` and its missing parents made (as ``mkdir -p``), each one made here noted
    in ``made``, outermost first."""
    for again in (False, True):
        try:
            path.mkdir()
        except FileNotFoundError:
            if again or path.parent == path:
                raise
            _make(path.parent, made)
            continue
        except FileExistsError:  # (also NEW/.. once NEW is made, or made meanwhile)
            if path.is_dir():
                return
            raise NotADirectoryError(errno.ENOTDIR, "it is there and not a directory") from None
        made.append(path)
        return


def results_dir(dest: str | os.PathLike[str], *, keep: bool = True) -> Path:
    """``dest``, made if missing, once it is known that results can be written there.
    With ``keep=False`` it only proves that: what it made for the proof (``dest`` and
    any missing parents) is removed again at once, so a job that is then refused (a
    failed check, a leased host) leaves the file system as it was; its results' own
    directory is made when they come (:func:`fetch_results`)."""
    out = Path(dest)
    made: list[Path] = []
    try:
        try:
            _make(out, made)
        except OSError as e:
            raise ResultsError(f"cannot make the results' directory {out}: "
                               f"{e.strerror or e}", hint=_WHERE) from None
        if not os.access(out, os.W_OK | os.X_OK):
            raise ResultsError(f"cannot write in the results' directory {out}", hint=_WHERE)
    finally:
        if not keep:
            for path in reversed(made):
                try:
                    path.rmdir()
                except OSError:  # (something came in meanwhile: not ours to remove)
                    break
    return out


class _Watched:
    """``stream``'s reads, each noted: a watchdog (``_watch``) kills the sender once
    nothing has come for SILENCE_TIMEOUT seconds (a long transfer that keeps coming is
    never cut off)."""

    def __init__(self, stream) -> None:  # type: ignore[no-untyped-def]
        self.stream = stream
        self.last = time.monotonic()

    def read(self, n: int = -1) -> bytes:
        # (read1: what has come, at once; a full read would wait for n bytes, and a
        # slow steady sender would look silent meanwhile. tarfile reads on until it
        # has what it needs.)
        data: bytes = self.stream.read1(n)
        self.last = time.monotonic()
        return data


def _watch(watched: _Watched, proc: subprocess.Popen[bytes], done: threading.Event,
           silence: float) -> None:
    while not done.wait(min(5.0, silence)):
        if time.monotonic() - watched.last > silence:
            proc.kill()
            return


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
        watched = _Watched(proc.stdout)
        done = threading.Event()
        threading.Thread(target=_watch, args=(watched, proc, done, SILENCE_TIMEOUT),
                         daemon=True).start()
        try:
            first = proc.stdout.peek(1) if hasattr(proc.stdout, "peek") else b"x"
            watched.last = time.monotonic()
            if first:
                with tarfile.open(fileobj=watched, mode="r|") as tar:  # type: ignore[call-overload]
                    for member in tar:
                        if not (member.isfile() or member.isdir()):
                            continue  # links, devices, fifos: never written here
                        tar.extract(member, staging, filter="data")
                        files += member.isfile()
        finally:
            done.set()
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


def _shared(names: dict[str, list[str]]) -> set[str]:
    """The names that would meet in one directory: the same name from several hosts,
    or one host's file where another's has a directory (``fit`` and ``fit/a.rds``)."""
    hosts_of: dict[str, set[str]] = {}
    dirs_of: dict[str, set[str]] = {}
    for label, found in names.items():
        for name in found:
            hosts_of.setdefault(name, set()).add(label)
            parts = name.split("/")
            for i in range(1, len(parts)):
                dirs_of.setdefault("/".join(parts[:i]), set()).add(label)
    shared = {n for n, at in hosts_of.items() if len(at) > 1}
    for d, at in dirs_of.items():
        if d in hosts_of:  # (one host cannot have both: these are others')
            shared.add(d)
            shared.update(n for label in at for n in names[label]
                          if n.startswith(d + "/"))
    return shared


def fetch_results(inventory: Inventory, dest: str | os.PathLike[str],
                  hosts: Sequence[Host] | None = None) -> ResultsReport:
    """Bring every host's ``results/`` (under its workdir) into ``dest`` (see the
    module's text); ``hosts`` defaults to the inventory's."""
    out = results_dir(dest)
    chosen = list(hosts if hosts is not None else inventory.hosts)
    staging = {h.label: out / f".incoming-{host_dir_name(h.label)}" for h in chosen}
    report = ResultsReport(dest=str(out))
    try:
        for path in staging.values():
            shutil.rmtree(path, ignore_errors=True)
            try:
                path.mkdir()
            except OSError as e:
                raise ResultsError(f"cannot make {path}: {e.strerror or e}") from None
        with ThreadPoolExecutor(max(1, min(16, len(chosen)))) as pool:
            outcomes = list(pool.map(lambda h: _receive(inventory, h, staging[h.label]),
                                     chosen))
        names = {h.label: _names(staging[h.label])
                 for h, (_, problem) in zip(chosen, outcomes, strict=True) if problem is None}
        shared = _shared(names)
        for h, (_, problem) in zip(chosen, outcomes, strict=True):
            if problem is not None:
                report.errors[h.label] = problem
                continue
            moved, failed = 0, []
            for name in names[h.label]:
                target = (out / host_dir_name(h.label) / name if name in shared
                          else out / name)
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staging[h.label] / name, target)
                    moved += 1
                except OSError as e:
                    # (a directory of that name already in DEST, a full disk: the
                    # host's other files still come)
                    failed.append(f"{target}: {e.strerror or e}")
            if failed:
                report.errors[h.label] = (f"could not write {len(failed)} of its files, "
                                          f"the first {failed[0]}")
            report.files[h.label] = moved
    finally:
        for path in staging.values():
            shutil.rmtree(path, ignore_errors=True)
    return report
