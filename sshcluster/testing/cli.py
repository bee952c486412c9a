"""``sshcluster testbed up|down``: local SSH test hosts from the command line.

A thin click layer over :class:`~sshcluster.testing.Testbed` and
:mod:`~sshcluster.testing.registry`; the main command group
(:mod:`sshcluster.cli`) adds it with ``cli.add_command(testbed_group)`` and turns
library errors into a message and an exit status.
"""

from __future__ import annotations

import click

from sshcluster.errors import SshclusterError, TestbedError
from sshcluster.testing.registry import down_all, remove_testbed
from sshcluster.testing.subnets import parse_subnet
from sshcluster.testing.testbed import Testbed

__all__ = ["DEFAULT_DIR", "testbed_group"]

#: Where ``testbed up`` writes its keys, logs and hosts.yaml without ``--dir``.
DEFAULT_DIR = "sshcluster-testbed"


@click.group("testbed")
def testbed_group() -> None:
    """Local SSH test hosts on this Linux machine (root, network namespaces).

    \b
      sshcluster testbed up 4 --dir /tmp/tb    # hosts + /tmp/tb/hosts.yaml
      sshcluster testbed up 2                  # in ./sshcluster-testbed
      sshcluster render /tmp/tb/hosts.yaml -o /tmp/tb/cluster.R
      sshcluster testbed down --dir /tmp/tb    # or --name NAME, as printed by `up`

    Each host is a network namespace with its own address, hostname, host key and
    sshd; the primary is this machine on the testbed's bridge.
    """


def _subnet_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(parse_subnet(value))
    except SshclusterError as e:
        raise click.BadParameter(e.message) from e


@testbed_group.command("up")
@click.argument("count", type=click.IntRange(1, 250))
@click.option("--dir", "workdir", default=DEFAULT_DIR, show_default=True, metavar="DIR",
              type=click.Path(file_okay=False, path_type=str),
              help="Directory for keys, known_hosts, logs and hosts.yaml (refused while a "
                   "testbed that is up uses it).")
@click.option("--subnet", default=None, metavar="NETWORK", callback=_subnet_option,
              help="IPv4 network for the hosts, e.g. 10.213.5.0/24 (default: a free "
                   "10.213.X.0/24); must not overlap this machine's addresses or routes.")
@click.option("--ncore", default=2, show_default=True, type=click.IntRange(1, 256),
              help="ncore written into hosts.yaml.")
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              help="R port written into hosts.yaml.")
def testbed_up(count: int, workdir: str, subnet: str | None, ncore: int,
               port: int | None) -> None:
    """Build COUNT SSH test hosts and write DIR/hosts.yaml for them.

    They stay up after this command ends; remove them with
    `sshcluster testbed down --dir DIR` (or --name NAME).
    """
    try:
        tb = Testbed(count, workdir=workdir, subnet=subnet)
    except TestbedError as e:  # the constructor only checks its arguments
        raise click.UsageError(e.message) from e
    tb.up()
    inventory = tb.write_inventory(f"{workdir}/hosts.yaml", ncore=ncore, port=port)
    for h in tb.hosts:
        click.echo(f"{h.hostname}\t{h.address}")
    click.echo(f"testbed {tb.name}: {count} hosts on {tb.subnet}, primary {tb.primary_address};"
               f" inventory {inventory}", err=True)
    click.echo(f"remove with: sshcluster testbed down --name {tb.name}"
               f" (or --dir {tb.workdir})", err=True)


@testbed_group.command("down")
@click.option("--name", default=None, metavar="NAME",
              help="Remove the testbed with exactly this name (as printed by `up`).")
@click.option("--dir", "workdir", default=None, metavar="DIR",
              type=click.Path(file_okay=False, path_type=str),
              help="Remove the testbed whose directory is DIR (as given to `up --dir`); "
                   "DIR itself stays.")
@click.option("--all", "everything", is_flag=True,
              help="Remove every testbed on this machine whose owner process has exited: "
                   "that is every testbed made by `sshcluster testbed up`, anyone's, and "
                   "the leftovers of crashed runs. A testbed whose owner still runs (a "
                   "test run, the demo, a Python program) is never removed.")
def testbed_down(name: str | None, workdir: str | None, everything: bool) -> None:
    """Remove test hosts: their processes, namespaces, links and bridge.

    Give exactly one of --name, --dir and --all. --name and --dir remove one testbed,
    or fail (exit 1) if there is none by that name or directory.
    """
    given = [opt for opt, value in (("--name", name), ("--dir", workdir),
                                    ("--all", everything)) if value]
    if len(given) != 1:
        raise click.UsageError("give one of --name NAME, --dir DIR or --all"
                               + (f", not {' and '.join(given)}" if given else ""))
    removed = down_all() if everything else [remove_testbed(name, workdir=workdir)]
    click.echo(f"removed {len(removed)} testbed{'s' if len(removed) != 1 else ''}"
               + (f": {', '.join(removed)}" if removed else ""), err=True)
