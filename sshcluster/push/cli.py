"""``sshcluster push``: the push sub-package's command."""

from __future__ import annotations

import click
from rich.console import Console

from sshcluster.console import byte_bars, json_flag
from sshcluster.inventory import FANOUTS, Fanout, load_inventory
from sshcluster.push.api import push
from sshcluster.push.report import print_push


@click.command("push")
@click.argument("inventory", type=click.Path(dir_okay=False))
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=False))
@click.option("--to", "dest", metavar="DEST",
              help="Directory on every host (default: the inventory's workdir); each "
                   "SOURCE lands at DEST/its name.")
@click.option("--fanout", type=click.Choice(FANOUTS),
              help="direct: the primary copies to every host at once; chain / tree: the "
                   "hosts pass the stream on to each other (they must reach each other "
                   "by ssh). Overrides the inventory's 'fanout'.")
@click.option("--json", "as_json", is_flag=True, callback=json_flag,
              help="Print only the JSON result on stdout.")
@click.pass_context
def push_command(ctx: click.Context, inventory: str, sources: tuple[str, ...],
                 dest: str | None, fanout: str | None, as_json: bool) -> None:
    """Copy SOURCES (files or directories) to every host of INVENTORY.

    Only what changed is sent (size and modification time, then a content hash);
    each file is verified on arrival and renamed into place, modes kept; symlinks that
    lead outside a source are not followed. One verdict per host. Exit status: 0 every
    host has the files, 1 some host failed, 2 a wrong inventory or command line.
    """
    inv = load_inventory(inventory)
    fan: Fanout | None = "chain" if fanout == "chain" else "tree" if fanout == "tree" \
        else "direct" if fanout else None
    with byte_bars(Console(stderr=True), not as_json) as show:
        result = push(inv, sources, dest, fanout=fan, progress=show)
    if as_json:
        click.echo(result.to_json())
    else:
        print_push(result, Console())
    ctx.exit(0 if result.ok else 1)


__all__ = ["push_command"]
