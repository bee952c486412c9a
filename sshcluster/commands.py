"""Short local commands the check runs (``ssh -G``, ``Rscript --version``), each within a
deadline and each ended whole.

A command runs in its own process group: when its time is up, or the run that waits for
it is cancelled, the whole group is killed, so that a child it started (a ``Match exec``
command of ``ssh -G``, say) cannot outlive it, keep its output pipes open and hold the
check past its deadline. (So such a child has no controlling terminal either: a ``Match
exec`` command that asks on ``/dev/tty`` cannot, as it could not in a batch job.)
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
    except BaseException:
        # The group, whether or not its leader is still there: a child it left running
        # in the background (and holding its pipes) is what kept us waiting.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        # Its end and its pipes' (then asyncio has closed everything of it); but a
        # process that left the group could still hold them: not waited on for long.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.shield(asyncio.wait_for(_ended(proc), 2))
        raise
    assert proc.returncode is not None
    return Finished(proc.returncode, out, err)


async def _ended(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None and proc.stderr is not None
    await asyncio.gather(proc.stdout.read(), proc.stderr.read(), proc.wait())
