"""Workers in a container image: the same R, packages and system libraries on every host.

The side system of ``container:`` in the inventory: :mod:`~sshcluster.containers.spec`
(the inventory's ``container:``, read at the edge), ``container.sh`` (what each host's
launch script runs to start, enter and remove the host's container),
:mod:`~sshcluster.containers.check` (the check's ``container`` step and the digest
comparison across hosts) and :mod:`~sshcluster.containers.push` (``sshcluster image
push``). See docs/containers.md.
"""

from sshcluster.containers.spec import (
    CONTAINER_KEYS,
    ENGINES,
    PULLS,
    Container,
    Engine,
    Pull,
    container_from,
    read_container,
)

__all__ = [
    "CONTAINER_KEYS",
    "ENGINES",
    "PULLS",
    "Container",
    "Engine",
    "Pull",
    "container_from",
    "read_container",
]
