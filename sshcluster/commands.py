"""Short local commands the check runs (``ssh -G``, ``Rscript --version``), each within a
deadline and each ended whole.

A command runs in its own process group: when its time is up, or the run that waits for
it is cancelled, the whole group is killed, so that a child it started (a ``Match exec``
command of ``ssh -G``, say) cannot outlive it, keep its output pipes open and hold the
check past its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Finished:
    """A command that ended by itself: its exit status and what it printed."""

    returncode: int
    stdout: bytes
    stderr: bytes


async def run_command(argv: Sequence[str], timeout: float) -> Finished:
    """Run ``argv`` with no stdin; return how it ended.

    Raises :class:`FileNotFoundError` (or another :class:`OSError`) when it cannot be
    started and :class:`asyncio.TimeoutError` when it runs for more than ``timeout``
    seconds. Either way, and on cancellation, nothing it started is left running.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(proc.wait())
    assert proc.returncode is not None
    return Finished(proc.returncode, out, err)
