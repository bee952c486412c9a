"""Throwaway accounts on this machine, which the test hosts share: an ordinary user (not
root) with a login shell and a login directory of the test's choosing."""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def processes_of(user: str) -> list[str]:
    """``pgrep -a`` lines of the account's processes."""
    out = subprocess.run(["pgrep", "-a", "-u", user], capture_output=True, text=True)
    return out.stdout.splitlines()


@contextlib.contextmanager
def throwaway_account(shell: str, prefix: str = "sc") -> Iterator[tuple[str, Path]]:
    """An account named ``prefix`` and 6 hex digits, with login shell ``shell`` and an
    empty login directory (mode 0755, the account's), removed with the directory at the
    end, once no process of the account runs (those left after 15 s are killed)."""
    name = f"{prefix}{secrets.token_hex(3)}"
    home = Path(tempfile.mkdtemp(prefix=f"sshcluster-{name}-"))
    home.chmod(0o755)  # (it may be a mount point: the account must reach what is there)
    try:
        subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell",
                        shell, "--user-group",
                        # no password, but not locked: sshd refuses a locked account ("!")
                        "--password", "*", name], check=True, capture_output=True)
        try:
            shutil.chown(home, user=name)
            yield name, home
        finally:
            # (userdel refuses while a process of the account runs)
            deadline = time.monotonic() + 15
            while processes_of(name) and time.monotonic() < deadline:
                time.sleep(0.1)
            subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
            deadline = time.monotonic() + 5
            while processes_of(name) and time.monotonic() < deadline:
                time.sleep(0.1)
            subprocess.run(["userdel", name], check=True, capture_output=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def authorize(home: Path, user: str, identity_file: Path) -> None:
    """Lets the key of ``identity_file`` (its ``.pub``) log in to the account."""
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(Path(f"{identity_file}.pub").read_text())
    for p in (ssh_dir, ssh_dir / "authorized_keys"):
        shutil.chown(p, user=user)
