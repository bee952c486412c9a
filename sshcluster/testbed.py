"""Local SSH test hosts: real sshd servers in network namespaces on this Linux machine.

A :class:`Testbed` turns one Linux machine (as root) into a small network of SSH hosts
so that the rest of sshcluster can be tested against real things: real ``sshd`` with
host key checking on, real ``ssh``, real R workers that connect back to the primary.

Each host is

* a network namespace (``<name>-h<i>``) with a veth pair on a per-testbed bridge and
  its own IPv4 address on the testbed's subnet (default: a free ``10.213.X.0/24``);
* its own UTS namespace (hostname ``node<i>``) and mount namespace in which
  ``/root/.ssh`` is a bind mount of the host's own directory in the workdir;
* its own ed25519 host key and its own ``sshd`` on port 22 of its address.

The *primary* is the root namespace: the bridge has the subnet's first address, and a
primary ``sshd`` listens there so that a worker can ssh back to the primary.

Example::

    from sshcluster.testbed import Testbed

    with Testbed(4) as tb:
        host = tb.hosts[0]
        out = subprocess.run(tb.ssh_argv(host, "hostname"), capture_output=True, text=True)
        assert out.stdout.strip() == "node1"
        tb.write_inventory(tb.workdir / "inventory.yaml")

Everything a testbed creates is recorded in a JSON state file under
``/run/sshcluster/testbeds/`` (or ``$SSHCLUSTER_TESTBED_STATE_DIR``) *before* it is
created, so that it can be removed by another process (see :mod:`sshcluster.testbeds`:
one testbed by its exact name or workdir, or the leftovers whose owner has exited).

Network rule: a testbed only ever sends traffic to its own subnet, which is checked not
to overlap any address or route of this machine; the hosts have no default route.

The namespaces, links, processes, subnet locks and state files underneath are handled by
:mod:`sshcluster.netns`, the keys, sshd configs and sshd processes by :mod:`sshcluster.sshd`;
this module builds hosts out of them.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import yaml

from sshcluster.errors import TestbedError
from sshcluster.netns import (
    STATE_DIR,
    STATE_DIR_ENV,
    SubnetLock,
    link_names,
    lock_subnet,
    netns_names,
    pids_in_netns,
    proc_start_time,
    process_name,
    run_command,
    save_state,
    state_path,
    teardown,
)
from sshcluster.sshd import (
    FRESH_BASHRC,
    SSHD,
    choose_port,
    keygen,
    known_hosts_name,
    make_host_key,
    popen_sshd,
    ssh_config_text,
    sshd_argv,
    stop_sshd,
    wait_banner,
    write_file,
    write_sshd_config,
)
from sshcluster.testbeds import list_testbeds, parse_subnet

__all__ = [
    "STATE_DIR",
    "STATE_DIR_ENV",
    "TestHost",
    "Testbed",
    "require_root_and_netns",
]

log = logging.getLogger(__name__)

MAX_HOSTS = 253

_NAME_RE = re.compile(r"[a-z][a-z0-9]{0,9}")  # + "-v253" must fit IFNAMSIZ (15)
_HOSTNAME_PREFIX_RE = re.compile(r"[a-z]([a-z0-9-]{0,50}[a-z0-9])?")

# Runs inside `ip netns exec NS unshare --uts --mount`: give the host its hostname, its
# own /root/.ssh and, like a freshly installed machine, Debian's default root ~/.bashrc
# (this machine's own may run slow tools such as `pyenv init` in every ssh session), then
# become the command. Arguments: hostname, ssh dir, bashrc, argv...
# The mount namespace is a *slave* (not private) of the root one, so when a testbed
# deletes a netns (an unmount of /run/netns/NAME) the copy here goes too, instead of
# keeping that namespace and its veth alive for as long as this host runs.
_ENTER = (
    'hostname "$1" && mount --bind "$2" /root/.ssh'
    ' && { [ ! -e /root/.bashrc ] || mount --bind "$3" /root/.bashrc; }'
    ' && shift 3 && exec "$@"'
)


@dataclass(frozen=True)
class TestHost:
    """One SSH host of a :class:`Testbed`.

    ``index`` is 1-based; ``hostname`` is what ``uname -n`` (and R's
    ``Sys.info()[["nodename"]]``) shows on it; ``address`` is its IPv4 address;
    ``netns`` the name of its network namespace (``ip netns exec NETNS ...``).
    """

    __test__ = False  # not a pytest test class, despite the name

    index: int
    hostname: str
    address: str
    netns: str
    ssh_port: int = 22


# --------------------------------------------------------------------------- helpers


def require_root_and_netns() -> None:
    """Raise :class:`TestbedError` unless this process can build a testbed.

    A testbed needs root, the ``ip``, ``unshare``, ``sshd`` and ``ssh-keygen`` programs,
    and a kernel (or container) that lets it create network, UTS and mount namespaces.
    """
    if os.geteuid() != 0:
        raise TestbedError(
            "the SSH testbed needs root (it creates network namespaces and a bridge)",
            hint="run as root, e.g. in a disposable VM or container with CAP_SYS_ADMIN",
        )
    for prog in ("ip", "unshare", "hostname", "mount", "ssh-keygen", "ssh", SSHD):
        if shutil.which(prog) is None:
            raise TestbedError(
                f"the SSH testbed needs {prog!r}, which is not installed",
                hint="on Debian: apt-get install iproute2 util-linux hostname openssh-server",
            )
    try:
        run_command(["ip", "netns", "list"], what="ip netns list", timeout=10)
        run_command(["unshare", "--net", "--uts", "--mount", "true"], what="unshare", timeout=10)
    except TestbedError as e:
        raise TestbedError(
            f"network namespaces are not available here: {e.message}",
            hint="a container needs --privileged (or CAP_SYS_ADMIN and CAP_NET_ADMIN)",
        ) from e


# ---------------------------------------------------------------------------- Testbed


class Testbed:
    """N SSH hosts in network namespaces on this machine, plus the primary's sshd.

    ``n`` hosts (1..253) get the addresses ``.2`` .. ``.n+1`` of ``subnet`` (a CIDR
    string; default: the first ``10.213.X.0/24`` that no interface, route or other
    testbed uses) and the hostnames ``<hostname_prefix>1`` ... The bridge (the primary,
    as the hosts see it) gets ``.1``. ``name`` (lowercase letters and digits, at most 10,
    default ``sc`` + 4 random hex digits) prefixes every namespace and link made.
    ``workdir`` holds keys, configs and logs; by default a new temporary directory that
    :meth:`down` removes (a given workdir is left in place, with its logs; one that a
    testbed which is still up uses is refused).
    ``primary_ssh_port`` is the port of the primary's sshd on the bridge address; by
    default 22, or a free port if 22 is taken there. ``timeout`` bounds the wait for
    all sshd servers to answer.

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
    ) -> None:
        if not 1 <= n <= MAX_HOSTS:
            raise TestbedError(f"a testbed has 1 to {MAX_HOSTS} hosts, not {n}")
        if name is not None and not _NAME_RE.fullmatch(name):
            raise TestbedError(
                f"testbed name {name!r} must be 1-10 lowercase letters or digits, "
                "starting with a letter (it prefixes interface names, at most 15 chars)"
            )
        if not _HOSTNAME_PREFIX_RE.fullmatch(hostname_prefix):
            raise TestbedError(
                f"hostname prefix {hostname_prefix!r} must be lowercase letters, digits "
                "and '-', starting with a letter"
            )
        if primary_ssh_port is not None and not 1 <= primary_ssh_port <= 65535:
            raise TestbedError(f"primary_ssh_port {primary_ssh_port} is not a TCP port")
        if subnet is not None:
            net = parse_subnet(subnet)
            if net.num_addresses - 2 < n + 1:
                raise TestbedError(
                    f"subnet {net} has room for {max(net.num_addresses - 3, 0)} hosts, not {n}"
                )
        self.n = n
        self.name = name or _new_name()
        self._subnet_arg = subnet
        self.hostname_prefix = hostname_prefix
        self._port_arg = primary_ssh_port
        self._workdir_arg = Path(workdir).resolve() if workdir is not None else None
        self.timeout = timeout
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
        self._sshd: dict[int, subprocess.Popen[bytes]] = {}
        self._primary_proc: subprocess.Popen[bytes] | None = None

    # ---------------------------------------------------------------- properties

    def _need_up(self) -> None:
        if not self._up:
            raise TestbedError(f"testbed {self.name} is not up", hint="call up() first")

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
        return self.workdir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        """known_hosts with every host's real host key, keyed by its address (not hashed)."""
        return self.workdir / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        """An ssh_config with a ``Host`` alias per hostname (use with ``ssh -F``)."""
        return self.workdir / "ssh_config"

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

    def _dir(self, host: TestHost | int) -> Path:
        index = host if isinstance(host, int) else host.index
        return self.workdir / f"h{index}"

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
        if state_path(self.name).exists() or f"{self.name}-br" in link_names():
            raise TestbedError(
                f"a testbed named {self.name} already exists",
                hint=f"remove it with `sshcluster testbed down --name {self.name}`",
            )
        if self._workdir_arg is not None:
            # Building here would overwrite the keys and known_hosts of a testbed that is
            # still up, and the inventories written for it would fail host key checks.
            for other in list_testbeds():
                if other.workdir == self._workdir_arg:
                    raise TestbedError(
                        f"the directory {self._workdir_arg} belongs to testbed {other.name}, "
                        "which is still up",
                        hint=f"remove it first with `sshcluster testbed down --dir "
                        f"{self._workdir_arg}`, or choose another directory",
                    )
        for d, mode in ((Path("/run/sshd"), 0o755), (Path("/root/.ssh"), 0o700)):
            if not d.exists():  # sshd's privilege separation dir; our bind mount point
                d.mkdir(mode=mode, parents=True)
        self._lock = lock_subnet(self._subnet_arg)
        net = self._lock.net
        addrs = list(net.hosts())
        if len(addrs) < self.n + 1:
            raise TestbedError(f"subnet {net} has no room for {self.n} hosts")
        owned = self._workdir_arg is None
        if self._workdir_arg is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=f"sshcluster-{self.name}-"))
        else:
            self._workdir = self._workdir_arg
            self._workdir.mkdir(parents=True, exist_ok=True)
        self._primary_address = str(addrs[0])
        self._hosts = tuple(
            TestHost(
                index=i,
                hostname=f"{self.hostname_prefix}{i}",
                address=str(addrs[i]),
                netns=f"{self.name}-h{i}",
            )
            for i in range(1, self.n + 1)
        )
        bridge = f"{self.name}-br"
        veths = [f"{self.name}-v{h.index}" for h in self._hosts]
        # Record everything before creating any of it, so another process can remove it.
        self._state = {
            "name": self.name,
            "owner_pid": os.getpid(),
            "owner_start": proc_start_time(os.getpid()),
            "subnet": str(net),
            "bridge": bridge,
            "netns": [h.netns for h in self._hosts],
            "veths": veths,
            "workdir": str(self._workdir),
            "workdir_owned": owned,
            "primary_config": str(self._workdir / "primary" / "sshd_config"),
            "primary_pids": [],
        }
        save_state(self._state)
        self._up = True  # from here on the properties work; down() undoes the rest

        with ThreadPoolExecutor(max_workers=8) as pool:
            keys = pool.submit(self._make_keys, pool)
            t = time.monotonic()
            self._make_network(bridge, veths, net.prefixlen, pool)
            self.timings["network"] = time.monotonic() - t
            public_keys, host_keys = keys.result()
        self._write_ssh_files(public_keys, host_keys)
        self.timings["keys+network"] = time.monotonic() - t0

        t = time.monotonic()
        self._start_primary()
        for host in self._hosts:
            self._spawn_sshd(host)
        deadline = time.monotonic() + self.timeout
        assert self._primary_proc is not None
        wait_banner(
            self._primary_address,
            self._primary_port,
            deadline,
            self._primary_proc,
            [self.workdir / "primary" / "sshd.log"],
        )
        for host in self._hosts:
            self._wait_sshd(host, deadline)
        self.timings["sshd"] = time.monotonic() - t
        self.timings["up"] = time.monotonic() - t0
        log.info(
            "testbed %s up: %d hosts on %s in %.2f s", self.name, self.n, net, self.timings["up"]
        )

    def _make_keys(self, pool: ThreadPoolExecutor) -> tuple[dict[str, str], dict[int, str]]:
        """Generate all keys concurrently; return the public keys (by role, by host)."""
        wd = self.workdir
        (wd / "primary").mkdir(exist_ok=True)
        (wd / "hostkey").mkdir(exist_ok=True)
        for h in self._hosts:
            (self._dir(h) / "ssh").mkdir(parents=True, exist_ok=True, mode=0o700)
        jobs = {
            "client": pool.submit(keygen, wd / "id_ed25519", f"sshcluster-{self.name}-client"),
            "worker": pool.submit(
                keygen, wd / "hostkey" / "id_ed25519", f"sshcluster-{self.name}-hosts"
            ),
            "primary": pool.submit(make_host_key, wd / "primary", f"{self.name}-primary"),
        }
        host_jobs = {
            h.index: pool.submit(make_host_key, self._dir(h), f"{self.name}-{h.hostname}")
            for h in self._hosts
        }
        keys = {role: f.result() for role, f in jobs.items()}
        return keys, {i: f.result() for i, f in host_jobs.items()}

    def _write_ssh_files(self, keys: Mapping[str, str], host_keys: Mapping[int, str]) -> None:
        """Write the sshd configs, authorized_keys, known_hosts and ssh configs."""
        wd = self.workdir
        client, worker, primary = keys["client"], keys["worker"], keys["primary"]
        # Only now: probing the port needs the bridge address to exist.
        port = self._choose_primary_port()
        write_file(wd / "primary" / "authorized_keys", worker + "\n")
        write_sshd_config(
            wd / "primary",
            listen=self._primary_address,
            port=port,
            authorized_keys=str(wd / "primary" / "authorized_keys"),
            title=f"primary of {self.name}",
        )
        write_file(
            wd / "known_hosts",
            "".join(
                f"{known_hosts_name(h.address, h.ssh_port)} {host_keys[h.index]}\n"
                for h in self._hosts
            ),
        )
        worker_priv = (wd / "hostkey" / "id_ed25519").read_text()
        primary_entry = f"{known_hosts_name(self._primary_address, port)} {primary}\n"
        ssh_client_config = (
            "# the primary of this testbed, as `ssh primary` or by its address\n"
            f"Host primary {self._primary_address}\n"
            f"  HostName {self._primary_address}\n  Port {port}\n  User root\n"
        )
        for h in self._hosts:
            d = self._dir(h)
            write_sshd_config(
                d,
                listen=h.address,
                port=h.ssh_port,
                authorized_keys=".ssh/authorized_keys",  # the bind-mounted /root/.ssh
                title=f"{h.hostname} of {self.name}",
            )
            write_file(d / "bashrc", FRESH_BASHRC)
            s = d / "ssh"
            write_file(s / "authorized_keys", client + "\n", 0o600)
            write_file(s / "id_ed25519", worker_priv, 0o600)
            write_file(s / "id_ed25519.pub", worker + "\n")
            write_file(s / "known_hosts", primary_entry)
            write_file(s / "config", ssh_client_config)
        write_file(wd / "ssh_config", self._ssh_config_text())

    def _ssh_config_text(self) -> str:
        return ssh_config_text(
            ((h.hostname, h.address, h.ssh_port) for h in self._hosts),
            user=self.user,
            identity_file=self.identity_file,
            known_hosts=self.known_hosts,
        )

    def _choose_primary_port(self) -> int:
        self._primary_port = choose_port(self._primary_address, self._port_arg)
        return self._primary_port

    def _make_network(
        self, bridge: str, veths: list[str], prefixlen: int, pool: ThreadPoolExecutor
    ) -> None:
        # One `ip -batch` for everything in the root namespace; the peer end of each veth
        # is created directly inside its namespace as eth0. addrgenmode none: no IPv6
        # link-local chatter on the bridge, the testbed is IPv4 only.
        lines = [
            f"link add {bridge} type bridge",
            f"link set {bridge} addrgenmode none",
            f"addr add {self._primary_address}/{prefixlen} dev {bridge}",
            f"link set {bridge} up",
        ]
        for h, veth in zip(self._hosts, veths, strict=True):
            lines += [
                f"netns add {h.netns}",
                f"link add {veth} type veth peer name eth0 netns {h.netns}",
                f"link set {veth} addrgenmode none",
                f"link set {veth} master {bridge}",
                f"link set {veth} up",
            ]
        run_command(
            ["ip", "-batch", "-"], input="\n".join(lines) + "\n", what="creating the network"
        )

        def inside(h: TestHost) -> None:
            run_command(
                ["ip", "-n", h.netns, "-batch", "-"],
                input=(
                    "link set lo up\n"
                    "link set eth0 addrgenmode none\n"
                    f"addr add {h.address}/{prefixlen} dev eth0\n"
                    "link set eth0 up\n"
                ),
                what=f"configuring {h.netns}",
            )

        list(pool.map(inside, self._hosts))

    def _enter_argv(self, host: TestHost, argv: Sequence[str]) -> list[str]:
        """argv run in the host's network namespace with its hostname and /root/.ssh."""
        return [
            "ip", "netns", "exec", host.netns,
            "unshare", "--uts", "--mount", "--propagation", "slave",
            "sh", "-c", _ENTER, "sh", host.hostname, str(self._dir(host) / "ssh"),
            str(self._dir(host) / "bashrc"), *argv,
        ]  # fmt: skip

    def _start_primary(self) -> None:
        d = self.workdir / "primary"
        self._primary_proc = popen_sshd(d, sshd_argv(d))
        assert self._state is not None
        self._state["primary_pids"].append(self._primary_proc.pid)
        save_state(self._state)

    def _spawn_sshd(self, host: TestHost) -> None:
        # sshd -D stays in the foreground as our child, so its pid is the Popen's pid
        # (ip netns exec, unshare and sh all exec), and nothing depends on daemonizing.
        d = self._dir(host)
        self._sshd[host.index] = popen_sshd(d, self._enter_argv(host, sshd_argv(d)))

    def _wait_sshd(self, host: TestHost, deadline: float) -> None:
        d = self._dir(host)
        wait_banner(
            host.address, host.ssh_port, deadline, self._sshd[host.index],
            [d / "start.err", d / "sshd.log"],
        )  # fmt: skip

    # --------------------------------------------------------------------- down

    def down(self) -> None:
        """Tear everything down; safe to call more than once.

        Kills every process in the hosts' network namespaces (sshd, sessions, R
        workers) and the primary sshd, deletes the namespaces, veths and bridge, removes
        the workdir if the testbed created it, and releases the subnet. Raises
        :class:`TestbedError` naming anything that could not be removed (its state file
        is then kept, so :func:`~sshcluster.testbeds.remove_testbed` can try again).
        """
        if self._state is None:
            if self._lock is not None:
                self._lock.release()
            self._reset()
            return
        t = time.monotonic()
        popens = [*self._sshd.values()]
        if self._primary_proc is not None:
            popens.append(self._primary_proc)
        leftovers = teardown(self._state, popens)
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
            self._enter_argv(host, argv),
            timeout=timeout,
            check=check,
            what=f"{' '.join(argv)} on {host.hostname}",
        )

    def _iptables(self, host: TestHost, args: Sequence[str], *, check: bool = True) -> int:
        argv = ["ip", "netns", "exec", host.netns, "iptables", "-w", "5", *args]
        return run_command(argv, check=check, what=f"iptables on {host.hostname}").returncode

    def _rule(self, port: int, action: str) -> list[str]:
        spec = ["-p", "tcp", "-d", f"{self.primary_address}/32", "--dport", str(port)]
        if action == "REJECT":
            return [*spec, "-j", "REJECT", "--reject-with", "tcp-reset"]
        return [*spec, "-j", "DROP"]

    def reject(
        self, host: TestHost, port: int, *, action: Literal["REJECT", "DROP"] = "REJECT"
    ) -> None:
        """Block TCP from ``host`` to the primary's ``port``.

        ``REJECT`` answers with a reset, so a connect fails at once with "connection
        refused"; ``DROP`` discards the packets, so a connect hangs until it times out.
        """
        if action not in ("REJECT", "DROP"):
            raise TestbedError(f"action must be REJECT or DROP, not {action!r}")
        self._iptables(host, ["-I", "OUTPUT", "1", *self._rule(port, action)])

    def allow(self, host: TestHost, port: int) -> None:
        """Remove every :meth:`reject` rule for ``port`` on ``host``."""
        for action in ("REJECT", "DROP"):
            for _ in range(100):  # bounded: one rule per reject() call
                if self._iptables(host, ["-D", "OUTPUT", *self._rule(port, action)], check=False):
                    break

    def stop_sshd(self, host: TestHost) -> None:
        """Stop the host's sshd listener (sessions already open keep running)."""
        self._need_up()
        proc = self._sshd.get(host.index)
        if proc is not None:
            stop_sshd(proc)

    def start_sshd(self, host: TestHost) -> None:
        """Start the host's sshd again (no-op if it runs) and wait until it answers."""
        self._need_up()
        proc = self._sshd.get(host.index)
        if proc is not None and proc.poll() is None:
            return
        self._spawn_sshd(host)
        self._wait_sshd(host, time.monotonic() + self.timeout)

    def replace_host_key(self, host: TestHost) -> None:
        """Give ``host`` a new host key and restart its sshd; known_hosts keeps the old.

        Afterwards ssh to the host fails host key verification, as it should after a
        machine was reinstalled.
        """
        self._need_up()
        self.stop_sshd(host)
        make_host_key(self._dir(host), f"{self.name}-{host.hostname}-new")
        self.start_sshd(host)

    def processes(self, host: TestHost, pattern: str = "R") -> list[int]:
        """Pids of processes in ``host``'s namespace whose name fully matches ``pattern``.

        ``pattern`` is a regular expression matched against the process name (``comm``,
        as ``pgrep -x`` does): ``"R"`` finds R sessions and PSOCK workers.
        """
        self._need_up()
        regex = re.compile(pattern)
        pids = pids_in_netns([host.netns]).get(host.netns, [])
        return sorted(p for p in pids if (c := process_name(p)) is not None and regex.fullmatch(c))

    def write_inventory(
        self,
        path: Path | str,
        ncore: int = 2,
        port: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write an sshcluster inventory (YAML) for this testbed to ``path``; return it.

        ``port`` is the PSOCK port of the primary (written only if given); ``extra``
        adds or replaces top-level keys.
        """
        self._need_up()
        primary: dict[str, Any] = {"host": self.primary_address, "user": self.user}
        if self.primary_ssh_port != 22:
            primary["ssh_port"] = self.primary_ssh_port
        hosts: list[dict[str, Any]] = []
        for h in self.hosts:
            entry: dict[str, Any] = {"host": h.address}
            if h.ssh_port != 22:
                entry["ssh_port"] = h.ssh_port
            hosts.append(entry)
        data: dict[str, Any] = {
            "primary": primary,
            "known_hosts": str(self.known_hosts),
            "defaults": {
                "user": self.user,
                "identity_file": str(self.identity_file),
                "ncore": ncore,
            },
            "hosts": hosts,
        }
        if port is not None:
            data["port"] = port
        if extra:
            data.update(extra)
        out = Path(path)
        text = "# written by sshcluster testbed\n" + yaml.safe_dump(data, sort_keys=False)
        out.write_text(text)
        return out

    def __repr__(self) -> str:
        state = f"up on {self.subnet}" if self._up else "down"
        return f"<Testbed {self.name}: {self.n} hosts, {state}>"


def _new_name() -> str:
    """A testbed name not used by any state file, namespace or link on this machine."""
    taken_ns = netns_names()
    for _ in range(100):
        name = "sc" + secrets.token_hex(2)
        if not state_path(name).exists() and f"{name}-h1" not in taken_ns:
            return name
    raise TestbedError("could not find an unused testbed name", hint="pass name=")
