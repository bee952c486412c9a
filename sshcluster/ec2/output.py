"""What ``up`` writes for the user: the inventory (and its known_hosts file), and the
commands that take it to R.

The inventory works from where the primary is:

* the primary outside AWS (``primary: auto``, this machine, usually behind NAT; or an
  address): ``tunnel: reverse``, so the workers reach it through ssh reverse tunnels
  instead of needing this machine to be reachable from AWS;
* ``primary: first`` (R runs on the first instance): the hosts are the instances'
  *private* addresses, which the security group's member-to-member rule allows, and the
  known_hosts file names them too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sshcluster.dump import dump_inventory
from sshcluster.ec2.hostkeys import HostKey, write_known_hosts
from sshcluster.ec2.instances import Endpoint, Instance, format_time
from sshcluster.errors import OutputExistsError
from sshcluster.files import atomic_write
from sshcluster.inventory import Host, Inventory, Primary
from sshcluster.quoting import r_string, shell_join

if TYPE_CHECKING:
    from sshcluster.ec2.spec import EC2Spec


def header(spec: EC2Spec) -> str:
    """The first line of the inventory ``up`` writes for ``spec``'s cluster."""
    return f"Written by 'sshcluster ec2 up' for cluster {spec.name} in {spec.region} "


def refuse_foreign_output(output: Path, spec: EC2Spec) -> None:
    """Raise OutputExistsError if ``output`` exists and is not an inventory ``up`` wrote
    for this cluster (a hand-written inventory, another cluster's)."""
    try:
        with output.open(encoding="utf-8", errors="replace") as f:
            first = f.readline(4096)
    except FileNotFoundError:
        return
    except OSError:
        first = ""
    if first.startswith(f"# {header(spec)}"):
        return  # a retried or repeated up of the same cluster: its own file
    raise OutputExistsError(
        f"{output} exists and is not an inventory 'sshcluster ec2 up' wrote for cluster "
        f"{spec.name} in {spec.region}; not overwritten, nothing started",
        path=str(output), hint=f"write the inventory elsewhere (-o other.yaml), or pass "
                               f"--force to replace {output}")


def next_steps(inventory: str | os.PathLike[str], *,
               primary_instance: str | None = None) -> tuple[str, ...]:
    """The shell commands from an inventory ``up`` wrote to R on the cluster.

    ``render --check`` checks every instance (R, the packages, the way back to this
    machine through the reverse tunnel) before it writes the R file. ``primary_instance``
    is the first instance's address when it is the primary (``primary: first``): the
    check cannot run from here then (its callback listens on this machine), the
    inventory is complete as it is, and R runs there.
    """
    inventory = Path(inventory)
    cluster_r = str(inventory.parent / "cluster.R")
    if primary_instance:
        return (shell_join(["sshcluster", "render", str(inventory), "-o", cluster_r]),
                f"# then source({r_string(cluster_r)}) in R on the primary, the first "
                f"instance ({primary_instance}), with the key and known_hosts files at the "
                "same paths as here")
    return (shell_join(["sshcluster", "render", str(inventory), "--check", "-o", cluster_r]),
            shell_join(["Rscript", "-e",
                        f"source({r_string(cluster_r)}); print(parallelCluster)"]))


def write_output(spec: EC2Spec, *, run_id: str, expires: datetime, output: Path,
                 known_hosts: Path, key_file: Path | None, ncore: int,
                 instances: Sequence[Instance], endpoints: dict[str, Endpoint],
                 keys: dict[str, tuple[HostKey, ...]]) -> tuple[Inventory, tuple[str, ...]]:
    """Write the known_hosts file and the inventory; return the inventory and the next
    steps its header names."""
    first = instances[0].private_ip if spec.primary == "first" else None
    # The addresses the inventory lists: where this machine reaches the instances, or,
    # with the first instance as the primary, where it reaches the others.
    names = {i.id: (i.private_ip or endpoints[i.id].host, 22) if first
             else (endpoints[i.id].host, endpoints[i.id].port) for i in instances}
    entries = [(endpoints[i].host, endpoints[i].port, k) for i, ks in keys.items() for k in ks]
    if first:
        entries += [(names[i][0], 22, k) for i, ks in keys.items() for k in ks
                    if names[i] != (endpoints[i].host, endpoints[i].port)]
    write_known_hosts(known_hosts, entries)

    # primary.user is who the workers ssh to on the primary (the reverse_ssh check). Only
    # when the primary is one of the instances is that the image's login user; 'auto' or
    # an address is a machine outside the cluster (usually this one), whose user the
    # check takes to be the one running it when the inventory names none.
    if first:
        primary, primary_user = first, spec.user
    else:
        primary, primary_user = "auto" if spec.primary == "first" else spec.primary, None
    inventory = Inventory(
        primary=Primary(host=primary, user=primary_user),
        hosts=tuple(Host(host=names[i.id][0], user=spec.user, ncore=ncore,
                         ssh_port=names[i.id][1] if names[i.id][1] != 22 else None,
                         identity_file=str(key_file) if key_file else spec.identity_file)
                    for i in instances),
        port=spec.port, known_hosts=str(known_hosts), r_packages=spec.r_packages,
        tunnel=None if first else "reverse", path=str(output))
    steps = next_steps(output, primary_instance=first)
    text = (f"{header(spec)}(run {run_id}).\nIts instances power off at "
            f"{format_time(expires)}; "
            f"'sshcluster ec2 down {spec.name}' ends them now. Next:\n"
            + "\n".join(f"  {step}" for step in steps))
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(output, dump_inventory(inventory, header=text))
    return inventory, steps


__all__ = ["header", "next_steps", "refuse_foreign_output", "write_output"]
