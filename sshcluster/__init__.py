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

# First, before anything imports asyncssh.
from sshcluster import quiet as _quiet  # noqa: F401
from sshcluster.bootstrap import RenderOptions, render, write_bootstrap

# (check and push: the function takes the name of its sub-package here, so that
# sshcluster.check(...) is the call; the sub-package's names are imported from it as usual.)
from sshcluster.check import (
    CheckReport,
    HostReport,
    StepResult,
    check,
    check_async,
    verified_inventory,
)
from sshcluster.dump import dump_inventory
from sshcluster.errors import (
    CheckFailed,
    EC2Error,
    HostError,
    HostLeased,
    InventoryError,
    NoSuchCluster,
    OutputExistsError,
    PushError,
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
    load_inventory,
    parse_inventory,
)
from sshcluster.jobs import RunOptions, RunResult, run
from sshcluster.packages import SyncReport, sync, sync_async
from sshcluster.push import HostPush, PushResult, push
from sshcluster.version import __version__

__all__ = [
    "CheckFailed",
    "CheckReport",
    "EC2Error",
    "Host",
    "HostError",
    "HostLeased",
    "HostPush",
    "HostReport",
    "Inventory",
    "InventoryError",
    "NoSuchCluster",
    "OutputExistsError",
    "Primary",
    "PushError",
    "PushResult",
    "QuotingError",
    "RenderError",
    "RenderOptions",
    "RunOptions",
    "RunResult",
    "SshclusterError",
    "StepResult",
    "SyncReport",
    "TestbedError",
    "UnsafePathError",
    "__version__",
    "check",
    "check_async",
    "dump_inventory",
    "load_inventory",
    "parse_inventory",
    "push",
    "render",
    "run",
    "sync",
    "sync_async",
    "verified_inventory",
    "write_bootstrap",
]
