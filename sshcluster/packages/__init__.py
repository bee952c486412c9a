"""The same R packages on every host: the environment the check compares, and ``sync``.

* :mod:`~sshcluster.packages.reference`: the reference environment (the primary's
  ``r_packages`` and their hard dependencies, or an renv lockfile) and the name of the
  library sync makes for it;
* :mod:`~sshcluster.packages.drift`: how a host differs from it (the check's
  ``packages`` step);
* :mod:`~sshcluster.packages.sync`: give every host that environment, in a library of
  sshcluster's own named by its content::

    import sshcluster

    inv = sshcluster.load_inventory("hosts.yaml")
    report = sshcluster.sync(inv, progress=lambda host, what: print(host, what))
    for host in report.failed:
        print(host.label, host.detail)
"""

from __future__ import annotations

from sshcluster.packages.drift import Drift, drift, drift_verdict, host_versions
from sshcluster.packages.reference import (
    Reference,
    RPackage,
    lockfile_reference,
    primary_reference_async,
    reference,
    reference_for,
)
from sshcluster.packages.sync import (
    SYNC_TIMEOUT,
    HostSync,
    SyncProgress,
    SyncReport,
    sync,
    sync_async,
)
from sshcluster.requirements import Constraint, Packages

__all__ = [
    "SYNC_TIMEOUT",
    "Constraint",
    "Drift",
    "HostSync",
    "Packages",
    "RPackage",
    "Reference",
    "SyncProgress",
    "SyncReport",
    "drift",
    "drift_verdict",
    "host_versions",
    "lockfile_reference",
    "primary_reference_async",
    "reference",
    "reference_for",
    "sync",
    "sync_async",
]
