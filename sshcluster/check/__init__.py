"""The preflight check: is every host ready to be a worker, and if not, why not.

* :mod:`~sshcluster.check.preflight`: the run (every host, all steps, one deadline);
* :mod:`~sshcluster.check.steps`: one function per step, and the runner of one host;
* :mod:`~sshcluster.check.probe` with ``probe.sh`` and ``R/probe.R``: the one remote
  script per host, and what its answer means;
* :mod:`~sshcluster.check.callback` with ``R/callback.R``: the primary's listener and the
  ``callback`` step;
* :mod:`~sshcluster.check.hints`: what to do about a failed step;
* :mod:`~sshcluster.check.report`: the results, as a table or JSON.

(The function :func:`check` takes the name of its sub-package in :mod:`sshcluster`, as
``push`` does.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sshcluster.lazy import exports, listing

if TYPE_CHECKING:
    from sshcluster.check.preflight import (
        DEFAULT_CONCURRENCY,
        DEFAULT_TIMEOUT,
        REMOTE_STEPS,
        ProgressCallback,
        check,
        check_async,
        verified_inventory,
    )
    from sshcluster.check.report import CheckReport, HostReport, StepResult

_NAMES = {
    "preflight": ("DEFAULT_CONCURRENCY", "DEFAULT_TIMEOUT", "REMOTE_STEPS", "ProgressCallback",
                  "check", "check_async", "verified_inventory"),
    "report": ("CheckReport", "HostReport", "StepResult"),
}
__getattr__ = exports(__name__, _NAMES)
__dir__ = listing(globals(), _NAMES)

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_TIMEOUT",
    "REMOTE_STEPS",
    "CheckReport",
    "HostReport",
    "ProgressCallback",
    "StepResult",
    "check",
    "check_async",
    "verified_inventory",
]
