"""``sshcluster status``: the status sub-package's command."""

from __future__ import annotations

import json

import click

from sshcluster.console import json_flag
from sshcluster.inventory import load_inventory
from sshcluster.status.scan import STATUS_TIMEOUT, status


@click.command("status")
@click.argument("inventory", type=click.Path(dir_okay=False))
@click.option("--kill-strays", is_flag=True,
              help="End the strays found on the hosts (TERM, then KILL a second later).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              default=STATUS_TIMEOUT, show_default=True,
              help="Seconds each host may take to answer.")
@click.option("--json", "as_json", is_flag=True, callback=json_flag,
              help="Print only a JSON report on stdout.")
def status_command(inventory: str, kill_strays: bool, timeout: float, as_json: bool) -> None:
    """Show what of sshcluster runs on each host of INVENTORY, and on this machine.

    On each host (all at once, one ssh session each): the launch sessions that are live
    (under a live sshd session) with their worker processes, and the strays: a launch
    script whose ssh session is gone, or a worker whose launch script is gone, as a
    crashed session could leave them; and the launch's containers (container: in the
    inventory), stray once no live session names them. On this machine: each cluster's supervisor, a
    stray once its R session is gone. --kill-strays ends the hosts' strays (and removes
    stray containers).

    Exit status: 0 nothing stray is left and every host answered; 1 otherwise; 2 a wrong
    inventory or command line.
    """
    report = status(load_inventory(inventory), kill_strays=kill_strays, timeout=timeout)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for host in (report.primary, *report.hosts):
            click.echo(host.summary())
            for p in host.strays:
                click.echo(f"  stray {p.pid}: {p.command[:160]}")
            for c in host.stray_containers:
                click.echo(f"  stray container {c.split(':', 1)[1]} ({c.split(':', 1)[0]})")
        click.secho(f"{report.strays} stray process{'es' * (report.strays != 1)}"
                    + ("" if report.ok else "; run with --kill-strays to end them"
                       if report.strays else ""),
                    fg="green" if report.ok else "red", bold=True)
    if not report.ok:
        raise click.exceptions.Exit(1)


__all__ = ["status_command"]
