"""What the rendered file's fast launch needs for the hosts' containers.

The launch itself is the project's own (``R/launch/``, ``R/remote.sh``): when any host
has a container, the host script gets the functions of ``container.sh`` pasted in front
of it, and the launch's config a per-machine list of container settings, which
``R/launch/session.R`` hands each host's script as ``SSHCLUSTER_CONTAINER*`` variables. An
inventory without ``container:`` renders exactly as before.
"""

from __future__ import annotations

from importlib import resources

from sshcluster.errors import RenderError
from sshcluster.inventory import Inventory
from sshcluster.quoting import r_long_string, r_string

__all__ = ["CONTAINER_SCRIPT", "container_config", "container_script", "refuse_classic"]

#: The host-side functions (start, exec, remove).
CONTAINER_SCRIPT = resources.files("sshcluster.containers").joinpath(
    "container.sh").read_text(encoding="utf-8")


def container_script(inventory: Inventory) -> str:
    """The text to paste before the host script: the container functions, or nothing."""
    return CONTAINER_SCRIPT if any(h.container for h in inventory.hosts) else ""


def container_config(inventory: Inventory, remote_sh: str) -> list[tuple[str, str]]:
    """The launch config's ``remote_script`` entry (``remote_sh``, the host script, behind
    the container functions when a host has a container) and, then only, its
    ``containers`` entry (one R list or NULL per machine)."""
    script = [("remote_script", r_long_string(container_script(inventory) + remote_sh))]
    if not any(h.container for h in inventory.hosts):
        return script
    items = []
    for h in inventory.hosts:
        c = h.container
        items.append("NULL" if c is None else (
            f"list(engine = {r_long_string(c.engine)}, image = {r_long_string(c.image)},\n"
            f"  pull = {r_string(c.pull)}, options = {r_long_string(c.options_line)})"))
    return [("containers", "list(\n" + ",\n".join(items) + ")"), *script]


def refuse_classic(inventory: Inventory, launch: str) -> None:
    """Raise :class:`RenderError` for a container with the classic launch (R's own
    ``makeCluster`` starts each worker with a plain ``Rscript``)."""
    if launch == "classic" and any(h.container for h in inventory.hosts):
        where = f"{inventory.path}: " if inventory.path else ""
        raise RenderError(f"{where}container: needs the fast launch",
                          hint="remove 'launch: classic' (the fast launch is the default)")
