"""forward.pl, the chain's hop (tee -p without copying), run here with real pipes and a
fifo, as remote.sh runs it on each host of a chain: both outputs get every byte; an
output that goes is dropped and the other still gets everything; both gone, it stops;
stdin not a pipe, or splice() and tee() refused, it still forwards."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import threading
from importlib import resources
from pathlib import Path
from typing import IO

import pytest

FORWARD = resources.files("sshcluster.push").joinpath("forward.pl").read_text("utf-8")
#: splice(2) and tee(2), as remote.sh passes them
NUMBERS = {"x86_64": ("275", "276"), "aarch64": ("76", "77")}.get(platform.machine())

pytestmark = [
    pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed"),
    pytest.mark.skipif(NUMBERS is None, reason="splice/tee numbers known for x86_64 and "
                                               "aarch64 only"),
]

DATA = os.urandom(1 << 20) * 24 + os.urandom(12345)  # 24 MiB and a bit, past any pipe


class Reader(threading.Thread):
    """Reads a file object to its end (or ``stop_after`` bytes, then closes it)."""

    def __init__(self, path_or_file: object, stop_after: int | None = None) -> None:
        super().__init__(daemon=True)
        self.source = path_or_file
        self.stop_after = stop_after
        self.got = bytearray()

    def run(self) -> None:
        if isinstance(self.source, Path):
            with open(self.source, "rb") as f:
                self._drain(f)
        else:
            with self.source as f:  # type: ignore[attr-defined]
                self._drain(f)

    def _drain(self, f: IO[bytes]) -> None:
        while chunk := f.read(1 << 16):
            self.got += chunk
            if self.stop_after is not None and len(self.got) >= self.stop_after:
                return


def _forward(tmp_path: Path, *, fifo_stops: int | None = None,
             out_stops: int | None = None, numbers: tuple[str, str] | None = None,
             stdin_file: bool = False, keep_open: bool = False
             ) -> tuple[int, Reader, Reader]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    local = Reader(fifo, fifo_stops)
    local.start()
    (tmp_path / "in").write_bytes(DATA)
    # as remote.sh runs it: the shell opens the fifo as descriptor 4
    argv = ["sh", "-c", 'exec perl -e "$1" "$2" "$3" "$4" 4>"$4"', "sh", FORWARD,
            *(numbers or NUMBERS), str(fifo)]
    # a tee that notes it ran: forward.pl must run it only where it cannot splice
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tee").write_text(
        f"#!/bin/sh\necho tee >> {tmp_path / 'tee-ran'}\nexec {shutil.which('tee')} \"$@\"\n")
    (tmp_path / "bin" / "tee").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    with open(tmp_path / "in", "rb") as data:
        proc = subprocess.Popen(argv, stdin=data if stdin_file else subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env)
    out = Reader(proc.stdout, out_stops)
    out.start()
    if not stdin_file:
        assert proc.stdin is not None
        try:
            for i in range(0, len(DATA), 1 << 20):
                proc.stdin.write(DATA[i:i + (1 << 20)])
            if not keep_open:
                proc.stdin.close()
        except BrokenPipeError:  # both outputs gone: the forwarder stopped reading
            pass
    rc = proc.wait(timeout=60)
    if proc.stdin is not None:
        proc.stdin.close()
    out.join(60)
    local.join(60)
    assert not out.is_alive() and not local.is_alive()
    assert (tmp_path / "tee-ran").exists() == stdin_file
    return rc, out, local


def test_both_outputs_get_every_byte(tmp_path: Path) -> None:
    rc, out, local = _forward(tmp_path)
    assert rc == 0
    assert out.got == DATA and local.got == DATA


def test_a_local_reader_that_gives_up_leaves_the_next_host_everything(tmp_path: Path
                                                                      ) -> None:
    # (a tar on a full disk)
    rc, out, local = _forward(tmp_path, fifo_stops=1 << 20)
    assert rc == 0
    assert out.got == DATA
    assert DATA.startswith(bytes(local.got))


def test_a_next_host_that_goes_leaves_this_host_everything(tmp_path: Path) -> None:
    rc, out, local = _forward(tmp_path, out_stops=1 << 20)
    assert rc == 0
    assert local.got == DATA
    assert DATA.startswith(bytes(out.got))


def test_both_gone_it_stops_reading(tmp_path: Path) -> None:
    # stdin stays open after the data: a forwarder that read on to its end would never
    # end (and wait() would time out)
    rc, _, _ = _forward(tmp_path, fifo_stops=1 << 20, out_stops=2 << 20, keep_open=True)
    assert rc == 0


def test_stdin_not_a_pipe_is_forwarded_by_tee(tmp_path: Path) -> None:
    rc, out, local = _forward(tmp_path, stdin_file=True)
    assert rc == 0
    assert out.got == DATA and local.got == DATA


@pytest.mark.parametrize("stops", [None, "fifo", "out"])
@pytest.mark.parametrize("refused", ["both", "splice"])
def test_without_splice_and_tee_it_reads_and_writes(tmp_path: Path, stops: str | None,
                                                    refused: str) -> None:
    # A system call number no kernel has: ENOSYS, as under a seccomp filter that lacks
    # them (splice alone: after tee() has sent the bytes on); the copy must then be as
    # whole as with them.
    assert NUMBERS is not None
    numbers = ("99999", "99999") if refused == "both" else ("99999", NUMBERS[1])
    rc, out, local = _forward(tmp_path, numbers=numbers,
                              fifo_stops=(1 << 20) if stops == "fifo" else None,
                              out_stops=(1 << 20) if stops == "out" else None)
    assert rc == 0
    if stops != "out":
        assert out.got == DATA
    if stops != "fifo":
        assert local.got == DATA
