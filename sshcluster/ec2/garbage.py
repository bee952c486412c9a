"""Garbage: clusters that should not be there any more, found and ended by ``ec2 gc``.

A cluster is garbage when

* its instances are past their expiry, or carry no valid expiry tag;
* it was started from this machine but no record of it is left here (an ``up`` whose
  record was lost);
* this machine's record says ``starting`` but the ``up`` that wrote it is gone (killed:
  SIGKILL, a power loss) — collected at once, not at its expiry;
* its instances are all gone (ended by their own timer, say) but its security group, key
  pair or record is still there.

A cluster started for a detached job (``sshcluster run --ec2 --detach``) is no garbage
while its expiry is ahead, whether its job still runs or has ended without its results
fetched (``fetch`` ends it); past its expiry it is, as any other. Its ``job`` is shown.

Like ``ls`` and ``down``, ``gc`` looks at the caller's own clusters only, unless
``any_owner``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sshcluster.ec2.aws import aws_errors, make_client, region_of
from sshcluster.ec2.cleanup import CLEANUP_TIMEOUT, DownReport
from sshcluster.ec2.clusters import down, list_clusters
from sshcluster.ec2.instances import TAG_CLUSTER, cluster_filters, format_time, utcnow
from sshcluster.ec2.records import Record, default_owner, load_records, my_owners, state_dir
from sshcluster.ec2.regions import Results, each_region
from sshcluster.errors import EC2Error, SshclusterError

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client
    from mypy_boto3_ec2.type_defs import TagTypeDef


@dataclass(frozen=True)
class Garbage:
    """A cluster :func:`find_garbage` proposes to remove, why, and what it consists of."""

    name: str
    reason: str
    instance_ids: tuple[str, ...]
    region: str
    owner: str | None = None
    security_groups: tuple[str, ...] = ()
    key_pairs: tuple[str, ...] = ()
    record: bool = False  # this machine has a record of it
    job: str | None = None  # the detached job it was started for

    @property
    def what(self) -> str:
        """What would be removed, for people: the instances, else what is left of it."""
        if self.instance_ids:
            return ", ".join(self.instance_ids)
        parts = [*self.security_groups, *(f"key pair {k}" for k in self.key_pairs)]
        if self.record:
            parts.append("its record here")
        return ", ".join(parts) or "nothing but its name"


def _by_cluster(items: Iterable[tuple[Sequence[TagTypeDef], str]]) -> dict[str, list[str]]:
    """``{cluster name: [ids]}`` from ``(tags, id)`` pairs."""
    out: dict[str, list[str]] = {}
    for tags, ident in items:
        name = next((t["Value"] for t in tags if t["Key"] == TAG_CLUSTER), None)
        if name:
            out.setdefault(name, []).append(ident)
    return out


def find_garbage(*, client: EC2Client, records: Path | None = None, owner: str | None = None,
                 any_owner: bool = False, now: datetime | None = None
                 ) -> tuple[Garbage, ...]:
    """The caller's garbage (``owner``, default :func:`default_owner`; everyone's with
    ``any_owner``) in the client's region: see the module's text for what counts."""
    now = now or utcnow()
    owner = owner or default_owner(records)
    owners = my_owners(owner, records)  # and the older owner tags of this machine's records
    scope = None if any_owner else owners
    region = region_of(client)
    here: dict[str, Record] = {r.name: r for r in load_records(records or state_dir())
                               if r.region == region and (scope is None or r.owner in scope)}
    out = []
    statuses = list_clusters(client=client, records=records, owner=owner, any_owner=any_owner)
    for status in statuses:
        live = status.live
        if not live:
            continue
        reason = None
        if status.orphaned:
            reason = "the 'sshcluster ec2 up' that started it is gone (killed)"
        elif status.expires is None:
            reason = "no valid expiry tag"
        elif status.expires <= now:
            reason = f"expired at {format_time(status.expires)}"
        elif not status.known and status.owner in owners:
            reason = "started from this machine, but no record of it is left here"
        if reason:
            out.append(Garbage(status.name, reason, tuple(i.id for i in live), status.region,
                               owner=status.owner, record=status.known, job=status.job))

    # What is left of clusters without live instances: groups, key pairs, records.
    filters = cluster_filters(owner=scope)
    with aws_errors("DescribeSecurityGroups"):
        groups = _by_cluster((g.get("Tags", []), g["GroupId"]) for g in
                             client.describe_security_groups(Filters=filters)["SecurityGroups"])
    with aws_errors("DescribeKeyPairs"):
        pairs = _by_cluster((k.get("Tags", []), k["KeyName"]) for k in
                            client.describe_key_pairs(Filters=filters)["KeyPairs"])
    with_live = {s.name for s in statuses if s.live}
    for name in sorted({*groups, *pairs, *here} - with_live):
        record = here.get(name)
        if record is not None and record.status == "starting" and not record.owner_gone() \
                and record.expires > now:
            continue  # an up that is still running: it creates these before instances
        if record is not None and record.owner_gone():
            reason = "the 'sshcluster ec2 up' that started it is gone (killed)"
        else:
            reason = "its instances are gone, but not all of what was made for it"
        out.append(Garbage(name, reason, (), region,
                           owner=record.owner if record else None if any_owner else owner,
                           security_groups=tuple(groups.get(name, ())),
                           key_pairs=tuple(pairs.get(name, ())), record=record is not None,
                           job=record.job if record else None))
    return tuple(out)


def find_all_garbage(*, region: str | None = None, records: Path | None = None,
                     owner: str | None = None, any_owner: bool = False
                     ) -> Results[str, tuple[Garbage, ...]]:
    """:func:`find_garbage` in every region ``gc`` looks in (one region if ``region``)."""
    return each_region(lambda c: find_garbage(client=c, records=records, owner=owner,
                                              any_owner=any_owner),
                       region=region, records=records)


def _collect(g: Garbage, client: EC2Client, records: Path | None, timeout: float,
             poll: float) -> DownReport:
    # Only the owner's part of a shared name, with the ids of its record.
    return down(g.name, client=client, records=records, owner=g.owner,
                any_owner=g.owner is None, timeout=timeout, poll=poll)


def collect_garbage(garbage: Iterable[Garbage], *, client: EC2Client,
                    records: Path | None = None, timeout: float = CLEANUP_TIMEOUT,
                    poll: float = 5.0) -> tuple[DownReport, ...]:
    """End every cluster in ``garbage`` (found with a client for the same region)."""
    garbage = tuple(garbage)
    region = region_of(client)
    elsewhere = sorted({g.region for g in garbage} - {region})
    if elsewhere:
        raise EC2Error(f"garbage found in {', '.join(elsewhere)} cannot be collected with "
                       f"a client for {region}", hint="collect each region's garbage with "
                       "a client for that region")
    return tuple(_collect(g, client, records, timeout, poll) for g in garbage)


def collect_all_garbage(garbage: Iterable[Garbage], *, records: Path | None = None,
                        timeout: float = CLEANUP_TIMEOUT, poll: float = 5.0
                        ) -> Results[Garbage, DownReport]:
    """End every cluster in ``garbage``, each with a client for its region; one cluster's
    failure is kept with the others' reports."""
    results: Results[Garbage, DownReport] = Results()
    clients: dict[str, EC2Client] = {}
    for g in garbage:
        try:
            if g.region not in clients:
                clients[g.region] = make_client(g.region)
            results.succeeded[g] = _collect(g, clients[g.region], records, timeout, poll)
        except SshclusterError as e:
            results.failed[g] = e
    return results


__all__ = [
    "Garbage",
    "collect_all_garbage",
    "collect_garbage",
    "find_all_garbage",
    "find_garbage",
]
