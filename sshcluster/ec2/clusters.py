"""The clusters sshcluster started that EC2 has now: list them, end them, collect garbage.

The Python API behind ``sshcluster ec2 ls | down | gc``. A cluster is found by its tags
(``sshcluster:cluster``, ``sshcluster:run``), not by what this machine remembers, so
``down`` also ends what an ``up`` that died left behind; the records in
:func:`~sshcluster.ec2.records.state_dir` tell ``ls`` which clusters this machine knows
and ``gc`` which of its owner's are orphans.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sshcluster.ec2.aws import make_client, region_of
from sshcluster.ec2.cleanup import DownReport, remove_resources
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
    default_owner,
    find_record,
    load_records,
    remove_record,
    state_dir,
)
from sshcluster.ec2.regions import Results, each_region, resolve_region
from sshcluster.errors import EC2Error, NoSuchCluster, SshclusterError

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client


@dataclass(frozen=True)
class ClusterStatus:
    """One cluster as :func:`list_clusters` finds it: every instance, in any state."""

    name: str
    owner: str | None
    expires: datetime | None
    instances: tuple[Instance, ...]
    known: bool  # a record of it exists on this machine
    region: str

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
            "instances": [{
                "id": i.id, "state": i.state, "type": i.instance_type, "spot": i.spot,
                "public_ip": i.public_ip, "private_ip": i.private_ip, "run_id": i.run_id,
                "age_seconds": int((now - i.launch_time).total_seconds())
                if i.launch_time else None,
            } for i in self.instances],
        }


@dataclass(frozen=True)
class Garbage:
    """A cluster :func:`find_garbage` proposes to remove, and why."""

    name: str
    reason: str
    instance_ids: tuple[str, ...]
    region: str


def format_clusters(clusters: Iterable[ClusterStatus], now: datetime | None = None) -> str:
    """The table ``sshcluster ec2 ls`` prints: one row per instance."""
    now = now or utcnow()
    rows = [("cluster", "region", "instance", "state", "type", "address", "age",
             "time left")]
    for c in clusters:
        left = format_duration(c.expires - now) if c.expires else "?"
        for i in c.instances:
            rows.append((c.name + ("" if c.known else " (no record)"), c.region, i.id,
                         i.state, i.instance_type + (" spot" if i.spot else ""),
                         i.public_ip or i.private_ip or "-",
                         format_duration(now - i.launch_time) if i.launch_time else "?",
                         left if i.live else "-"))
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def list_clusters(*, client: EC2Client, records: Path | None = None) -> tuple[ClusterStatus, ...]:
    """Every cluster sshcluster started in the client's region, with every instance in
    any state (terminated ones while EC2 still lists them)."""
    region = region_of(client)
    known = {r.name for r in load_records(records or state_dir()) if r.region == region}
    by_name: dict[str, list[Instance]] = {}
    for inst in describe_instances(client, cluster_filters()):
        by_name.setdefault(inst.cluster or "?", []).append(inst)
    out = []
    for name, instances in sorted(by_name.items()):
        # Terminated instances of an earlier run of the same name stay listed for a
        # while; their expiry is not this cluster's.
        current = [i for i in instances if i.live] or instances
        expiries = [i.expires for i in current if i.expires]
        out.append(ClusterStatus(name, instances[0].owner, min(expiries) if expiries else None,
                                 tuple(instances), name in known, region))
    return tuple(out)


def list_all_clusters(*, region: str | None = None, records: Path | None = None
                      ) -> Results[str, tuple[ClusterStatus, ...]]:
    """:func:`list_clusters` in every region ``ls`` looks in (one region if ``region``)."""
    return each_region(lambda c: list_clusters(client=c, records=records), region=region,
                       records=records)


def down(name: str, *, client: EC2Client | None = None, region: str | None = None,
         records: Path | None = None) -> DownReport:
    """Terminate every instance of cluster ``name`` in any state, cancel its spot requests,
    delete the security group and key pair ``up`` created for it, and the private key
    file. Running it again finds nothing to do and returns an empty report.

    Without ``client``, one is made for ``region``, else for the region of this
    machine's record of ``name``, else for the default region. A name that never was a
    cluster there raises :class:`~sshcluster.errors.NoSuchCluster`, which names the
    clusters that do exist.
    """
    records = records or state_dir()
    if client is None:
        client = make_client(resolve_region(region, name, records))
    report = remove_resources(client, name)
    where = region_of(client)
    record = find_record(records, where, name)
    removed: list[str] = []
    if record is not None:
        if record.key_file and Path(record.key_file).exists():
            Path(record.key_file).unlink()
            removed.append(record.key_file)
        remove_record(records, where, name)
    report = replace(report, removed_files=tuple(removed))
    # Ended instances stay listed for a while: a second down of a cluster that was there
    # is not a mistyped name.
    if record is None and not report.removed_anything and not cluster_instances(
            client, name, live=False):
        raise _no_such_cluster(name, where, region, records)
    return report


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


def find_garbage(*, client: EC2Client, records: Path | None = None, owner: str | None = None,
                 now: datetime | None = None) -> tuple[Garbage, ...]:
    """Clusters with live instances that are past their expiry (anyone's) or that belong
    to ``owner`` (this machine) but have no record here (an ``up`` that died)."""
    now = now or utcnow()
    owner = owner or default_owner()
    out = []
    for status in list_clusters(client=client, records=records):
        live = status.live
        if not live:
            continue
        reason = None
        if status.expires is None:
            reason = "no valid expiry tag"
        elif status.expires <= now:
            reason = f"expired at {format_time(status.expires)}"
        elif not status.known and status.owner == owner:
            reason = "started from this machine, but no record of it is left here"
        if reason:
            out.append(Garbage(status.name, reason, tuple(i.id for i in live), status.region))
    return tuple(out)


def find_all_garbage(*, region: str | None = None, records: Path | None = None,
                     owner: str | None = None) -> Results[str, tuple[Garbage, ...]]:
    """:func:`find_garbage` in every region ``gc`` looks in (one region if ``region``)."""
    return each_region(lambda c: find_garbage(client=c, records=records, owner=owner),
                       region=region, records=records)


def collect_garbage(garbage: Iterable[Garbage], *, client: EC2Client,
                    records: Path | None = None) -> tuple[DownReport, ...]:
    """``down`` every cluster in ``garbage`` (found with a client for the same region)."""
    garbage = tuple(garbage)
    region = region_of(client)
    elsewhere = sorted({g.region for g in garbage} - {region})
    if elsewhere:
        raise EC2Error(f"garbage found in {', '.join(elsewhere)} cannot be collected with "
                       f"a client for {region}", hint="collect each region's garbage with "
                       "a client for that region")
    return tuple(down(g.name, client=client, records=records) for g in garbage)


def collect_all_garbage(garbage: Iterable[Garbage], *, records: Path | None = None
                        ) -> Results[Garbage, DownReport]:
    """``down`` every cluster in ``garbage``, each with a client for its region; one
    cluster's failure is kept with the others' reports."""
    results: Results[Garbage, DownReport] = Results()
    clients: dict[str, EC2Client] = {}
    for g in garbage:
        try:
            if g.region not in clients:
                clients[g.region] = make_client(g.region)
            results.succeeded[g] = down(g.name, client=clients[g.region], records=records)
        except SshclusterError as e:
            results.failed[g] = e
    return results


__all__ = [
    "ClusterStatus",
    "Garbage",
    "collect_all_garbage",
    "collect_garbage",
    "down",
    "find_all_garbage",
    "find_garbage",
    "format_clusters",
    "list_all_clusters",
    "list_clusters",
]
