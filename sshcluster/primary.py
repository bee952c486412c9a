"""Where the workers reach the primary, and whether R can connect there.

R's sockets are IPv4 only (see :func:`sshcluster.net.is_ipv6`). Behind the reverse
tunnel (the fast launch's default) that does not matter: ssh carries the connection, and
the workers connect to 127.0.0.1 on their own side. Without it (``tunnel: none``, the
classic launch) they connect to ``primary.host`` themselves, so an IPv6 address there is
refused (:func:`refuse_ipv6_primary`) by the render and by the check, naming its line.
Host addresses are ssh's alone: R never connects to one.
"""

from __future__ import annotations

from sshcluster.errors import InventoryError
from sshcluster.inventory import AUTO, Inventory
from sshcluster.net import is_ipv6

__all__ = ["refuse_ipv6_primary"]


def refuse_ipv6_primary(inventory: Inventory, asked: str | None = None) -> None:
    """Raise :class:`InventoryError` when the workers would have to connect to the
    primary's IPv6 address (``primary.host``) themselves, as they do
    without the reverse tunnel (``asked``: what chose that, when not the inventory): R's
    sockets are IPv4 only, so every worker would fail to connect."""
    primary = inventory.primary
    address = primary.host
    if address == AUTO or not is_ipv6(address):
        return
    why = asked or ("tunnel: none" if inventory.tunnel else "launch: classic")
    raise InventoryError(
        f"the primary's address {address} is IPv6, but with {why} R's workers connect to "
        "it themselves, and R's sockets are IPv4 only",
        path=inventory.path, line=primary.line, field="primary",
        hint="use the reverse tunnel (tunnel: reverse, the fast launch's default: through "
             "ssh, which speaks IPv6, the workers connect to 127.0.0.1 on their own side), "
             "or set primary.host to the primary's IPv4 address")
