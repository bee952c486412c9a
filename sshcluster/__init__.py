"""sshcluster: turn a list of machines into a working R cluster."""

from __future__ import annotations

from sshcluster.errors import (
    CheckFailed,
    EC2Error,
    HostError,
    InventoryError,
    QuotingError,
    RenderError,
    SshclusterError,
    TestbedError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckFailed",
    "EC2Error",
    "HostError",
    "InventoryError",
    "QuotingError",
    "RenderError",
    "SshclusterError",
    "TestbedError",
    "__version__",
]
