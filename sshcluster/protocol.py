"""What the Python side shares with the code it sends to the hosts, in one place.

The R and shell code keeps its own side in one place each too: ``R/proof.R`` (pasted into
both the primary's and the worker's R) for the launch's handshake, ``check/probe.sh`` and
``check/R/*.R`` for the check's remote script. A value the Python side owns reaches R as
data in the call the generated file makes (as the port range does, see
:mod:`sshcluster.bootstrap`); tests/test_protocol.py checks that both sides agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

# --------------------------------------------------------------------------- the check

#: Default per-run deadline of the check, in seconds.
DEFAULT_TIMEOUT: Final = 10.0
#: Default bound on hosts checked at the same time. Each host takes about a second, so 32
#: at a time check hundreds of hosts within the default timeout; more at once mostly makes
#: the workers' logins to the primary collide with its sshd's MaxStartups (10:30:100 by
#: default), and on hosts that share a machine it thrashes.
DEFAULT_CONCURRENCY: Final = 32

#: The steps of the check, in the order they run on each host (and the report's order).
STEPS: Final[tuple[str, ...]] = (
    "resolve",
    "connect",
    "hostkey",
    "auth",
    "rscript",
    "packages",
    "cores",
    "load",
    "reverse_ssh",
    "callback",
    "worker_output",
    "lease",
    "shared_dir",
    "fanout",
    "container",  # (sshcluster/containers)
)
#: The steps the check's remote script answers, in report order (``container``: for a
#: host with a ``container:``, the same script checks the engine and the image first, and
#: then runs the R steps inside the image).
REMOTE_STEPS: Final[tuple[str, ...]] = ("rscript", "packages", "cores", "load", "reverse_ssh",
                                        "callback", "worker_output", "lease", "container")


class Fact:
    """The keys of the ``KEY=value`` lines the check's remote script prints
    (``check/probe.sh``, ``check/R/probe.R``, ``check/R/callback.R``, the packages
    step's ``packages/R/environment.R``, and the launch's code they share)."""

    # the shell part
    RSCRIPT: Final = "RSCRIPT"  # the Rscript it found
    RSCRIPT_ERR: Final = "RSCRIPT_ERR"  # why none was found or it did not start
    T_LOOKUP: Final = "T_LOOKUP"  # uptime stamps around the search for Rscript
    R_EXIT: Final = "R_EXIT"  # R's exit status, when it was not 0
    WORKDIR_ERR: Final = "WORKDIR_ERR"  # why the workdir cannot be made or entered
    LEASE: Final = "LEASE"  # flock's lot: 0 free, 1 held by another, else no locks here
    LEASE_SAID: Final = "LEASE_SAID"  # the holder, or why no lock can be had
    LOCALE: Final = "LOCALE"  # a locale the host lacks: NAME VALUE STAND-IN (R/locale.sh)
    SSH_CONNECTION: Final = "SSH_CONNECTION"  # the session's, as sshd set it
    PRIMARY: Final = "PRIMARY"  # the address the host calls back
    NPROC: Final = "NPROC"
    LOADAVG: Final = "LOADAVG"
    UPTIME: Final = "UPTIME"  # uptime's line, when there is no /proc/loadavg
    MEM_TOTAL_KB: Final = "MEM_TOTAL_KB"
    MEM_AVAIL_KB: Final = "MEM_AVAIL_KB"
    T_LOCAL: Final = "T_LOCAL"  # uptime stamps around the local reads
    REVERSE: Final = "REVERSE"  # the reverse ssh: uptime stamps and the outcome
    REVERSE_ERR: Final = "REVERSE_ERR"
    # the R part
    R_VERSION: Final = "R_VERSION"
    T_RSTART: Final = "T_RSTART"
    R_TOO_OLD: Final = "R_TOO_OLD"  # why this R cannot run the workers (R/r_version.R)
    OUTPUT_LOG: Final = "OUTPUT_LOG"  # worker_output: the host's file (R/worker_output.R)
    OUTPUT_ERR: Final = "OUTPUT_ERR"  # why the workers would refuse worker_output
    R_MISSING: Final = "R_MISSING"  # comma-separated
    R_NOLOAD: Final = "R_NOLOAD"  # one line per package register: needs that does not load
    T_PACKAGES: Final = "T_PACKAGES"
    CALLBACK: Final = "CALLBACK"  # "ok", or what went wrong
    T_CALLBACK: Final = "T_CALLBACK"
    # the packages step against a reference
    PKGV: Final = "PKGV"  # one line per package: name, version, library
    ENV_R: Final = "ENV_R"
    ENV_PLATFORM: Final = "ENV_PLATFORM"
    ENV_LIB: Final = "ENV_LIB"
    ENV_LIB_MISSING: Final = "ENV_LIB_MISSING"
    # a host with a container: (sshcluster/containers/probe.sh), before R runs in the image
    CONTAINER_ENGINE: Final = "CONTAINER_ENGINE"  # podman or docker, as the launch picks it
    CONTAINER_USER: Final = "CONTAINER_USER"  # the login user
    CONTAINER_NOENGINE: Final = "CONTAINER_NOENGINE"  # the engine that is not installed
    CONTAINER_UNUSABLE: Final = "CONTAINER_UNUSABLE"  # why the login user cannot use it
    CONTAINER_ABSENT: Final = "CONTAINER_ABSENT"  # the image is not there (the pull policy)
    CONTAINER_NOPULL: Final = "CONTAINER_NOPULL"  # why the pull failed
    CONTAINER_IMAGE: Final = "CONTAINER_IMAGE"  # the image's id: R can be tried in it
    CONTAINER_KEEPER: Final = "CONTAINER_KEEPER"  # the launch's keeper, tried in the image
    CONTAINER_KEEPER_STATE: Final = "CONTAINER_KEEPER_STATE"  # its container, once R ran
    CONTAINER_KEEPER_ERR: Final = "CONTAINER_KEEPER_ERR"  # why it did not start, or stay
    T_CONTAINER: Final = "T_CONTAINER"  # uptime stamps around the container's checks


class SyncFact:
    """The keys of the ``KEY=value`` lines ``sshcluster sync``'s remote script prints
    (``packages/R/sync.sh`` and the R it runs, ``packages/R/verify.R``)."""

    R_VERSION: Final = "R_VERSION"
    PLATFORM: Final = "PLATFORM"
    OS: Final = "OS"  # the host's /etc/os-release, as the reference names it
    SHARED_ID: Final = "SHARED_ID"  # the library's file system, to tell shared ones apart
    LIBRARY: Final = "LIBRARY"
    STATE: Final = "STATE"  # complete, there, verified, ...
    FAILED: Final = "FAILED"
    HAVE: Final = "HAVE"  # one line per installed package: name, version
    LOADFAIL: Final = "LOADFAIL"  # one line per package that does not load


# --------------------------------------------------------------------------- the launch

#: The R connections a launch holds on the primary besides one socket per worker: the
#: listening socket and the pipe to the supervisor of its ssh sessions.
LAUNCH_CONNECTIONS: Final = 2
#: The R connections a launch leaves free for the user's own files.
USER_CONNECTIONS: Final = 2
#: The most workers one relay carries (``R/launch/session.R``): a host's relay holds an R
#: connection per worker, of R's 128; a host with more gets a relay per this many.
RELAY_MOST_WORKERS: Final = 100
#: The locale variables the launch hands each host (``LOCALE_VARS`` in
#: ``R/common.R``), and the check's R starts with.
LOCALE_VARS: Final[tuple[str, ...]] = (
    "LANG", "LC_ALL", "LC_CTYPE", "LC_COLLATE", "LC_TIME", "LC_MONETARY", "LC_MESSAGES",
    "LC_PAPER", "LC_MEASUREMENT")
#: The files of ``sshcluster/R`` pasted, in this order, before both the fast launch's host
#: script (``R/remote.sh``) and the check's (``check/probe.sh``): the check tries what
#: the launch does on a host with the launch's own shell code (the workers' locale, the
#: workdir, the lease).
HOST_SHELL: Final[tuple[str, ...]] = ("locale.sh", "workdir.sh", "lease.sh")
#: The files of ``sshcluster/R`` pasted, in this order, into both the workers' R code
#: (before ``R/worker.R``) and the check's R (before ``check/R/probe.R``): the oldest R
#: the workers run on, and the test of ``worker_output``'s directory.
WORKER_SHARED_R: Final[tuple[str, ...]] = ("r_version.R", "worker_output.R")
#: The first bytes of a worker's hello (``PROOF_MAGIC`` of ``R/proof.R``).
PROOF_MAGIC: Final = b"SCW4"
#: The line a host's session reports a worker's end with: ``gone SLOT STATUS``
#: (``R/worker.R`` writes it, ``R/remote.sh`` for a worker that never started).
GONE: Final = "gone"

# --------------------------------------------------------------------------- the leases

#: Seconds without a line from its holder after which a host's lease session
#: (``jobs/lease.sh``) ends, releasing the host or leaving the line: the holder (a
#: job's own process, a detached job's supervisor) is gone, or cut off by a network that
#: drops every packet, so that no end of its connection ever reaches the host.
LEASE_SILENCE: Final = 40
#: Seconds between a holder's lines: a quarter of the silence, so that a line or two
#: late (a loaded machine) never ends a lease.
LEASE_HEARTBEAT: Final = LEASE_SILENCE // 4
#: Seconds a push waits for a host to take any more of its archive before giving that
#: host up (its receiving end stuck: a hung disk or network mount, a stopped process;
#: ssh's keepalive sees only a dead connection): its ssh is ended, the others go on.
PUSH_STALL: Final = 300
#: The same limit holds for a host's listing, hashing and setting of modification times
#: (``push/remote.sh``'s scan, sums and touch): it reports its progress this many times
#: per stall limit (``sshcluster-push-progress`` lines), and is given up once that
#: progress has not moved for :data:`PUSH_STALL` seconds, however long the whole takes
#: (hashing a re-timestamped 200 GB takes its time; a stopped or stuck one never ends).
PUSH_REPORTS_PER_STALL: Final = 4
#: Seconds a host's receive waits for another push into the same DEST there to end (a
#: lock in DEST, ``push/remote.sh``) before that host fails, naming DEST: half the stall
#: limit, since a host that waits reads none of the data meanwhile.
PUSH_LOCK_WAIT: Final = PUSH_STALL // 2
#: The first word of those progress lines (on the session's stderr).
PUSH_PROGRESS: Final = "sshcluster-push-progress"
#: Seconds a push session may take to say its first word (the ssh login, the script
#: read): the hang guard until progress can be seen.
PUSH_FIRST_ANSWER: Final = 120
#: The R packages each registration (the inventory's ``register:``) loads, on the
#: primary and on every worker: the launch stops naming a host that cannot load them
#: (``R/common.R``'s check_register, which gets this from the bootstrap's config), and
#: the check fails that host's ``packages`` step.
REGISTER_NEEDS: Final[dict[str, tuple[str, ...]]] = {
    "doparallel": ("doParallel", "foreach"), "future": ("future",)}


def register_needs(register: Sequence[str]) -> tuple[str, ...]:
    """The packages the registrations ``register`` need, each once."""
    return tuple(dict.fromkeys(p for r in register for p in REGISTER_NEEDS[r]))


__all__ = [
    "GONE",
    "HOST_SHELL",
    "LAUNCH_CONNECTIONS",
    "LEASE_HEARTBEAT",
    "LEASE_SILENCE",
    "LOCALE_VARS",
    "PROOF_MAGIC",
    "PUSH_FIRST_ANSWER",
    "PUSH_LOCK_WAIT",
    "PUSH_PROGRESS",
    "PUSH_REPORTS_PER_STALL",
    "PUSH_STALL",
    "REGISTER_NEEDS",
    "RELAY_MOST_WORKERS",
    "REMOTE_STEPS",
    "STEPS",
    "USER_CONNECTIONS",
    "WORKER_SHARED_R",
    "Fact",
    "SyncFact",
    "register_needs",
]
