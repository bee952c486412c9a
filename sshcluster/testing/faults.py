"""Network faults between a test host and the primary, made for real with iptables.

A rule goes into the ``OUTPUT`` chain of the host's own network namespace, so it affects
that host only, and only traffic to the primary's address and the given TCP port; or,
for :func:`cut_off`, every packet in and out of the host but its own loopback (a pulled
cable, a reclaimed spot instance); or, for :func:`slow_ssh`, the SYNs that open a
connection to its sshd (a host slow to answer). The
faults of a host's sshd (stopped, restarted, a new host key) are
:class:`~sshcluster.testing.servers.Servers`'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from sshcluster.errors import TestbedError
from sshcluster.testing.hosts import TestHost
from sshcluster.testing.netns import run_command

__all__ = [
    "QUICK_NOTICE_R", "Action", "HostFaults", "allow", "cut_off", "hide_ssh", "reconnect",
    "reject", "slow_ssh",
]

#: R to run before ``source()`` of a cluster file, so that a lost host is noticed in a
#: few seconds instead of the shipped 15-20 (ssh's keep-alive: 2 unanswered probes 2 s
#: apart instead of 3 probes 5 s apart) and a cut-off host stops its workers after 6 s
#: of silence instead of 40 (heartbeat 2 s instead of 10), and a message that makes no
#: progress fails after 5 s instead of 15. Only for tests whose fault takes that long to
#: notice; one test per fault keeps the shipped values (tests/test_cluster_faults.py's
#: test_faults_are_named_and_repaired and test_a_big_send_to_a_cut_off_host_names_it).
QUICK_NOTICE_R = ("options(sshcluster.keepalive_seconds = 2, sshcluster.keepalive_count = 2,"
                  " sshcluster.heartbeat_seconds = 2, sshcluster.silence_seconds = 6,"
                  " sshcluster.stall_seconds = 5)\n")

#: ``REJECT`` answers with a reset: a connect fails at once ("connection refused").
#: ``DROP`` discards the packets: a connect hangs until it times out.
Action = Literal["REJECT", "DROP"]

#: At most this many rules of one kind are removed by :func:`allow` (one per reject()).
_MAX_RULES = 100


def _iptables(host: TestHost, args: Sequence[str], *, check: bool = True) -> int:
    argv = ["ip", "netns", "exec", host.netns, "iptables", "-w", "5", *args]
    return run_command(argv, check=check, what=f"iptables on {host.hostname}").returncode


def _rule(primary_address: str, port: int, action: Action) -> list[str]:
    spec = ["-p", "tcp", "-d", f"{primary_address}/32", "--dport", str(port)]
    if action == "REJECT":
        return [*spec, "-j", "REJECT", "--reject-with", "tcp-reset"]
    return [*spec, "-j", "DROP"]


def reject(host: TestHost, primary_address: str, port: int, action: Action = "REJECT") -> None:
    """Block TCP from ``host`` to ``primary_address:port`` (see :data:`Action`)."""
    if action not in ("REJECT", "DROP"):
        raise TestbedError(f"action must be REJECT or DROP, not {action!r}")
    _iptables(host, ["-I", "OUTPUT", "1", *_rule(primary_address, port, action)])


def allow(host: TestHost, primary_address: str, port: int) -> None:
    """Remove every :func:`reject` rule for ``primary_address:port`` on ``host``."""
    actions: tuple[Action, ...] = ("REJECT", "DROP")
    for action in actions:
        rule = _rule(primary_address, port, action)
        for _ in range(_MAX_RULES):  # bounded: one rule per reject() call
            if _iptables(host, ["-D", "OUTPUT", *rule], check=False):
                break


#: The chains a :func:`cut_off` host drops everything in (loopback aside).
_CUT = (("INPUT", "-i"), ("OUTPUT", "-o"))


def cut_off(host: TestHost) -> None:
    """Drop every packet in and out of ``host`` (not its loopback): nothing answers,
    nothing is refused, as when a machine vanishes from the network."""
    for chain, flag in _CUT:
        _iptables(host, ["-I", chain, "1", "!", flag, "lo", "-j", "DROP"])


def reconnect(host: TestHost, primary_address: str | None = None) -> None:
    """Undo :func:`cut_off`, :func:`slow_ssh` and (given the primary's address)
    :func:`hide_ssh`."""
    for chain, flag in _CUT:
        for _ in range(_MAX_RULES):
            if _iptables(host, ["-D", chain, "!", flag, "lo", "-j", "DROP"], check=False):
                break
    rules = [_SYN] + ([_hidden(host, primary_address)] if primary_address else [])
    for rule in rules:
        for _ in range(_MAX_RULES):
            if _iptables(host, ["-D", "INPUT", *rule], check=False):
                break


def _hidden(host: TestHost, primary_address: str) -> list[str]:
    return ["-s", f"{primary_address}/32", "-p", "tcp", "--dport", str(host.ssh_port),
            "-j", "REJECT", "--reject-with", "tcp-reset"]


def hide_ssh(host: TestHost, primary_address: str) -> None:
    """Refuse connections from the primary to ``host``'s sshd, and only those: the other
    hosts still reach it, so the primary reaches it only through one of them (a host
    behind a jump host). Everything else, R's connections back included, still flows."""
    _iptables(host, ["-I", "INPUT", "1", *_hidden(host, primary_address)])


_SYN = ["-p", "tcp", "--dport", "22", "--syn", "-j", "DROP"]


def slow_ssh(host: TestHost) -> None:
    """Drop the SYNs that open a connection to ``host``'s sshd on port 22: ssh retries
    them (after 1 s, then 2 s more, ...), so the host answers only once
    :func:`reconnect` removes the rule."""
    _iptables(host, ["-I", "INPUT", "1", *_SYN])


class HostFaults:
    """The faults above as methods of a :class:`~sshcluster.testing.Testbed`."""

    _up: bool

    @property
    def primary_address(self) -> str:
        raise NotImplementedError

    def _need_up(self) -> object:
        raise NotImplementedError

    def reject(self, host: TestHost, port: int, *, action: Action = "REJECT") -> None:
        """Block TCP from ``host`` to the primary's ``port``.

        ``REJECT`` answers with a reset, so a connect fails at once with "connection
        refused"; ``DROP`` discards the packets, so a connect hangs until it times out.
        """
        reject(host, self.primary_address, port, action)

    def allow(self, host: TestHost, port: int) -> None:
        """Remove every :meth:`reject` rule for ``port`` on ``host``."""
        allow(host, self.primary_address, port)

    def cut_off(self, host: TestHost) -> None:
        """Drop every packet in and out of ``host`` (loopback aside), as when a machine
        vanishes from the network; :meth:`reconnect` undoes it."""
        self._need_up()
        cut_off(host)

    def slow_ssh(self, host: TestHost) -> None:
        """Drop the SYNs of new connections to ``host``'s sshd until :meth:`reconnect`."""
        self._need_up()
        slow_ssh(host)

    def hide_ssh(self, host: TestHost) -> None:
        """Refuse the primary's connections to ``host``'s sshd, until :meth:`reconnect`."""
        hide_ssh(host, self.primary_address)

    def reconnect(self, host: TestHost) -> None:
        """Undo :meth:`cut_off`, :meth:`slow_ssh` and :meth:`hide_ssh`."""
        reconnect(host, self.primary_address if self._up else None)
