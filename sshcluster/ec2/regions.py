"""Which regions to talk to, and one call in each of them with every region's outcome kept.

``ls`` and ``gc`` look in every region this machine has a cluster record in, and in the
default region, so a cluster whose spec names another region is not missed.
:func:`each_region` makes the call in each and returns a :class:`Results`: like fabric's
``GroupResult``, a failure in one region (no such region, no permission there) is kept
next to the answers of the others instead of ending the search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from sshcluster.ec2.aws import aws_errors, make_client
from sshcluster.ec2.records import load_records, record_regions
from sshcluster.errors import EC2Error, NoRegion, SshclusterError

if TYPE_CHECKING:
    from mypy_boto3_ec2.client import EC2Client

K = TypeVar("K")
T = TypeVar("T")


@dataclass(frozen=True)
class Results(Generic[K, T]):
    """The outcome of one operation on many things (regions, clusters), each kept:
    ``succeeded`` maps a thing to its answer, ``failed`` to the error it raised."""

    succeeded: dict[K, T] = field(default_factory=dict)
    failed: dict[K, SshclusterError] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True if nothing failed."""
        return not self.failed

    @property
    def keys(self) -> tuple[K, ...]:
        """Everything the operation was tried on, those that succeeded first."""
        return (*self.succeeded, *self.failed)


#: Per region: the region's name maps to its answer or its error.
RegionResults = Results[str, T]


def default_region() -> str | None:
    """boto3's default region (AWS_REGION, AWS_DEFAULT_REGION, the AWS config), if any."""
    import boto3

    with aws_errors("reading the AWS configuration"):
        region = boto3.session.Session().region_name
    return str(region) if region else None


def resolve_region(region: str | None, name: str | None = None,
                   records: Path | None = None) -> str:
    """The region to talk to: ``region``, else the one of this machine's record of
    cluster ``name`` (if only one region has it), else boto3's default (AWS_REGION,
    AWS_DEFAULT_REGION, the AWS config)."""
    if region:
        return region
    if name:
        regions = {r.region for r in load_records(records) if r.name == name}
        if len(regions) == 1:
            return regions.pop()
    default = default_region()
    if default:
        return default
    raise EC2Error("no AWS region given", hint="pass --region, or set AWS_DEFAULT_REGION")


def search_regions(region: str | None = None, records: Path | None = None
                   ) -> tuple[str, ...]:
    """The regions to look for clusters in: ``region`` alone when given; else every
    region this machine has a record in, and boto3's default region."""
    if region:
        return (region,)
    regions = set(record_regions(records))
    default = default_region()
    if default:
        regions.add(default)
    if not regions:
        raise NoRegion("no AWS region given, and no cluster records on this machine",
                       hint="pass --region, or set AWS_DEFAULT_REGION")
    return tuple(sorted(regions))


def each_region(call: Callable[[EC2Client], T], *, region: str | None = None,
                records: Path | None = None) -> RegionResults[T]:
    """``call(client)`` with a client for each region of :func:`search_regions`; a region
    whose call raises an :class:`SshclusterError` is in ``failed``, and the others are
    still asked."""
    results: RegionResults[T] = Results()
    for name in search_regions(region, records):
        try:
            results.succeeded[name] = call(make_client(name))
        except SshclusterError as e:
            results.failed[name] = e
    return results


__all__ = [
    "RegionResults",
    "Results",
    "default_region",
    "each_region",
    "resolve_region",
    "search_regions",
]
