"""``sshcluster image push``: the click layer over
:func:`~sshcluster.containers.push.push_image`."""

from __future__ import annotations

import json

import click
from rich.console import Console

from sshcluster.console import byte_bars, json_flag
from sshcluster.containers.push import ImagePush, push_image
from sshcluster.containers.spec import ENGINES
from sshcluster.inventory import load_inventory

__all__ = ["image_group"]


@click.group("image")
def image_group() -> None:
    """Container images on the hosts (see 'Workers in a container' in the README)."""


@image_group.command("push")
@click.argument("image")
@click.argument("inventory", type=click.Path(dir_okay=False))
@click.option("--engine", type=click.Choice(ENGINES), default="auto", show_default=True,
              help="The engine whose image store holds IMAGE on this machine.")
@click.option("--json", "as_json", is_flag=True, callback=json_flag,
              help="Print only the JSON result on stdout.")
@click.pass_context
def push_command(ctx: click.Context, image: str, inventory: str, engine: str,
                 as_json: bool) -> None:
    """Send the local IMAGE to every host of INVENTORY that lacks its digest.

    For hosts with no registry: saved here once (gzip), sent to all those hosts at
    once over ssh and loaded there; a host that has the digest gets nothing. Exit
    status: 0 every host has it, 1 some host failed, 2 a wrong inventory, command line,
    or no such image here.
    """
    inv = load_inventory(inventory)
    err = Console(stderr=True)
    with byte_bars(err, not as_json) as show:
        result = push_image(image, inv, engine=engine, progress=show,
                            note=None if as_json else lambda m: err.print(m))
    if as_json:
        click.echo(json.dumps(_document(result), indent=2))
    else:
        _print(result)
    ctx.exit(0 if result.ok else 1)


def _document(result: ImagePush) -> dict[str, object]:
    return {"image": result.image, "digest": f"sha256:{result.digest}",
            "archive_bytes": result.archive_bytes, "ok": result.ok,
            "hosts": [{"host": h.label, "outcome": h.outcome, "detail": h.detail,
                       "sent_bytes": h.sent_bytes, "seconds": round(h.seconds, 3)}
                      for h in result.hosts]}


def _print(result: ImagePush) -> None:
    width = max(4, *(len(h.label) for h in result.hosts))
    for h in result.hosts:
        word = {"sent": "sent", "had": "had it", "failed": "FAILED"}[h.outcome]
        extra = f" ({h.sent_bytes / 1e6:.1f} MB in {h.seconds:.1f} s)" if h.sent_bytes else ""
        click.echo(f"{h.label.ljust(width)}  {word}: {h.detail}{extra}")
    sent = sum(h.outcome == "sent" for h in result.hosts)
    had = sum(h.outcome == "had" for h in result.hosts)
    click.echo(f"{result.image} sha256:{result.digest[:12]}: sent to {sent}, already on "
               f"{had}, failed on {len(result.failed)} of {len(result.hosts)} hosts")
