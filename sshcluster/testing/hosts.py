"""One test host: what it is called, where its files are, and how a command runs on it.

A :class:`TestHost` is a value; the files of host ``i`` live in ``WORKDIR/h<i>`` (its
sshd's key, config and logs, its ``~/.bashrc`` and, in ``ssh/``, its ``/root/.ssh``).
:func:`enter_argv` wraps a command so that it runs *on* the host: in its network
namespace, with its hostname, its own ``/root/.ssh``, and the testbed's
``WORKDIR/cache`` as ``/root/.cache/sshcluster`` (:data:`HOME_CACHE`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HOME_CACHE", "TestHost", "enter_argv", "host_dir"]

#: Where sshcluster keeps its state in a host's home (see ``_ENTER``).
HOME_CACHE = "/root/.cache/sshcluster"

# Runs inside `nsenter --net=/run/netns/NS unshare --uts --mount`: give the host its hostname, its
# own /root/.ssh and, like a freshly installed machine, Debian's default root ~/.bashrc
# (this machine's own may run slow tools such as `pyenv init` in every ssh session), then
# become the command. Arguments: hostname, ssh dir, bashrc, cache dir, argv...
# The hosts share this machine's filesystem, /root included: what sshcluster keeps on a
# host under ~/.cache/sshcluster (a detached job's directory, the lease files, the
# bootstrap's library) goes to the testbed's cache dir instead (one for all its hosts, as
# /root is), so that it goes with the testbed rather than piling up in this machine's /root
# (which keeps, at most, the empty mount point).
# The mount namespace is a *slave* (not private) of the root one, so when a testbed
# deletes a netns (an unmount of /run/netns/NAME) the copy here goes too, instead of
# keeping that namespace and its veth alive for as long as this host runs.
# Then, after a count N, N pairs "DIR SIZE": a private tmpfs of SIZE over each DIR (the
# host's own disk there, as on a real machine), before the command.
_ENTER = (
    'hostname "$1" && mount --bind "$2" /root/.ssh'
    ' && { [ ! -e /root/.bashrc ] || mount --bind "$3" /root/.bashrc; }'
    f' && mkdir -p "$4" {HOME_CACHE} && mount --bind "$4" {HOME_CACHE}'
    ' && shift 4 && n=$1 && shift'
    ' && while [ "$n" -gt 0 ]; do mkdir -p "$1"'
    ' && mount -t tmpfs -o "size=$2,mode=755" sshcluster-private "$1" || exit 1;'
    ' shift 2; n=$((n - 1)); done'
    ' && exec "$@"'
)


@dataclass(frozen=True)
class TestHost:
    """One SSH host of a :class:`~sshcluster.testing.Testbed`.

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


def host_dir(workdir: Path, host: TestHost | int) -> Path:
    """The directory of ``host`` (or of the host with that index) in ``workdir``."""
    index = host if isinstance(host, int) else host.index
    return workdir / f"h{index}"


def enter_argv(
    workdir: Path, host: TestHost, argv: Sequence[str], private: Mapping[str, str] | None = None
) -> list[str]:
    """``argv`` run in the host's network namespace with its hostname and /root/.ssh;
    ``private`` maps directories to the size of a tmpfs of the host's own mounted there
    (seen only by ``argv`` and what it starts)."""
    d = host_dir(workdir, host)
    dirs = [x for path, size in (private or {}).items() for x in (path, size)]
    return [
        # (nsenter, not `ip netns exec`: that one remounts /sys, and with it the cgroup
        # mounts that a container engine on the host needs)
        "nsenter", f"--net=/run/netns/{host.netns}",
        "unshare", "--uts", "--mount", "--propagation", "slave",
        "sh", "-c", _ENTER, "sh", host.hostname, str(d / "ssh"), str(d / "bashrc"),
        str(workdir / "cache"), str(len(dirs) // 2), *dirs, *argv,
    ]  # fmt: skip
