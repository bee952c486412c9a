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
from sshcluster.inventory import LAUNCHES, TUNNELS, Register, load_inventory


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
@click.option("--launch", type=click.Choice(LAUNCHES),
              help="fast: one ssh per host starts all its workers at once, fails fast "
                   "(default); classic: parallel::makeCluster, one worker at a time. "
                   "Overrides the inventory's 'launch'.")
@click.option("--tunnel", type=click.Choice(TUNNELS),
              help="reverse: workers reach the primary through an ssh reverse tunnel "
                   "(for a primary behind NAT or a firewall). Overrides 'tunnel'.")
@click.option("--future", "use_future", is_flag=True,
              help="Also run future::plan(future::cluster, workers = parallelCluster).")
@click.option("--doparallel", "use_doparallel", is_flag=True,
              help="Also run doParallel::registerDoParallel(parallelCluster).")
def render(inventory: str, output: str | None, launch: str | None, tunnel: str | None,
           use_future: bool, use_doparallel: bool) -> None:
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
    register: list[Register] = []
    if use_future:
        register.append("future")
    if use_doparallel:
        register.append("doparallel")
    options = bootstrap.RenderOptions(
        launch="classic" if launch == "classic" else "fast" if launch else None,
        tunnel="reverse" if tunnel == "reverse" else "none" if tunnel else None,
        register=tuple(register),
    )
    if output is None:
        click.echo(bootstrap.render(inv, options), nl=False)
        return
    bootstrap.write_bootstrap(inv, output, options)
    click.echo(
        f"wrote {output}: {len(inv.hosts)} hosts, {inv.workers} R workers "
        f"(in R: source({output!r}))",
        err=True,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``sshcluster`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="sshcluster")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
