"""The R connections a cluster takes on the primary, and what R allows.

Every PSOCK worker holds one R connection on the primary for as long as it runs (behind
its host's relay, the fast launch's default, a host's workers share one), and R
before 4.4 allows 128 in all (R 4.4 takes ``--max-connections=N``, up to 4096). These
functions say, before anything starts, when an inventory needs more; the generated file
checks again against the R it runs in (``R/launch/start.R``).
"""

from __future__ import annotations

from sshcluster.errors import RenderError
from sshcluster.inventory import Inventory
from sshcluster.protocol import LAUNCH_CONNECTIONS, RELAY_MOST_WORKERS, USER_CONNECTIONS

#: R's connections: 128 in all before R 4.4 (stdin, stdout and stderr take three); R 4.4
#: takes ``--max-connections=N``, up to 4096.
R_CONNECTIONS = 128
R_MAX_CONNECTIONS = 4096


def connections_needed(workers: int) -> int:
    """The R connections a session needs to run ``workers`` workers from one primary: the
    standard three, one per worker, the launch's own, and a few left for the user."""
    return 3 + workers + LAUNCH_CONNECTIONS + USER_CONNECTIONS


def host_links(ncore: int, *, relay: bool = True, fork: bool = True,
               lease: bool = False) -> int:
    """The R connections one host's ``ncore`` workers hold on the primary: one per worker,
    or, behind the host's relay (forked workers, more than one), one per
    :data:`RELAY_MOST_WORKERS` of them (one in all with ``lease: true``, whose lease is one
    session's; as ``R/launch/session.R`` decides)."""
    if not (relay and fork) or ncore < 2:
        return ncore
    if ncore <= RELAY_MOST_WORKERS:
        return 1
    if lease:
        return ncore
    return -(-ncore // RELAY_MOST_WORKERS)


def links(inventory: Inventory, *, launch: str | None = None, fork: bool | None = None,
          lease: bool | None = None) -> int:
    """The R connections all of ``inventory``'s workers hold on the primary (the fast
    launch's relays, or one per worker for the classic launch); ``launch``, ``fork`` and
    ``lease`` override the inventory's, as a render's options do (see
    :func:`~sshcluster.launchplan.plan_of`)."""
    if (launch or inventory.launch) == "classic":
        return inventory.workers
    fork = inventory.fork if fork is None else fork
    lease = inventory.lease if lease is None else lease
    return sum(host_links(h.ncore or 0, relay=inventory.relay, fork=fork, lease=lease)
               for h in inventory.hosts)


def connection_note(inventory: Inventory, *, launch: str | None = None,
                    fork: bool | None = None, lease: bool | None = None) -> str | None:
    """What to know when ``inventory`` needs more R connections than R allows by default
    (None when it fits), launched as ``launch``, ``fork`` and ``lease`` say (default: as
    the inventory says). Raises :class:`RenderError` when no R can hold it."""
    n = links(inventory, launch=launch, fork=fork, lease=lease)
    needed = connections_needed(n)
    if needed > R_MAX_CONNECTIONS:
        where = f"{inventory.path}: " if inventory.path else ""
        raise RenderError(
            f"{where}{inventory.workers:,} workers need {needed:,} R connections "
            f"on the primary; no R allows more than {R_MAX_CONNECTIONS:,}",
            hint=f"give one primary at most {R_MAX_CONNECTIONS - connections_needed(0):,} "
                 "connections' worth of hosts (split the hosts over several inventories "
                 "and R sessions)")
    return workers_note(inventory.workers, links=n)


def workers_note(workers: int, r_version: str | None = None, *,
                 links: int | None = None) -> str | None:
    """What to know when ``workers`` workers on one primary, which hold ``links`` R
    connections there (default: one each), need more R connections than R allows by
    default, or than the primary's R (``r_version``) can have at all (None when they
    fit)."""
    needed = connections_needed(workers if links is None else links)
    if needed <= R_CONNECTIONS:
        return None
    most = R_CONNECTIONS - connections_needed(0)
    if needed > R_MAX_CONNECTIONS:
        return (f"{workers:,} workers need {needed:,} R connections on the primary; no R "
                f"allows more than {R_MAX_CONNECTIONS:,}: split the hosts over several "
                "primaries")
    old = r_version is not None and tuple(int(p) for p in r_version.split(".")[:2]) < (4, 4)
    return (f"{workers} workers need {needed} R connections on the primary: more than R "
            f"before 4.4 allows ({R_CONNECTIONS})" + (
                f", and this primary has R {r_version}" if old else "") +
            f". Run R >= 4.4 with --max-connections={needed}, or give this primary at most "
            f"{most} " + ("workers." if links is None or links == workers else
                          "connections (a host behind its relay takes one, a worker alone "
                          "one)."))


__all__ = [
    "LAUNCH_CONNECTIONS",
    "R_CONNECTIONS",
    "R_MAX_CONNECTIONS",
    "USER_CONNECTIONS",
    "connection_note",
    "connections_needed",
    "host_links",
    "links",
    "workers_note",
]
