"""The same R packages on every host: the environment the check compares, and ``sync``.

* :mod:`~sshcluster.packages.reference`: the reference environment (the primary's
  ``r_packages`` and their hard dependencies, or an renv lockfile) and the name of the
  library sync makes for it;
* :mod:`~sshcluster.packages.drift`: how a host differs from it (the check's
  ``packages`` step).
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
from sshcluster.requirements import Constraint, Packages

__all__ = [
    "Constraint",
    "Drift",
    "Packages",
    "RPackage",
    "Reference",
    "drift",
    "drift_verdict",
    "host_versions",
    "lockfile_reference",
    "primary_reference_async",
    "reference",
    "reference_for",
]
