"""``sshcluster status``: what of sshcluster runs on each host and on this machine.

On each host (one ssh session each, all hosts at once) the login user's processes are
listed (``ps``) and sorted: a *session* is a host's launch script under a live sshd
session, with its *workers* below it; anything else of ours (a launch script whose sshd
session is gone, an R worker whose script is gone: what a crashed session could leave)
is a *stray*. On this machine, each cluster's supervisor is listed with its R session,
and is a stray once that R session is gone. ``kill_strays`` ends the strays (TERM, then
KILL), and the report says what was ended.
"""

from sshcluster.status.scan import (
    HostStatus,
    Process,
    StatusReport,
    classify,
    status,
)

__all__ = ["HostStatus", "Process", "StatusReport", "classify", "status"]
