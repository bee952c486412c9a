"""sshcluster: turn a list of machines into a working R cluster.

    import sshcluster

    inv = sshcluster.load_inventory("hosts.yaml")      # sshcluster.InventoryError if wrong
    report = sshcluster.check(inv)                     # every host, all steps, one deadline
    ready = sshcluster.verified_inventory(report, inv)
    sshcluster.write_bootstrap(ready, "cluster.R")     # in R: source("cluster.R")

EC2 lives in :mod:`sshcluster.ec2`, the local test hosts in :mod:`sshcluster.testing`.
"""

from __future__ import annotations

__version__ = "0.1.0"


def _quiet_third_party_imports() -> None:
    """asyncssh's imports touch cryptography's deprecated DSA names, and each touch warns
    (10 lines, with cryptography >= 48) before any command of ours has said a word. A
    user can do nothing about it, so that one category is ignored when it comes from
    asyncssh's modules, and every other warning still shows."""
    import warnings

    try:
        from cryptography.utils import CryptographyDeprecationWarning
    except ImportError:  # pragma: no cover - cryptography comes with asyncssh
        return
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning,
                            module=r"asyncssh(\.|$)")


_quiet_third_party_imports()

# After __version__: bootstrap reads it.
from sshcluster.bootstrap import RenderOptions, render, write_bootstrap
from sshcluster.errors import (
    CheckFailed,
    EC2Error,
    HostError,
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
    dump_inventory,
    load_inventory,
    parse_inventory,
)
from sshcluster.preflight import check, check_async, verified_inventory

# (The function takes the name of its sub-package here, so that sshcluster.push(...) is
# the call; the sub-package's names are imported from sshcluster.push as usual.)
from sshcluster.push import HostPush, PushResult, push
from sshcluster.report import CheckReport, HostReport, StepResult

__all__ = [
    "CheckFailed",
    "CheckReport",
    "EC2Error",
    "Host",
    "HostError",
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
    "push",
    "render",
    "verified_inventory",
    "write_bootstrap",
]
