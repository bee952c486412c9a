"""A user's own ssh setup on the primary, for tests, without touching this machine's.

OpenSSH finds ``~/.ssh`` through the passwd database, not ``$HOME``, so a test cannot
point ssh at another home. A :class:`Client` holds the files a user would have
(``/root/.ssh/config``, ``/root/.ssh/known_hosts``, ``/etc/ssh/ssh_known_hosts``, ...)
in a directory of the test's, and :meth:`Client.run` runs a command in a private mount
namespace where ``/root/.ssh``, ``/etc/ssh`` and ``/etc/hosts`` are those files: the
command, and every ssh it starts (a launch's included), sees them at the real paths.

Example::

    client = Client(tmp_path)
    client.trust(testbed)                 # the testbed's key and host keys, as a user has them
    out = client.run("Rscript", "cluster-test.R")
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sshcluster.testing.testbed import Testbed

__all__ = ["Client"]

#: Run argv with $1 on /root/.ssh, $2 on /etc/ssh and $3 on /etc/hosts, in a mount
#: namespace of its own.
_ENTER = ('mount --bind "$1" /root/.ssh && mount --bind "$2" /etc/ssh'
          ' && mount --bind "$3" /etc/hosts && shift 3 && exec "$@"')


@dataclass
class Client:
    """A user's ssh setup in directory ``root``: ``home`` becomes /root/.ssh, ``etc``
    /etc/ssh (a copy of this machine's client config, and what a setup adds), ``hosts``
    /etc/hosts (a copy)."""

    __test__ = False

    root: Path
    home: Path = field(init=False)
    etc: Path = field(init=False)
    hosts: Path = field(init=False)

    def __post_init__(self) -> None:
        self.home = self.root / "dot_ssh"
        self.etc = self.root / "etc_ssh"
        self.hosts = self.root / "hosts"
        self.home.mkdir(mode=0o700, parents=True)
        self.etc.mkdir()
        shutil.copy("/etc/hosts", self.hosts)
        for name in ("ssh_config", "ssh_config.d"):
            src = Path("/etc/ssh") / name
            if src.is_dir():
                shutil.copytree(src, self.etc / name)
            elif src.exists():
                shutil.copy(src, self.etc / name)

    def trust(self, testbed: Testbed) -> None:
        """Give this user the testbed's client key (in ``~/.ssh/config``) and every host's
        key in ``~/.ssh/known_hosts`` (``[address]:port`` for a host on its own port), as
        a user whose ssh already reaches the hosts has them."""
        shutil.copy(testbed.identity_file, self.home / "id_cluster")
        (self.home / "id_cluster").chmod(0o600)
        (self.home / "config").write_text(
            "Host *\n  IdentityFile ~/.ssh/id_cluster\n  IdentitiesOnly yes\n")
        shutil.copy(testbed.known_hosts, self.home / "known_hosts")

    def run(self, *argv: str, timeout: float = 90, env: Mapping[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` with this setup; raises ``subprocess.TimeoutExpired`` after
        ``timeout`` seconds (the command is killed). ``python -m sshcluster`` in it (a
        launch's too) is the sshcluster this process imported, from any directory."""
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", _ENTER, "sh",
             str(self.home), str(self.etc), str(self.hosts), *argv],
            capture_output=True, text=True, timeout=timeout, check=False, cwd=self.root,
            env=_with_this_sshcluster(os.environ if env is None else env))  # fmt: skip


def _with_this_sshcluster(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with this sshcluster's checkout first on PYTHONPATH (an editable install
    elsewhere, a worktree's tests: the command in its own directory would import that)."""
    here = str(Path(__file__).resolve().parents[2])
    return {**env, "PYTHONPATH": os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])}
