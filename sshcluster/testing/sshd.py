"""One test host's OpenSSH server, and the ssh files that reach it.

The OpenSSH half of a :class:`~sshcluster.testing.Testbed` (the namespaces are
:mod:`sshcluster.testing.netns`):
ed25519 key pairs made with ``ssh-keygen``; the ``sshd_config`` of a test sshd (public
key logins only, root included; no PAM, no DNS lookups, room for the many sessions R
opens at once); starting ``sshd -D`` in the foreground, so that its pid is the pid of our child;
waiting until it answers with its banner, or failing with the tail of its logs; finding
a free port; the known_hosts names ssh looks up; and the fresh ``~/.bashrc`` a test host
gets, so that an ssh session does not run this machine's shell setup.

One sshd's files live in one directory ``d``: its host key ``d/ssh_host_ed25519_key``,
``d/sshd_config``, ``d/sshd.pid``, its log ``d/sshd.log`` and ``d/start.err`` for what it
prints before it logs. Nothing here knows about namespaces: to run sshd inside one, wrap
:func:`sshd_argv` and pass the result to :func:`popen_sshd`.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from sshcluster.errors import TestbedError
from sshcluster.files import atomic_write
from sshcluster.net import ssh_banner
from sshcluster.testing.netns import run_command

__all__ = [
    "FRESH_BASHRC",
    "HOST_KEY",
    "SSHD",
    "choose_port",
    "free_port",
    "keygen",
    "make_host_key",
    "popen_sshd",
    "port_free",
    "ssh_config_text",
    "sshd_argv",
    "sshd_config",
    "stop_sshd",
    "wait_banner",
    "write_file",
    "write_sshd_config",
]

#: The OpenSSH server (Debian's openssh-server).
SSHD = "/usr/sbin/sshd"

#: The name of an sshd's host key (private half) in its directory.
HOST_KEY = "ssh_host_ed25519_key"

#: A fresh Debian root ~/.bashrc, for non-interactive shells: nothing runs.
FRESH_BASHRC = (
    "# ~/.bashrc of a test host, as on a fresh machine: nothing for non-interactive shells\n"
    "case $- in *i*) ;; *) return ;; esac\n"
)


def keygen(path: Path, comment: str) -> str:
    """Make an ed25519 key pair at ``path`` with ssh-keygen; return the public key line."""
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)  # ssh-keygen asks before overwriting; nobody would answer
    run_command(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        what=f"ssh-keygen for {path}",
    )
    return " ".join(path.with_name(path.name + ".pub").read_text().split()[:2])


def make_host_key(d: Path, comment: str) -> str:
    """Make (or replace) the host key of the sshd of directory ``d``; return its public key."""
    return keygen(d / HOST_KEY, comment)


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` with exactly ``mode`` (sshd and ssh check key modes)."""
    atomic_write(path, text, mode=mode)
    path.chmod(mode)  # whatever the umask took away


def sshd_config(
    *, listen: str, port: int, key: Path, pidfile: Path, authorized_keys: str, title: str
) -> str:
    """The sshd_config of a test sshd listening on ``listen:port``."""
    # MaxStartups/MaxSessions: R opens one ssh session per worker, many at once.
    # AcceptEnv: as Debian's, Ubuntu's and Red Hat's sshd (their ssh sends LANG, LC_*).
    return f"""\
# written by sshcluster testbed: {title}
ListenAddress {listen}:{port}
AddressFamily inet
HostKey {key}
PidFile {pidfile}
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
LogLevel INFO
MaxStartups 100:30:200
MaxSessions 100
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
"""


def write_sshd_config(
    d: Path, *, listen: str, port: int, authorized_keys: str, title: str
) -> None:
    """Write ``d/sshd_config``, with the host key and pid file of directory ``d``."""
    write_file(
        d / "sshd_config",
        sshd_config(
            listen=listen,
            port=port,
            key=d / HOST_KEY,
            pidfile=d / "sshd.pid",
            authorized_keys=authorized_keys,
            title=title,
        ),
    )


def sshd_argv(d: Path) -> list[str]:
    """sshd in the foreground with the config and the log in directory ``d``."""
    return [SSHD, "-D", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")]


def popen_sshd(d: Path, argv: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` (an sshd of directory ``d``) with a fresh log; its own output goes
    to ``d/start.err``."""
    (d / "sshd.log").unlink(missing_ok=True)
    with open(d / "start.err", "wb") as err:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            start_new_session=True,  # Ctrl-C in the terminal is for us, not sshd
        )


def stop_sshd(proc: subprocess.Popen[bytes]) -> None:
    """Stop an sshd started by :func:`popen_sshd`, if it runs: its listener goes, the
    sessions it forked keep running."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def wait_banner(
    address: str, port: int, deadline: float, proc: subprocess.Popen[bytes], logs: Sequence[Path]
) -> None:
    """Wait until an SSH server answers with its banner on address:port, or fail."""
    while True:
        if proc.poll() is not None:
            detail = " | ".join(t for t in (_tail(p) for p in logs) if t)
            raise TestbedError(
                f"sshd for {address}:{port} exited with status {proc.returncode}"
                + (f": {detail}" if detail else "")
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TestbedError(f"sshd on {address}:{port} did not answer in time")
        if ssh_banner(address, port, timeout=min(remaining, 0.5)):
            return
        time.sleep(0.02)


def port_free(address: str, port: int) -> bool:
    """Whether sshd could listen on ``address:port`` now."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as sshd does
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def free_port(address: str = "0.0.0.0") -> int:
    """A TCP port on ``address`` that nothing listens on now (by default: on no address;
    bound for a moment, no traffic)."""
    with socket.socket() as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port


def choose_port(address: str, port: int | None = None) -> int:
    """``port`` if given; else 22 if sshd could listen on ``address:22``, else a free port."""
    if port is not None:
        return port
    # A new address is free, but a wildcard listener (0.0.0.0:22) blocks its port 22 too.
    return 22 if port_free(address, 22) else free_port(address)


def ssh_config_text(
    hosts: Iterable[tuple[str, str, int]], *, user: str, identity_file: Path, known_hosts: Path
) -> str:
    """An ssh_config (for ``ssh -F``) with one ``Host`` block per ``(alias, address, port)``:
    ``user`` logs in with ``identity_file`` only, with host key checking on against
    ``known_hosts``."""
    blocks = ["# written by sshcluster testbed: use with ssh -F THIS_FILE HOSTNAME\n"]
    for alias, address, port in hosts:
        blocks.append(
            f"Host {alias}\n"
            f"  HostName {address}\n"
            f"  Port {port}\n"
            f"  User {user}\n"
            f"  IdentityFile {identity_file}\n"
            f"  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {known_hosts}\n"
            f"  StrictHostKeyChecking yes\n"
        )
    return "\n".join(blocks)
