"""What the push tests share: a source tree, and what a host holds, read over ssh (the
hosts' destinations are private tmpfs mounts that only their sshd sees)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import sshcluster
from sshcluster.testing import Testbed
from sshcluster.testing.hosts import TestHost

DEST = "/srv/push"

#: ``sshcluster`` as a command, this checkout's from any directory.
SSHCLUSTER = [sys.executable, "-m", "sshcluster"]


def cli_env() -> dict[str, str]:
    """The environment for :data:`SSHCLUSTER`: this checkout's package first."""
    here = str(Path(sshcluster.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [here, *filter(None, [os.environ.get("PYTHONPATH")])])}


def path_without(bindir: Path, hidden: tuple[str, ...]) -> str:
    """A directory of links to every command in /usr/bin and /bin but ``hidden``."""
    bindir.mkdir()
    for d in ("/usr/bin", "/bin"):
        for name in os.listdir(d):
            if name not in hidden and not os.path.lexists(bindir / name):
                os.symlink(os.path.join(d, name), bindir / name)
    return str(bindir)


def make_tree(root: Path, *, small: int = 200, big: int = 8 << 20) -> Path:
    """``root/data``: ``small`` small files in nested directories, one of ``big`` bytes,
    a private file, a link inside and one leading outside."""
    data = root / "data"
    for i in range(small):
        d = data / f"d{i % 7}" / f"e{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.csv").write_text(f"x,y\n{i},{i * i}\n" * (i % 5 + 1))
    (data / "big.bin").write_bytes(os.urandom(big))
    (data / "secret.txt").write_text("private\n")
    (data / "secret.txt").chmod(0o600)
    (data / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (data / "run.sh").chmod(0o755)
    os.symlink("big.bin", data / "inside")
    os.symlink("../../../etc/passwd", data / "outside")
    return data


def local_state(data: Path) -> dict[str, tuple[str, str]]:
    """rel path (under data's parent) -> (octal mode, sha256 or link target)."""
    out = {}
    for p in data.rglob("*"):
        rel = p.relative_to(data.parent).as_posix()
        if p.is_symlink():
            if p.name != "outside":
                out[rel] = ("777", "-> " + os.readlink(p))
        elif p.is_file():
            out[rel] = (oct(p.stat().st_mode & 0o777)[2:],
                        hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def remote_state(tb: Testbed, host: TestHost, dest: str = DEST) -> dict[str, tuple[str, str]]:
    """The same, as ``host`` holds it under ``dest`` (staging leftovers included)."""
    # (a file that goes while it is listed, a staging directory the host is removing, is
    # not there)
    script = (f"cd {dest} && find . -mindepth 1 ! -type d -printf '%m %y %P\\n' | "
              "while read -r m y p; do if [ $y = l ]; then echo \"$m $p -> $(readlink $p)\";"
              " elif s=$(sha256sum < $p 2>/dev/null); then echo \"$m $p ${s%% *}\"; fi;"
              " done")
    out = subprocess.run(tb.ssh_argv(host, script), capture_output=True, text=True,
                         timeout=60, check=True).stdout
    state = {}
    for line in out.splitlines():
        mode, rel, rest = line.split(" ", 2)
        state[rel] = (mode, rest)
    return state


def stop_once_running(tb: Testbed, host: TestHost, name: str,
                      proc: subprocess.Popen[bytes]) -> list[int]:
    """Waits (up to 60 s, while ``proc`` runs) for ``host``'s processes called ``name``,
    then stops them (SIGSTOP) and returns their pids. (Its own: the hosts share this
    machine's processes, so a pkill would hit the other hosts' too.)"""
    deadline = time.monotonic() + 60
    while not (pids := tb.processes(host, name)):
        assert time.monotonic() < deadline and proc.poll() is None, f"no {name} on {host}"
        time.sleep(0.05)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids
