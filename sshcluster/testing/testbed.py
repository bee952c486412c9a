"""Local SSH test hosts: real sshd servers in network namespaces on this Linux machine.

A :class:`Testbed` turns one Linux machine (as root) into a small network of SSH hosts
so that the rest of sshcluster can be tested against real things: real ``sshd`` with
host key checking on, real ``ssh``, real R workers that connect back to the primary.

Each host is

* a network namespace (``<name>-h<i>``) with a veth pair on a per-testbed bridge and
  its own IPv4 address on the testbed's subnet (default: a free ``10.213.X.0/24``);
* its own UTS namespace (hostname ``node<i>``) and mount namespace in which
  ``/root/.ssh`` is a bind mount of the host's own directory in the workdir, and
  ``/root/.cache/sshcluster`` one of the testbed's ``WORKDIR/cache`` (shared by its hosts);
* its own ed25519 host key and its own ``sshd`` on port 22 of its address.

The *primary* is the root namespace: the bridge has the subnet's first address, and a
primary ``sshd`` listens there so that a worker can ssh back to the primary.

Example::

    from sshcluster.testing import Testbed

    with Testbed(4) as tb:
        host = tb.hosts[0]
        out = subprocess.run(tb.ssh_argv(host, "hostname"), capture_output=True, text=True)
        assert out.stdout.strip() == "node1"
        tb.write_inventory(tb.workdir / "inventory.yaml")

Everything a testbed creates is recorded in a JSON state file under
``/run/sshcluster/testbeds/`` (or ``$SSHCLUSTER_TESTBED_STATE_DIR``) *before* it is
created, so that it can be removed by another process (see
:mod:`sshcluster.testing.registry`: one testbed by its exact name or workdir, or the
leftovers whose owner has exited).

Network rule: a testbed only ever sends traffic to its own subnet, which is checked not
to overlap any address or route of this machine; the hosts have no default route.

The :class:`Testbed` builds the hosts and owns them; the work is done by its parts:
:mod:`~sshcluster.testing.subnets` (which subnet), :mod:`~sshcluster.testing.netns`
(namespaces, links, processes), :mod:`~sshcluster.testing.keys` (keys and ssh files),
:mod:`~sshcluster.testing.servers` (the sshd processes), :mod:`~sshcluster.testing.faults`
(iptables) and :mod:`~sshcluster.testing.registry` (state files and teardown).
"""

from __future__ import annotations

import logging
import re
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from sshcluster.errors import TestbedError
from sshcluster.testing import faults
from sshcluster.testing.hosts import TestHost, enter_argv
from sshcluster.testing.keys import CLIENT_KEY, KNOWN_HOSTS, SSH_CONFIG, make_keys, write_ssh_files
from sshcluster.testing.netns import make_network, pids_in_netns, process_name, run_command
from sshcluster.testing.registry import new_state, refuse_taken, save_state, teardown
from sshcluster.testing.servers import Servers
from sshcluster.testing.spec import (
    TestbedSpec,
    inventory_data,
    private_dirs_spec,
    require_root_and_netns,
)
from sshcluster.testing.sshd import choose_port
from sshcluster.testing.subnets import SubnetLock, lock_subnet

__all__ = ["TestHost", "Testbed"]

log = logging.getLogger(__name__)


class Testbed(faults.HostFaults):
    """N SSH hosts in network namespaces on this machine, plus the primary's sshd.

    ``n`` hosts (1..253) get the addresses ``.2`` .. ``.n+1`` of ``subnet`` (a CIDR
    string; default: the first ``10.213.X.0/24`` that no interface, route or other
    testbed uses) and the hostnames ``<hostname_prefix>1`` ... The bridge (the primary,
    as the hosts see it) gets ``.1``. ``name`` (lowercase letters and digits, at most 10,
    default ``sc`` + 4 random hex digits) prefixes every namespace and link made.
    ``workdir`` holds keys, configs and logs; by default a new temporary directory that
    :meth:`down` removes (a given workdir is left in place, with its logs; one that a
    testbed which is still up uses is refused).
    ``private_dirs`` are directories (absolute paths, or a mapping of path to tmpfs size,
    default ``PRIVATE_DIR_SIZE`` of :mod:`~sshcluster.testing.spec`) that each host's
    sshd, and so every ssh session, sees as a tmpfs of its own: what is written there
    over ssh is on that host only (:meth:`run` runs outside them); ``private_on`` limits
    them to the hosts with those indexes (1-based). With ``mesh``, every
    host's root can ssh to every other host's address.
    ``primary_ssh_port`` is the port of the primary's sshd on the bridge address; by
    default 22, or a free port if 22 is taken there. ``host_ssh_ports`` maps a host's
    index to the port its sshd listens on instead of 22 (``{2: 2222}``: a host with its
    own ssh port, as an inventory's ``ssh_port:`` names it). ``timeout`` bounds the wait
    for all sshd servers to answer.

    Nothing is created until :meth:`up` (or ``with Testbed(...) as tb:``).
    """

    __test__ = False  # not a pytest test class, despite the name

    user: str = "root"

    def __init__(
        self,
        n: int,
        *,
        workdir: Path | str | None = None,
        subnet: str | None = None,
        name: str | None = None,
        hostname_prefix: str = "node",
        primary_ssh_port: int | None = None,
        timeout: float = 60.0,
        host_ssh_ports: Mapping[int, int] | None = None,
        private_dirs: Mapping[str, str] | Sequence[str] = (),
        private_on: Sequence[int] | None = None,
        mesh: bool = False,
    ) -> None:
        #: The arguments, checked (a fresh name picked if none was given).
        self.spec = TestbedSpec.make(
            n, workdir=workdir, subnet=subnet, name=name, hostname_prefix=hostname_prefix,
            primary_ssh_port=primary_ssh_port, timeout=timeout, host_ssh_ports=host_ssh_ports,
        )  # fmt: skip
        self.n = n
        self.name = self.spec.name
        self.hostname_prefix = hostname_prefix
        self.timeout = timeout
        #: Directories each host has a tmpfs of its own at (path: size), so that a copy to
        #: one host is not seen on another (they all share this machine's filesystem).
        self.private_dirs = private_dirs_spec(private_dirs)
        self.private_on = private_on
        #: Whether every host's root can ssh to every other host (as push's chain needs).
        self.mesh = mesh
        #: Seconds spent in each phase of the last :meth:`up` / :meth:`down`.
        self.timings: dict[str, float] = {}
        self._reset()

    def _reset(self) -> None:
        self._up = False
        self._lock: SubnetLock | None = None
        self._state: dict[str, Any] | None = None
        self._hosts: tuple[TestHost, ...] = ()
        self._primary_address = ""
        self._primary_port = 0
        self._workdir: Path | None = None
        self._servers: Servers | None = None

    # ---------------------------------------------------------------- properties

    def _need_up(self) -> Servers:
        if not self._up or self._servers is None:
            raise TestbedError(f"testbed {self.name} is not up", hint="call up() first")
        return self._servers

    @property
    def hosts(self) -> tuple[TestHost, ...]:
        """The hosts, in index order."""
        self._need_up()
        return self._hosts

    @property
    def primary_address(self) -> str:
        """The bridge address: the primary's address as the hosts see it."""
        self._need_up()
        return self._primary_address

    @property
    def primary_ssh_port(self) -> int:
        """The port of the primary's sshd on :attr:`primary_address`."""
        self._need_up()
        return self._primary_port

    @property
    def subnet(self) -> str:
        """The testbed's subnet, e.g. ``10.213.7.0/24``."""
        self._need_up()
        assert self._lock is not None
        return str(self._lock.net)

    @property
    def workdir(self) -> Path:
        """The directory with keys, sshd configs and logs (``h<i>/sshd.log``)."""
        self._need_up()
        assert self._workdir is not None
        return self._workdir

    @property
    def identity_file(self) -> Path:
        """The primary user's client key, accepted by every host."""
        return self.workdir / CLIENT_KEY

    @property
    def known_hosts(self) -> Path:
        """known_hosts with every host's real host key, keyed by its address (not hashed)."""
        return self.workdir / KNOWN_HOSTS

    @property
    def ssh_config(self) -> Path:
        """An ssh_config with a ``Host`` alias per hostname (use with ``ssh -F``)."""
        return self.workdir / SSH_CONFIG

    def ssh_options(self) -> list[str]:
        """ssh options that reach the hosts with host key checking on and no prompts."""
        return [
            "-F", "none",  # the machine's own ~/.ssh/config must not change what we test
            "-i", str(self.identity_file),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
        ]  # fmt: skip

    def ssh_argv(self, host: TestHost, *command: str) -> list[str]:
        """The ``ssh`` command line that runs ``command`` on ``host`` as root."""
        return [
            "ssh", *self.ssh_options(), "-p", str(host.ssh_port),
            f"{self.user}@{host.address}", *command,
        ]  # fmt: skip

    # ----------------------------------------------------------------------- up

    def __enter__(self) -> Testbed:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> Testbed:
        """Build the testbed; return self.

        On any failure everything made so far is torn down and :class:`TestbedError`
        is raised (a KeyboardInterrupt is re-raised as it is, after the teardown).
        """
        if self._up or self._state is not None:
            raise TestbedError(f"testbed {self.name} is already up")
        require_root_and_netns()
        try:
            self._build()
        except BaseException as e:
            try:
                self.down()
            except TestbedError as down_error:
                log.error("teardown after a failed up() was incomplete: %s", down_error)
            if isinstance(e, TestbedError | KeyboardInterrupt):
                raise
            raise TestbedError(f"could not build testbed {self.name}: {e}") from e
        return self

    def _build(self) -> None:
        t0 = time.monotonic()
        refuse_taken(self.name, self.spec.workdir)
        for d, mode in ((Path("/run/sshd"), 0o755), (Path("/root/.ssh"), 0o700)):
            if not d.exists():  # sshd's privilege separation dir; our bind mount point
                d.mkdir(mode=mode, parents=True)
        self._lock = lock_subnet(self.spec.subnet)
        net = self._lock.net
        self._primary_address, self._hosts = self.spec.hosts_on(net)
        owned = self.spec.workdir is None
        if self.spec.workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"sshcluster-{self.name}-"))
        else:
            self._workdir = self.spec.workdir
            self._workdir.mkdir(parents=True, exist_ok=True)
        wd = self._workdir
        bridge = f"{self.name}-br"
        veths = [f"{self.name}-v{h.index}" for h in self._hosts]
        # Record everything before creating any of it, so another process can remove it.
        self._state = new_state(
            self.name, subnet=str(net), bridge=bridge, netns=[h.netns for h in self._hosts],
            veths=veths, workdir=wd, workdir_owned=owned,
            primary_config=wd / "primary" / "sshd_config",
        )  # fmt: skip
        save_state(self._state)
        self._servers = Servers(wd, self.timeout, self.private_dirs, self.private_on)
        self._up = True  # from here on the properties work; down() undoes the rest

        with ThreadPoolExecutor(max_workers=8) as pool:
            keys = pool.submit(make_keys, wd, self.name, self._hosts, pool)
            t = time.monotonic()
            make_network(bridge, self._primary_address, net.prefixlen, self._hosts, veths, pool)
            self.timings["network"] = time.monotonic() - t
            public_keys = keys.result()
        # Only now: probing the port needs the bridge address to exist.
        self._primary_port = choose_port(self._primary_address, self.spec.primary_ssh_port)
        write_ssh_files(
            wd, public_keys, self._hosts, name=self.name, user=self.user,
            primary_address=self._primary_address, primary_port=self._primary_port,
            mesh=self.mesh,
        )  # fmt: skip
        self.timings["keys+network"] = time.monotonic() - t0

        t = time.monotonic()
        self._state["primary_pids"].append(self._servers.start_primary())
        save_state(self._state)
        for host in self._hosts:
            self._servers.spawn(host)
        deadline = time.monotonic() + self.timeout
        self._servers.wait_primary(self._primary_address, self._primary_port, deadline)
        for host in self._hosts:
            self._servers.wait(host, deadline)
        self.timings["sshd"] = time.monotonic() - t
        self.timings["up"] = time.monotonic() - t0
        log.info(
            "testbed %s up: %d hosts on %s in %.2f s", self.name, self.n, net, self.timings["up"]
        )

    # --------------------------------------------------------------------- down

    def down(self) -> None:
        """Tear everything down; safe to call more than once.

        Kills every process in the hosts' network namespaces (sshd, sessions, R
        workers) and the primary sshd, deletes the namespaces, veths and bridge, removes
        the workdir if the testbed created it, and releases the subnet. Raises
        :class:`TestbedError` naming anything that could not be removed (its state file
        is then kept, so :func:`~sshcluster.testing.remove_testbed` can try again).
        """
        if self._state is None:
            if self._lock is not None:
                self._lock.release()
            self._reset()
            return
        t = time.monotonic()
        leftovers = teardown(self._state, self._servers.popens() if self._servers else [])
        if self._lock is not None:
            self._lock.release()
        self._reset()
        self.timings["down"] = time.monotonic() - t
        if leftovers:
            raise TestbedError(
                f"testbed {self.name} was not removed completely: {', '.join(leftovers)}",
                hint=f"try again with `sshcluster testbed down --name {self.name}`",
            )

    # ------------------------------------------------------------ operations

    def run(
        self,
        host: TestHost,
        argv: Sequence[str],
        *,
        timeout: float = 30,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on ``host`` directly (not over ssh) and return its result.

        The command runs in the host's network namespace, with the host's hostname and
        its ``/root/.ssh``, as root. Raises :class:`TestbedError` if ``check`` and it
        exits non-zero, or if it runs longer than ``timeout`` seconds.
        """
        self._need_up()
        return run_command(
            enter_argv(self.workdir, host, argv),
            timeout=timeout,
            check=check,
            what=f"{' '.join(argv)} on {host.hostname}",
        )

    def stop_sshd(self, host: TestHost) -> None:
        """Stop the host's sshd listener (sessions already open keep running)."""
        self._need_up().stop(host)

    def start_sshd(self, host: TestHost) -> None:
        """Start the host's sshd again (no-op if it runs) and wait until it answers."""
        self._need_up().start(host)

    def certify_host_key(self, host: TestHost, ca: Path | str, validity: str = "-5m:+1h"
                         ) -> Path:
        """Have ``host``'s sshd offer a certificate for its address and hostname, signed
        by the CA private key ``ca``; return the certificate's path."""
        names = f"{host.address},{host.hostname}"
        return self._need_up().certify(host, Path(ca), names, validity)

    def replace_host_key(self, host: TestHost) -> None:
        """Give ``host`` a new host key and restart its sshd; known_hosts keeps the old.

        Afterwards ssh to the host fails host key verification, as it should after a
        machine was reinstalled.
        """
        self._need_up().replace_host_key(host, f"{self.name}-{host.hostname}-new")

    def processes(self, host: TestHost, pattern: str = "R") -> list[int]:
        """Pids of processes in ``host``'s namespace whose name fully matches ``pattern``.

        ``pattern`` is a regular expression matched against the process name (``comm``,
        as ``pgrep -x`` does): ``"R"`` finds R sessions and PSOCK workers.
        """
        self._need_up()
        regex = re.compile(pattern)
        pids = pids_in_netns([host.netns]).get(host.netns, [])
        return sorted(p for p in pids if (c := process_name(p)) is not None and regex.fullmatch(c))

    def leftovers(self, pattern: str = "R", *, wait: float = 0.0) -> dict[str, list[int]]:
        """The :meth:`processes` matching ``pattern`` on every host that has any, by
        hostname, once they are gone or ``wait`` seconds have passed: ``{}`` means none
        is left (say, after a cluster stopped)."""
        deadline = time.monotonic() + wait
        while True:
            left = {h.hostname: pids for h in self.hosts if (pids := self.processes(h, pattern))}
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)

    def write_inventory(
        self,
        path: Path | str,
        ncore: int = 2,
        port: int | None = None,
        extra: Mapping[str, Any] | None = None,
        *,
        keys: bool = True,
    ) -> Path:
        """Write an sshcluster inventory (YAML) for this testbed to ``path``; return it.

        ``port`` is the PSOCK port of the primary (written only if given); ``extra``
        adds or replaces top-level keys; ``keys=False`` leaves out the known_hosts and
        client key (for a client whose ``~/.ssh`` has them).
        """
        self._need_up()
        data = inventory_data(
            self.hosts, primary_address=self.primary_address, primary_port=self.primary_ssh_port,
            user=self.user, ncore=ncore, port=port, extra=extra,
            keys=(self.known_hosts, self.identity_file) if keys else None,
        )  # fmt: skip
        out = Path(path)
        text = "# written by sshcluster testbed\n" + yaml.safe_dump(data, sort_keys=False)
        out.write_text(text)
        return out

    def __repr__(self) -> str:
        state = f"up on {self.subnet}" if self._up else "down"
        return f"<Testbed {self.name}: {self.n} hosts, {state}>"
