"""The path docs/check.md documents: the check itself lives in :mod:`sshcluster.check`."""

from __future__ import annotations

from sshcluster.check.preflight import (
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT,
    PORT_RANGE,
    REMOTE_STEPS,
    ProgressCallback,
    check,
    check_async,
    verified_inventory,
)

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_TIMEOUT",
    "PORT_RANGE",
    "REMOTE_STEPS",
    "ProgressCallback",
    "check",
    "check_async",
    "verified_inventory",
]
