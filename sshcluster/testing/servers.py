"""The sshd servers of one testbed: the primary's and one per host.

The primary's sshd runs in the root namespace on the bridge address, so that a worker
can ssh back to the primary; each host's runs on the host (:func:`enter_argv`). Every
one stays in the foreground (``sshd -D``) as a child of this process, so its pid is the
pid of our child and nothing depends on daemonizing. :class:`Servers` starts them,
waits for their banners, and stops and restarts a host's (the faults a test makes); the
testbed's teardown (:func:`~sshcluster.testing.registry.teardown`) kills them all.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Collection, Mapping
from pathlib import Path

from sshcluster.testing.hosts import TestHost, enter_argv, host_dir
from sshcluster.testing.netns import run_command
from sshcluster.testing.sshd import (
    HOST_KEY,
    make_host_key,
    popen_sshd,
    sshd_argv,
    stop_sshd,
    wait_banner,
    write_file,
)

__all__ = ["Servers"]


class Servers:
    """The sshd processes of the testbed whose files are in ``workdir``.

    ``timeout`` bounds the wait for a restarted sshd to answer.
    """

    def __init__(
        self, workdir: Path, timeout: float, private: Mapping[str, str] | None = None,
        private_on: Collection[int] | None = None,
    ) -> None:
        self.workdir = workdir
        self.timeout = timeout
        #: Private tmpfs directories (path: size) of the hosts' sshd and their sessions,
        #: on the hosts with the indexes ``private_on`` (None: every host).
        self.private = dict(private or {})
        self.private_on = None if private_on is None else frozenset(private_on)
        self._primary: subprocess.Popen[bytes] | None = None
        self._hosts: dict[int, subprocess.Popen[bytes]] = {}

    def popens(self) -> list[subprocess.Popen[bytes]]:
        """Every sshd started here (to reap them after the teardown killed them)."""
        return [*self._hosts.values(), *([self._primary] if self._primary else [])]

    def start_primary(self) -> int:
        """Start the primary's sshd (its files are in ``workdir/primary``); return its pid."""
        d = self.workdir / "primary"
        self._primary = popen_sshd(d, sshd_argv(d))
        return self._primary.pid

    def wait_primary(self, address: str, port: int, deadline: float) -> None:
        """Wait until the primary's sshd answers on ``address:port``, or fail."""
        assert self._primary is not None, "start_primary() first"
        wait_banner(address, port, deadline, self._primary,
                    [self.workdir / "primary" / "sshd.log"])  # fmt: skip

    def spawn(self, host: TestHost) -> None:
        """Start the sshd of ``host``, without waiting for it (see :meth:`wait`)."""
        d = host_dir(self.workdir, host)
        self._hosts[host.index] = popen_sshd(
            d, enter_argv(self.workdir, host, sshd_argv(d), self.private
                          if self.private_on is None or host.index in self.private_on else None)
        )

    def wait(self, host: TestHost, deadline: float) -> None:
        """Wait until the sshd of ``host`` answers, or fail with the tail of its logs."""
        d = host_dir(self.workdir, host)
        wait_banner(
            host.address, host.ssh_port, deadline, self._hosts[host.index],
            [d / "start.err", d / "sshd.log"],
        )  # fmt: skip

    def stop(self, host: TestHost) -> None:
        """Stop the host's sshd listener (sessions already open keep running)."""
        proc = self._hosts.get(host.index)
        if proc is not None:
            stop_sshd(proc)

    def start(self, host: TestHost) -> None:
        """Start the host's sshd again (no-op if it runs) and wait until it answers."""
        proc = self._hosts.get(host.index)
        if proc is not None and proc.poll() is None:
            return
        self.spawn(host)
        self.wait(host, time.monotonic() + self.timeout)

    def certify(self, host: TestHost, ca: Path, principals: str, validity: str) -> Path:
        """Sign ``host``'s key with the CA key ``ca`` (ssh-keygen -s: ``principals``
        comma-separated, ``validity`` as -V takes it), make its sshd offer the
        certificate, restart it; return the certificate's path."""
        d = host_dir(self.workdir, host)
        run_command(["ssh-keygen", "-q", "-s", str(ca), "-I", host.hostname, "-h",
                     "-n", principals, "-V", validity, str(d / f"{HOST_KEY}.pub")],
                    what=f"ssh-keygen -s for {host.hostname}")
        cert = d / f"{HOST_KEY}-cert.pub"
        config = d / "sshd_config"
        lines = [ln for ln in config.read_text().splitlines()
                 if not ln.startswith("HostCertificate ")]
        write_file(config, "\n".join([*lines, f"HostCertificate {cert}"]) + "\n")
        self.stop(host)
        self.start(host)
        return cert

    def replace_host_key(self, host: TestHost, comment: str) -> None:
        """Give ``host`` a new host key and restart its sshd."""
        self.stop(host)
        make_host_key(host_dir(self.workdir, host), comment)
        self.start(host)
