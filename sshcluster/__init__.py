"""sshcluster: turn a list of machines into a working R cluster.

    import sshcluster

    inv = sshcluster.load_inventory("hosts.yaml")      # sshcluster.InventoryError if wrong
    report = sshcluster.check(inv)                     # every host, all steps, one deadline
    ready = sshcluster.verified_inventory(report, inv)
    sshcluster.write_bootstrap(ready, "cluster.R")     # in R: source("cluster.R")
    sshcluster.run(inv, "fit.R")                       # or all of it, with hosts leased

EC2 lives in :mod:`sshcluster.ec2`, the local test hosts in :mod:`sshcluster.testing`.
"""

from __future__ import annotations

__version__ = "0.1.0"


# First, before anything imports asyncssh; after __version__: bootstrap reads it.
from sshcluster import quiet as _quiet  # noqa: F401
from sshcluster.bootstrap import RenderOptions, render, write_bootstrap
from sshcluster.errors import (
    CheckFailed,
    EC2Error,
    HostError,
    HostLeased,
    InventoryError,
    NoSuchCluster,
    OutputExistsError,
    QuotingError,
    RenderError,
    SshclusterError,
    TestbedError,
    UnsafePathError,
)
from sshcluster.inventory import (
    Host,
    Inventory,
    Primary,
    dump_inventory,
    load_inventory,
    parse_inventory,
)
from sshcluster.jobs import RunOptions, RunResult, run
from sshcluster.preflight import check, check_async, verified_inventory
from sshcluster.report import CheckReport, HostReport, StepResult

__all__ = [
    "CheckFailed",
    "CheckReport",
    "EC2Error",
    "Host",
    "HostError",
    "HostLeased",
    "HostReport",
    "Inventory",
    "InventoryError",
    "NoSuchCluster",
    "OutputExistsError",
    "Primary",
    "QuotingError",
    "RenderError",
    "RenderOptions",
    "RunOptions",
    "RunResult",
    "SshclusterError",
    "StepResult",
    "TestbedError",
    "UnsafePathError",
    "__version__",
    "check",
    "check_async",
    "dump_inventory",
    "load_inventory",
    "parse_inventory",
    "render",
    "run",
    "verified_inventory",
    "write_bootstrap",
]
