"""The ``sshcluster`` command: a thin click layer over the Python API.

Each command parses its arguments, calls one library function, renders the result and
turns :class:`~sshcluster.errors.SshclusterError` into a message and an exit status:
0 success, 1 a host or a cloud request failed, 2 the inventory or the command line is
wrong. No traceback for a user's mistake.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from sshcluster import __version__, bootstrap
from sshcluster.errors import SshclusterError
from sshcluster.inventory import load_inventory


class _Group(click.Group):
    """A click group that turns library errors into a message and an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SshclusterError as e:
            click.secho(f"error: {e.message}", fg="red", err=True)
            if e.hint:
                click.echo(f"hint: {e.hint}", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sshcluster")
def cli() -> None:
    """Turn a list of machines into a working R cluster.

    \b
    Typical use:
      sshcluster check hosts.yaml            # is every host ready? (one verdict per host)
      sshcluster render hosts.yaml -o cluster.R
      Rscript -e 'source("cluster.R"); print(parallelCluster)'

    The inventory format is documented in hosts.example.yaml. Exit status: 0 success,
    1 a host or a cloud request failed, 2 the inventory or the command line is wrong.
    """


@cli.command()
@click.argument("inventory", type=click.Path(dir_okay=False, path_type=str))
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=str),
              help="Write the R file here (default: print it on stdout).")
def render(inventory: str, output: str | None) -> None:
    """Write the R bootstrap for INVENTORY.

    In an R session on the primary, source() the file to get `parallelCluster`,
    ready for parLapply, foreach/doParallel and future:

    \b
      sshcluster render hosts.yaml -o cluster.R
      R> source("cluster.R"); parSapply(parallelCluster, 1:8, sqrt)
      R> sshcluster_stop()

    The file is deterministic (same inventory, same bytes) and holds no secret.
    """
    inv = load_inventory(inventory)
    if output is None:
        click.echo(bootstrap.render(inv), nl=False)
        return
    bootstrap.write_bootstrap(inv, output)
    click.echo(
        f"wrote {output}: {len(inv.hosts)} hosts, {inv.workers} R workers "
        f"(in R: source({output!r}))",
        err=True,
    )


@cli.command()
@click.option("--hosts", "n_hosts", default=4, show_default=True, type=click.IntRange(1, 64),
              help="How many local SSH test hosts to build.")
@click.option("--ncore", default=2, show_default=True, type=click.IntRange(1, 16),
              help="R workers per host.")
@click.option("--tasks", default=1000, show_default=True, type=click.IntRange(1, 10**6),
              help="Monte Carlo runs to spread over the cluster.")
def demo(n_hosts: int, ncore: int, tasks: int) -> None:
    """Run an R computation on local SSH test hosts, end to end.

    Builds the hosts (network namespaces, one sshd each; needs root), writes an
    inventory and the R bootstrap, runs a Monte Carlo stock-price simulation with
    parLapply, prints a summary and the tasks per host, and tears the hosts down.
    Without root it runs the same computation on a local cluster and says so.
    """
    from sshcluster.demo import run_demo

    status = run_demo(hosts=n_hosts, ncore=ncore, tasks=tasks)
    if status != 0:
        raise click.exceptions.Exit(1)


@cli.group()
def testbed() -> None:
    """Local SSH test hosts on this Linux machine (root, network namespaces).

    \b
      sshcluster testbed up 4 --dir /tmp/tb    # hosts + /tmp/tb/hosts.yaml
      sshcluster render /tmp/tb/hosts.yaml -o /tmp/tb/cluster.R
      sshcluster testbed down --all

    Each host is a network namespace with its own address, hostname, host key and
    sshd; the primary is this machine on the testbed's bridge.
    """


@testbed.command("up")
@click.argument("count", type=click.IntRange(1, 250))
@click.option("--dir", "workdir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Directory for keys, known_hosts, logs and hosts.yaml.")
@click.option("--subnet", default=None, help="IPv4 /24 to use (default: a free 10.213.X.0/24).")
@click.option("--ncore", default=2, show_default=True, type=click.IntRange(1, 256),
              help="ncore written into hosts.yaml.")
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              help="R port written into hosts.yaml.")
def testbed_up(count: int, workdir: str, subnet: str | None, ncore: int,
               port: int | None) -> None:
    """Build COUNT SSH test hosts and write DIR/hosts.yaml for them.

    They stay up after this command ends; remove them with `sshcluster testbed down`.
    """
    from sshcluster.testbed import Testbed

    tb = Testbed(count, workdir=workdir, subnet=subnet).up()
    inventory = tb.write_inventory(f"{workdir}/hosts.yaml", ncore=ncore, port=port)
    for h in tb.hosts:
        click.echo(f"{h.hostname}\t{h.address}")
    click.echo(f"testbed {tb.name}: {count} hosts on {tb.subnet}, primary {tb.primary_address};"
               f" inventory {inventory}", err=True)
    click.echo(f"remove with: sshcluster testbed down --name {tb.name}", err=True)


@testbed.command("down")
@click.option("--name", default=None, help="The testbed to remove (as printed by `up`).")
@click.option("--all", "everything", is_flag=True,
              help="Remove every testbed whose owner has exited.")
def testbed_down(name: str | None, everything: bool) -> None:
    """Remove test hosts: their processes, namespaces, links and bridge."""
    from sshcluster.testbed import down_all

    if not name and not everything:
        raise click.UsageError("give --name NAME or --all")
    removed = down_all(name or "sc", include_live=bool(name))
    click.echo(f"removed {len(removed)} testbed{'s' if len(removed) != 1 else ''}"
               + (f": {', '.join(removed)}" if removed else ""), err=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``sshcluster`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="sshcluster")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
