"""``sshcluster push``: the same files on every host, sending only what changed.

    import sshcluster

    inv = sshcluster.load_inventory("hosts.yaml")    # workdir: /srv/work
    result = sshcluster.push(inv, ["data"])           # /srv/work/data on every host
    for h in result.hosts:
        print(h.host, "ok" if h.ok else "FAILED", h.detail)

:mod:`~sshcluster.push.manifest` decides what each host lacks,
:mod:`~sshcluster.push.stream` makes the one archive and feeds it to the hosts,
:mod:`~sshcluster.push.transfer` runs the sessions (``remote.sh`` on the hosts), and
:mod:`~sshcluster.push.api` puts them together, directly or along a chain of hosts.
"""

from __future__ import annotations

from sshcluster.errors import PushError
from sshcluster.push.api import push
from sshcluster.push.manifest import Entry, Manifest, local_manifest
from sshcluster.push.result import HostPush, PushResult
from sshcluster.push.transfer import Progress

__all__ = [
    "Entry",
    "HostPush",
    "Manifest",
    "Progress",
    "PushError",
    "PushResult",
    "local_manifest",
    "push",
]
