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

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

# First, before anything imports asyncssh.
from sshcluster import quiet as _quiet  # noqa: F401
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
from sshcluster.version import __version__

if TYPE_CHECKING:
    from sshcluster.bootstrap import RenderOptions, render, write_bootstrap
    from sshcluster.check import (
        CheckReport,
        HostReport,
        StepResult,
        check,
        check_async,
        verified_inventory,
    )
    from sshcluster.dump import dump_inventory
    from sshcluster.inventory import Host, Inventory, Primary, load_inventory, parse_inventory
    from sshcluster.jobs import RunOptions, RunResult, run
    from sshcluster.packages import SyncReport, sync, sync_async
    from sshcluster.push import HostPush, PushResult, push

#: The rest of the API, imported on first use (so that a command that needs no ssh
#: library, or one sub-package, starts without importing them all): name -> module.
_LAZY = {
    **dict.fromkeys(("RenderOptions", "render", "write_bootstrap"), "sshcluster.bootstrap"),
    **dict.fromkeys(("CheckReport", "HostReport", "StepResult", "check", "check_async",
                     "verified_inventory"), "sshcluster.check"),
    "dump_inventory": "sshcluster.dump",
    **dict.fromkeys(("Host", "Inventory", "Primary", "load_inventory", "parse_inventory"),
                    "sshcluster.inventory"),
    **dict.fromkeys(("RunOptions", "RunResult", "run"), "sshcluster.jobs"),
    **dict.fromkeys(("SyncReport", "sync", "sync_async"), "sshcluster.packages"),
    **dict.fromkeys(("HostPush", "PushResult", "push"), "sshcluster.push"),
}


class _Package(types.ModuleType):
    """``sshcluster``: the API's names are imported on first use. ``check`` and ``push``
    are the functions, not the sub-packages of those names: importing a sub-package
    does not rebind them."""

    def __getattr__(self, name: str) -> Any:
        where = _LAZY.get(name)
        if where is not None:
            value = getattr(importlib.import_module(where), name)
        elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
            value = importlib.import_module(f"{__name__}.{name}")  # (a sub-package, a module)
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        super().__setattr__(name, value)
        return value

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *_LAZY})

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("check", "push") and isinstance(value, types.ModuleType):
            return  # (the import system binding the sub-package: the function stays)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

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
