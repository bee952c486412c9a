"""The check's ``shared_dir`` step: is the inventory's shared directory really one
directory, seen the same on every host?

A fresh marker file (a random name and content per check run) is written there once:
by the primary when the primary has the directory, else by the first host, over its
check's ssh connection. Every other host then reads it over its own connection and must
find the same content; one that does not fails the step, and the message names the host
and says what it has at that path instead (``df`` of the directory: another filesystem,
or nothing). The writer removes the marker once every host has looked, or gave up.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import asyncssh

from sshcluster.check.report import NO_SHARED_DIR, StepResult
from sshcluster.push.marker import SharedMarker
from sshcluster.quoting import shell_quote

if TYPE_CHECKING:  # (steps imports this module)
    from sshcluster.check.context import HostCheck

__all__ = ["shared_dir_step"]

#: Seconds the writing host waits for the others to look, at most.
_WAIT = 30.0


async def shared_dir_step(hc: HostCheck) -> StepResult:
    """``shared_dir``: this host sees the marker, with the same content."""
    m = hc.ctx.shared
    label = hc.host.label
    if m is None:
        return NO_SHARED_DIR
    assert hc.conn is not None
    try:
        if m.writer == label:
            return await _write(hc, m)
        return await _look(hc, m)
    finally:
        if m.writer != label:
            m.looked(label)


async def _write(hc: HostCheck, m: SharedMarker) -> StepResult:
    assert hc.conn is not None
    m.waiting.discard(m.writer)
    tmp = shell_quote(m.path + ".tmp")
    try:
        r = await hc.conn.run(f"umask 022; printf %s {m.content} > {tmp} && "
                              f"mv -f {tmp} {shell_quote(m.path)}",
                              timeout=max(1.0, hc.ctx.remaining()))
        failed = r.exit_status != 0
        said = str(r.stderr or "").strip()
    except (asyncssh.Error, OSError, asyncio.TimeoutError) as e:
        failed, said = True, str(e) or type(e).__name__
    if failed:
        m.written.set_result(f"{m.writer} could not write it: {said}")
        m.looked(m.writer)
        return StepResult("failed", f"cannot write a marker in shared_dir {m.directory} on "
                                    f"{m.writer}: {said}",
                          hint="the primary does not have the directory, so the first host "
                               "writes the marker: it must be writable there")
    m.written.set_result(None)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(m.all_looked.wait(),
                               max(0.0, min(_WAIT, hc.ctx.remaining() - 1.0)))
    with contextlib.suppress(asyncssh.Error, OSError, asyncio.TimeoutError):
        await hc.conn.run(f"rm -f {shell_quote(m.path)}", timeout=5)
    return StepResult("ok", f"wrote the marker in {m.directory} (the primary does not have "
                            "it), for every other host to see")


async def _look(hc: HostCheck, m: SharedMarker) -> StepResult:
    assert hc.conn is not None
    label = hc.host.label
    try:
        why = await asyncio.wait_for(asyncio.shield(m.written), hc.ctx.remaining())
    except asyncio.TimeoutError:
        return StepResult("failed", f"{m.writer} did not write the marker in shared_dir "
                                    f"{m.directory} within the deadline")
    if why:
        return StepResult("failed", f"no marker in shared_dir {m.directory} to look for: {why}")
    d = shell_quote(m.directory)
    try:
        r = await hc.conn.run(f"cat -- {shell_quote(m.path)} 2>/dev/null; echo; "
                              f"df -P -- {d} 2>&1 | tail -n 1",
                              timeout=max(1.0, hc.ctx.remaining()))
        out = str(r.stdout or "").split("\n")
    except (asyncssh.Error, OSError, asyncio.TimeoutError) as e:
        return StepResult("failed", f"cannot read shared_dir {m.directory} on {label}: {e}")
    if out and out[0] == m.content:
        return StepResult("ok", f"sees the marker {m.writer} wrote in {m.directory}")
    where = out[1].split() if len(out) > 1 else []
    there = (f"there {m.directory} is on {where[0]}, mounted at {where[-1]}"
             if len(where) >= 6 and where[-1].startswith("/")
             else f"there {m.directory} does not exist")
    seen = "a different marker" if out and out[0] else "no marker"
    return StepResult(
        "failed", f"{label} lacks the shared mount {m.directory}: it sees {seen} where "
                  f"{m.writer} wrote one ({there})",
        hint=f"mount the shared filesystem at {m.directory} on {label} (see /etc/fstab), or "
             "remove shared_dir: from the inventory")
