"""remote.sh's ``sums`` run by this machine's own ``sh`` (dash on Debian, as on the test
hosts), no ssh in between: its session must end as soon as the hashing has.

Its progress reporter runs beside the hashing and is stopped once the hashing ends. A
shell that traps TERM loses a TERM sent to a child it has just forked (dash: the signal
arrives before the child has dropped the inherited trap, and goes with it). So a hashing
that ended at once (a few small files) could leave the reporter running, and the session
open until the primary gave the host up as stalled (five minutes; CI's push test hung on
it). The race needs a loaded machine: here the runs go eight at a time, and on the code
before two to six in a thousand missed their deadline (each of four runs of this test
failed there). Each run gets a deadline far beyond what it needs.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sshcluster.push.transfer import remote_command, script

#: Runs, and how many at once.
RUNS, AT_ONCE = 1000, 8
#: A hang guard: each run ends in milliseconds; a reporter left running never does.
DEADLINE = 8


def test_sums_ends_as_soon_as_its_hashing_has(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x\n1\n")
    command = ["sh", "-c", remote_command("sums", str(tmp_path), "1")]

    def run(n: int) -> str:
        names = b"a.csv\n" if n % 2 else b""  # (nothing to hash: the quickest end)
        try:
            done = subprocess.run(command, input=script() + names, capture_output=True,
                                  timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            return f"run {n}: still running after {DEADLINE} s"
        if done.returncode != 0 or (names and not done.stdout.endswith(b"  a.csv\n")):
            return f"run {n}: status {done.returncode}, {done.stdout!r} {done.stderr!r}"
        return ""

    with ThreadPoolExecutor(AT_ONCE) as pool:
        failed = [why for why in pool.map(run, range(RUNS)) if why]
    assert not failed, f"{len(failed)} of {RUNS}: {failed[:3]}"
