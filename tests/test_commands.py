"""Short local commands run within a deadline and ended whole (sshcluster.commands)."""

from __future__ import annotations

import asyncio
import secrets
import subprocess

import pytest

from sshcluster.commands import run_command


def running(pattern: str) -> bool:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0


def test_output_and_status() -> None:
    done = asyncio.run(run_command(["sh", "-c", "echo out; echo err >&2; exit 3"], 5))
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")


def test_a_missing_command_raises() -> None:
    with pytest.raises(FileNotFoundError):
        asyncio.run(run_command(["/nonexistent/sshcluster-command"], 5))


@pytest.mark.timeout(20)
def test_a_child_left_in_the_background_is_ended_at_the_deadline() -> None:
    """The command itself exits at once, but leaves a child holding its output pipes:
    the deadline still holds, and the child is killed with the group."""
    seconds = f"30.{secrets.randbelow(10**9):09d}"
    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(run_command(["sh", "-c", f"sleep {seconds} & exit 0"], 1))
    assert not running(f"sleep {seconds}")


@pytest.mark.timeout(20)
def test_cancelled_while_running_ends_the_group() -> None:
    seconds = f"30.{secrets.randbelow(10**9):09d}"

    async def main() -> None:
        task = asyncio.create_task(run_command(["sh", "-c", f"sleep {seconds}; true"], 60))
        await asyncio.sleep(0.5)
        assert running(f"sleep {seconds}")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert not running(f"sleep {seconds}")
