"""Run an R script with a deadline, and say what was going on when it hangs.

The demo and the tests run R the same way: ``Rscript FILE``, bounded by a timeout. A
launch that hangs must not hang its caller; :func:`run_r` kills R at the deadline and
raises :class:`RTimeout`, which carries what R printed and, to understand the hang, the
fast launch's per-host files and the machine's process tree as they were at the deadline.

Example::

    from sshcluster.testing import RTimeout, run_r

    try:
        out = run_r("cluster-test.R", timeout=90)
    except RTimeout as e:
        print(e.message, e.diagnostics(), sep="\\n")
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from sshcluster.errors import SshclusterError

__all__ = ["RTimeout", "launcher_files", "process_tree", "run_r", "run_r_code"]


class RTimeout(SshclusterError):
    """R did not finish ``script`` within ``timeout`` seconds and was killed.

    ``stdout`` and ``stderr`` are what it printed (empty when not captured);
    ``launcher_files`` and ``processes`` are :func:`launcher_files` and
    :func:`process_tree` as they were at the deadline.
    """

    def __init__(
        self, message: str, *, script: Path, timeout: float, stdout: str, stderr: str,
        launcher_files: str, processes: str,
    ) -> None:  # fmt: skip
        self.script = script
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr
        self.launcher_files = launcher_files
        self.processes = processes
        super().__init__(message)

    def diagnostics(self) -> str:
        """What R printed, the launcher's files and the process tree, for a test's failure."""
        return (
            f"stdout: {self.stdout}\nstderr: {self.stderr}\n"
            f"launcher files:\n{self.launcher_files}\nprocesses:\n{self.processes}"
        )


def launcher_files(since: float, tmpdir: Path | str | None = None) -> str:
    """The per-host files (``.pid``, ``.status``, ``.out``, ``.err``) that fast launches of
    this machine's R sessions (with their ``TMPDIR`` in ``tmpdir``, by default this
    process's) wrote since ``since`` (a :func:`time.time`), one a line."""
    lines = []
    for d in _launch_dirs(Path(tmpdir or tempfile.gettempdir())):
        with contextlib.suppress(OSError):  # its session ended meanwhile
            for f in sorted(d.iterdir()):
                with contextlib.suppress(OSError):
                    if f.stat().st_mtime >= since:
                        lines.append(f"{f}: {f.read_text(errors='replace').strip()!r}")
    return "\n".join(lines)


def _launch_dirs(top: Path) -> list[Path]:
    """``top/Rtmp*/sshcluster-*``, skipping what other R sessions remove meanwhile (a
    glob over the whole pattern raised when a session's directory went mid-walk)."""
    out: list[Path] = []
    with contextlib.suppress(OSError):
        for session in top.glob("Rtmp*"):
            with contextlib.suppress(OSError):
                out.extend(session.glob("sshcluster-*"))
    return out


def process_tree() -> str:
    """Every process of this machine as a tree (``ps --forest``), with its age and its
    whole command line."""
    return subprocess.run(
        ["ps", "-ww", "-eo", "pid,ppid,pgid,stat,etimes,args", "--forest"],
        capture_output=True, text=True, check=False, timeout=30,
    ).stdout  # fmt: skip


def run_r(
    script: Path | str, *, timeout: float, capture: bool = True,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``Rscript script`` and return its result (``capture``: its output as text, else
    it goes to this process's stdout and stderr). ``env`` adds to this process's
    environment (``TMPDIR``, say).

    Raises :class:`RTimeout` if R runs longer than ``timeout`` seconds (R is killed), and
    :class:`~sshcluster.errors.SshclusterError` if Rscript is not installed.
    """
    started = time.time()
    pipe = subprocess.PIPE if capture else None
    try:
        # (bytes that are not UTF-8, a worker's Latin-1 text say, shown as \xNN escapes)
        proc = subprocess.Popen(["Rscript", str(script)], stdout=pipe, stderr=pipe, text=True,
                                errors="backslashreplace",
                                env=None if env is None else {**os.environ, **env})
    except FileNotFoundError:
        raise SshclusterError("Rscript is not installed",
                              hint="run scripts/setup.sh (installs r-base-core)") from None
    with proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Looked at before the kill: what was running is what explains the hang.
            where = launcher_files(started, (env or {}).get("TMPDIR"))
            ps = process_tree()
            proc.kill()
            out, err = proc.communicate()
            raise RTimeout(
                f"R did not finish within {timeout:g} s ({script})", script=Path(script),
                timeout=timeout, stdout=out or "", stderr=err or "", launcher_files=where,
                processes=ps,
            ) from None  # fmt: skip
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_r_code(code: str, directory: Path, *, timeout: float,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Write ``code`` to a new ``run-*.R`` in ``directory`` and :func:`run_r` it."""
    script = directory / f"run-{time.monotonic_ns()}.R"
    script.write_text(code)
    return run_r(script, timeout=timeout, env=env)
