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
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from sshcluster import __version__
from sshcluster.errors import SshclusterError
from sshcluster.inventory import load_inventory
from sshcluster.preflight import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT
from sshcluster.report import print_report


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


@cli.command("check")
@click.argument("inventory", type=click.Path(dir_okay=False))
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULT_TIMEOUT, show_default=True,
              help="Seconds the whole check may take; a host not done by then fails.")
@click.option("--concurrency", type=click.IntRange(min=1), default=DEFAULT_CONCURRENCY,
              show_default=True, help="Hosts checked at the same time.")
@click.option("--accept-new", is_flag=True,
              help="Record the host key of a host known_hosts does not list yet (like "
                   "OpenSSH's StrictHostKeyChecking=accept-new). A changed key still fails.")
@click.option("--json", "as_json", is_flag=True,
              help="Print only the JSON report on stdout.")
@click.option("-F", "--ssh-config", "ssh_config", multiple=True,
              type=click.Path(dir_okay=False),
              help="OpenSSH client config file (default: ~/.ssh/config). Repeatable.")
@click.pass_context
def check_command(ctx: click.Context, inventory: str, timeout: float, concurrency: int,
                  accept_new: bool, as_json: bool, ssh_config: tuple[str, ...]) -> None:
    """Check that every host of INVENTORY is ready to be an R worker.

    Per host, in order: resolve, connect, hostkey, auth, rscript, packages, cores,
    load, reverse_ssh, callback. All hosts at once; the run ends within --timeout.
    Exit status: 0 every host ready, 1 some host failed, 2 a wrong inventory or
    command line.
    """
    from sshcluster.preflight import check

    inv = load_inventory(inventory)
    console = Console(stderr=True)
    kwargs: dict[str, Any] = {"timeout": timeout, "concurrency": concurrency,
                              "accept_new": accept_new,
                              "ssh_config": list(ssh_config) if ssh_config else None}
    if console.is_terminal and not as_json:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                      transient=True) as bar:
            task = bar.add_task("checking hosts", total=len(inv.hosts))
            report = check(inv, progress=lambda _: bar.advance(task), **kwargs)
    else:
        report = check(inv, **kwargs)
    if as_json:
        click.echo(report.to_json())
    else:
        print_report(report, Console())
    ctx.exit(0 if report.ok else 1)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``sshcluster`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="sshcluster")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
