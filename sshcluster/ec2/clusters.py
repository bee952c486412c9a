"""The clusters sshcluster started that EC2 has now: list them and end them.

The Python API behind ``sshcluster ec2 ls | down`` (``gc`` is in
:mod:`sshcluster.ec2.garbage`). A cluster is found by its tags (``sshcluster:cluster``,
``sshcluster:run``), not by what this machine remembers, so ``down`` also ends what an
``up`` that died left behind; the records in :func:`~sshcluster.ec2.records.state_dir`
tell ``ls`` which clusters this machine knows and which are orphans.

Both act on the caller's own clusters (the ``sshcluster:owner`` tag: the caller's STS
identity and a per-user id, :func:`~sshcluster.ec2.records.default_owner`, and the older
owner tags of this machine's records):
colleagues who share an AWS account and both call their cluster ``rwork`` do not end or
list each other's. ``any_owner=True`` lifts that.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sshcluster.ec2.aws import make_client, region_of
from sshcluster.ec2.cleanup import CLEANUP_TIMEOUT, CleanupIncomplete, DownReport, remove_resources
from sshcluster.ec2.instances import (
    Instance,
    cluster_filters,
    cluster_instances,
    describe_instances,
    format_duration,
    format_time,
    utcnow,
)
from sshcluster.ec2.records import (
    Record,
    default_owner,
    find_record,
    load_records,
    my_owners,
    remove_record,
    state_dir,
)
from sshcluster.ec2.regions import Results, each_region, resolve_region
from sshcluster.errors import ForeignCluster, NoSuchCluster, SshclusterError

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client

#: What to run for a cluster whose ``up`` died.
GC_COMMAND = "sshcluster ec2 gc"


@dataclass(frozen=True)
class ClusterStatus:
    """One cluster as :func:`list_clusters` finds it: every instance, in any state.

    ``orphaned``: this machine's record of it says ``starting``, but the ``up`` that
    wrote the record is gone (killed); ``sshcluster ec2 gc`` ends it. ``job``: the
    detached job it was started for (``sshcluster run --ec2 --detach``), whose
    ``fetch`` or ``stop`` ends it.
    """

    name: str
    owner: str | None
    expires: datetime | None
    instances: tuple[Instance, ...]
    known: bool  # a record of it exists on this machine
    region: str
    orphaned: bool = False
    job: str | None = None

    @property
    def live(self) -> tuple[Instance, ...]:
        """The instances that are not terminated yet."""
        return tuple(i for i in self.instances if i.live)

    def to_dict(self, now: datetime) -> dict[str, Any]:
        """A JSON-ready view with ages and time left in seconds at ``now``."""
        return {
            "name": self.name,
            "region": self.region,
            "owner": self.owner,
            "expires": format_time(self.expires) if self.expires else None,
            "time_left_seconds": int((self.expires - now).total_seconds())
            if self.expires else None,
            "known": self.known,
            "orphaned": self.orphaned,
            "job": self.job,
            "instances": [{
                "id": i.id, "state": i.state, "type": i.instance_type, "spot": i.spot,
                "public_ip": i.public_ip, "private_ip": i.private_ip, "run_id": i.run_id,
                "age_seconds": int((now - i.launch_time).total_seconds())
                if i.launch_time else None,
            } for i in self.instances],
        }


def format_clusters(clusters: Iterable[ClusterStatus], now: datetime | None = None) -> str:
    """The table ``sshcluster ec2 ls`` prints: one row per instance, then a line for each
    orphaned cluster with the command that ends it."""
    now = now or utcnow()
    clusters = tuple(clusters)
    rows = [("cluster", "region", "instance", "state", "type", "address", "age",
             "time left")]
    for c in clusters:
        left = format_duration(c.expires - now) if c.expires else "?"
        name = c.name + (" (orphaned)" if c.orphaned else "" if c.known else " (no record)")
        name += f" (job {c.job})" if c.job else ""
        if not c.instances:
            rows.append((name, c.region, "-", "-", "-", "-", "-", left))
        for i in c.instances:
            rows.append((name, c.region, i.id, i.state,
                         i.instance_type + (" spot" if i.spot else ""),
                         i.public_ip or i.private_ip or "-",
                         format_duration(now - i.launch_time) if i.launch_time else "?",
                         left if i.live else "-"))
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines += [f"{c.name} ({c.region}) is orphaned: the 'sshcluster ec2 up' that started it is "
              f"gone; end it with: {GC_COMMAND}" for c in clusters if c.orphaned]
    return "\n".join(lines)


def list_clusters(*, client: EC2Client, records: Path | None = None, owner: str | None = None,
                  any_owner: bool = False) -> tuple[ClusterStatus, ...]:
    """The caller's clusters (``owner``, default :func:`default_owner`; everyone's with
    ``any_owner``) in the client's region, with every instance in any state (terminated
    ones while EC2 still lists them), and the orphaned ones this machine has a record of
    even before they have instances."""
    region = region_of(client)
    mine = None if any_owner else my_owners(owner or default_owner(records), records)
    here = {r.name: r for r in load_records(records or state_dir())
            if r.region == region and (mine is None or r.owner in mine)}
    # Two owners may each have a cluster of the same name (with any_owner, both show).
    by_name: dict[tuple[str, str | None], list[Instance]] = {}
    for inst in describe_instances(client, cluster_filters(owner=mine)):
        by_name.setdefault((inst.cluster or "?", inst.owner), []).append(inst)
    for name, record in here.items():
        if (name, record.owner) not in by_name and record.owner_gone():
            by_name[(name, record.owner)] = []
    out = []
    for (name, who), instances in sorted(by_name.items(), key=lambda kv: (kv[0][0],
                                                                         kv[0][1] or "")):
        # Terminated instances of an earlier run of the same name stay listed for a
        # while; their expiry is not this cluster's.
        current = [i for i in instances if i.live] or instances
        expiries = [i.expires for i in current if i.expires]
        known = here.get(name) if here.get(name) and here[name].owner == who else None
        expires = min(expiries) if expiries else known.expires if known else None
        job = next((i.job for i in current if i.job), None) or (known.job if known else None)
        out.append(ClusterStatus(name, who, expires, tuple(instances), known is not None,
                                 region, orphaned=known is not None and known.owner_gone(),
                                 job=job))
    return tuple(out)


def list_all_clusters(*, region: str | None = None, records: Path | None = None,
                      owner: str | None = None, any_owner: bool = False
                      ) -> Results[str, tuple[ClusterStatus, ...]]:
    """:func:`list_clusters` in every region ``ls`` looks in (one region if ``region``)."""
    return each_region(lambda c: list_clusters(client=c, records=records, owner=owner,
                                               any_owner=any_owner),
                       region=region, records=records)


def down(name: str, *, client: EC2Client | None = None, region: str | None = None,
         records: Path | None = None, owner: str | None = None, any_owner: bool = False,
         timeout: float = CLEANUP_TIMEOUT, poll: float = 5.0) -> DownReport:
    """Terminate every instance of the caller's cluster ``name`` in any state, cancel its
    spot requests, delete the security group and key pair ``up`` created for it, its
    private key file and its record. Running it again finds nothing to do and returns an
    empty report.

    Without ``client``, one is made for ``region``, else for the region of this
    machine's record of ``name``, else for the default region. ``owner`` (default
    :func:`default_owner`) is whose cluster to end; a cluster of that name that only
    someone else has raises :class:`~sshcluster.errors.ForeignCluster`, unless
    ``any_owner``. A name that never was a cluster there raises
    :class:`~sshcluster.errors.NoSuchCluster`, which names the clusters that do exist.

    The cleanup is bounded by ``timeout``; what is still there then (a security group
    still in use, an instance not terminated yet) raises
    :class:`~sshcluster.ec2.cleanup.CleanupIncomplete`, which says what is left and the
    command (with ``--region``) that finishes; the record and the key file stay until
    then.
    """
    records = records or state_dir()
    owner = owner or default_owner(records)
    owners = my_owners(owner, records)  # and the older owner tags of this machine's records
    if client is None:
        client = make_client(resolve_region(region, name, records))
    where = region_of(client)
    record = find_record(records, where, name)
    if record is not None and not any_owner and record.owner not in owners:
        record = None  # another owner's record on this machine: not the caller's cluster
    everyone = cluster_instances(client, name, live=False)
    mine = [i for i in everyone if any_owner or i.owner in owners]
    others = tuple(sorted({i.owner or "someone" for i in everyone
                           if i.live and i.owner not in owners}))
    if others and not any_owner and record is None and not any(i.live for i in mine):
        raise ForeignCluster(
            f"cluster {name} in {where} belongs to {', '.join(others)}, not to {owner}; "
            "nothing was touched", name=name, region=where, owners=others,
            hint=f"ask {others[0]} to end it, or pass --any-owner to end it anyway")
    report = remove_resources(
        client, name, owner=None if any_owner else owners, timeout=timeout, poll=poll,
        instance_ids=record.instance_ids if record else (),
        security_groups=(record.security_group,) if record else (),
        key_pairs=(record.key_pair,) if record else ())
    if not report.complete:
        # The record stays until nothing is left: it is what tells a later down, ls
        # and gc of this machine which region to look in.
        raise CleanupIncomplete(report)
    report = replace(report, removed_files=forget(records, record))
    if record is None and not report.removed_anything and not mine:
        raise _no_such_cluster(name, where, region, records)
    return report


def forget(records: Path, record: Record | None) -> tuple[str, ...]:
    """Remove ``record`` and the private key file it names; the files removed."""
    if record is None:
        return ()
    removed = []
    if record.key_file and Path(record.key_file).exists():
        Path(record.key_file).unlink()
        removed.append(record.key_file)
    remove_record(records, record.region, record.name)
    return tuple(removed)


def _no_such_cluster(name: str, where: str, region: str | None,
                     records: Path) -> NoSuchCluster:
    """The error for ``down`` of a name that is no cluster, listing the clusters there are
    in the regions ``ls`` looks in (``region`` only, when given)."""
    try:
        found = list_all_clusters(region=region, records=records)
        clusters = [c for listed in found.succeeded.values() for c in listed]
        looked = ", ".join(found.succeeded) or where
    except SshclusterError:
        clusters, looked = [], where
    message = (f"no cluster {name} in {where}: no record of it on this machine, and "
               f"nothing in {where} is tagged with it")
    if clusters:
        message += ("\nthe clusters sshcluster started, as 'sshcluster ec2 ls' lists them:\n"
                    + format_clusters(clusters))
    else:
        message += f"\nthere are no clusters in {looked}"
    return NoSuchCluster(message, name=name, region=where,
                         existing=tuple(sorted({c.name for c in clusters})),
                         hint="check the name; for a cluster in another region pass --region")


__all__ = [
    "GC_COMMAND",
    "ClusterStatus",
    "down",
    "forget",
    "format_clusters",
    "list_all_clusters",
    "list_clusters",
]
