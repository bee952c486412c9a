"""An inventory written back as YAML, which reads back as the same inventory.

:func:`~sshcluster.inventory.parse_inventory` reads what :func:`dump_inventory` writes
as the inventory it was given (``ec2 up`` writes its hosts so, and the tests
round-trip)."""

from __future__ import annotations

from typing import Any

import yaml

from sshcluster.inventory import AUTO, DEFAULT_LIBRARY, SETUP_TIMEOUT, Inventory


def inventory_to_dict(inv: Inventory) -> dict[str, Any]:
    """Return a plain dict that :func:`parse_inventory` reads back as ``inv`` (fields that
    are at their default are left out)."""
    primary: dict[str, Any] = {"host": inv.primary.host}
    if inv.primary.user:
        primary["user"] = inv.primary.user
    if inv.primary.ssh_port:
        primary["ssh_port"] = inv.primary.ssh_port
    out: dict[str, Any] = {"primary": primary}
    if inv.port is not None:
        out["port"] = inv.port
    if inv.known_hosts:
        out["known_hosts"] = inv.known_hosts
    if inv.r_packages:
        want = {c.package: f"{c.op} {c.version}" for c in inv.packages.constraints}
        out["r_packages"] = [{p: want[p]} if p in want else p for p in inv.r_packages]
    if inv.packages.mode != "match":
        out["packages"] = inv.packages.mode
    if inv.packages.lockfile:
        out["lockfile"] = inv.packages.lockfile
    if inv.packages.repos:
        out["repos"] = list(inv.packages.repos)
    if inv.library != DEFAULT_LIBRARY:
        out["library"] = inv.library
    if inv.launch != "fast":
        out["launch"] = inv.launch
    if inv.tunnel is not None:
        out["tunnel"] = inv.tunnel
    if not inv.fork:
        out["fork"] = False
    if inv.register:
        out["register"] = list(inv.register)
    if inv.setup_timeout != SETUP_TIMEOUT:
        out["setup_timeout"] = inv.setup_timeout
    if inv.locale is not None:
        out["locale"] = inv.locale
    if inv.reverse_ssh != "optional":
        out["reverse_ssh"] = inv.reverse_ssh
    if inv.worker_output != "none":
        out["worker_output"] = inv.worker_output
    for name in ("workdir", "shared_dir"):
        if getattr(inv, name) is not None:
            out[name] = getattr(inv, name)
    if inv.fanout != "direct":
        out["fanout"] = inv.fanout
    if inv.lease:
        out["lease"] = True
    hosts = []
    for h in inv.hosts:
        item: dict[str, Any] = {"host": h.host}
        for name in ("user", "ssh_port", "identity_file", "rscript", "library"):
            if getattr(h, name) is not None:
                item[name] = getattr(h, name)
        if h.container is not None:  # (containers: each host's in full)
            c = h.container
            item["container"] = {"image": c.image, "engine": c.engine,
                                 "options": list(c.options), "pull": c.pull}
        item["ncore"] = AUTO if h.ncore is None else h.ncore
        hosts.append(item)
    out["hosts"] = hosts
    return out


def dump_inventory(inv: Inventory, *, header: str | None = None) -> str:
    """Return inventory YAML for ``inv``, optionally behind a ``# header`` comment."""
    text = yaml.safe_dump(inventory_to_dict(inv), sort_keys=False, default_flow_style=False)
    if header:
        comment = "".join(f"# {line}\n" for line in header.splitlines())
        text = comment + text
    return text


__all__ = ["dump_inventory", "inventory_to_dict"]
