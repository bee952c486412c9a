"""``sshcluster sync``: the packages sub-package's command."""

from __future__ import annotations

import json

import click

from sshcluster.console import json_flag
from sshcluster.inventory import load_inventory
from sshcluster.packages.sync import SYNC_TIMEOUT, sync
from sshcluster.quoting import printable


@click.command("sync")
@click.argument("inventory", type=click.Path(dir_okay=False))
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              default=SYNC_TIMEOUT, show_default=True,
              help="Seconds one host's sync may take; a host not done by then fails.")
@click.option("--json", "as_json", is_flag=True, callback=json_flag,
              help="Print only a JSON report on stdout.")
def sync_command(inventory: str, timeout: float, as_json: bool) -> None:
    """Give every host of INVENTORY the primary's R packages, all hosts at once.

    The packages are the r_packages and everything they need, as the primary has them
    (or the inventory's lockfile:). A host with the primary's R minor version, platform
    and OS gets the primary's installed builds over ssh; any other installs the pinned
    versions from repos:. They go into a library of sshcluster's own on each host,
    named by its content and put in place whole; the rendered file puts it first on
    the workers' library path. Exit status: 0 every host has them, 1 some host failed,
    2 a wrong inventory or command line.
    """
    inv = load_inventory(inventory)

    def progress(label: str, what: str) -> None:
        if not as_json:
            click.echo(printable(f"{label}: {what}", newlines=False), err=True)

    report = sync(inv, progress=progress, timeout=timeout)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for line in report.verdicts():
            click.echo(line)
        click.secho(report.summary(), fg="green" if report.ok else "red", bold=True)
    if not report.ok:
        raise click.exceptions.Exit(1)


__all__ = ["sync_command"]
