"""What every ``sshcluster`` command prints besides its result: errors with their hint,
and notes that ``--quiet`` leaves out (the root command's and its sub-groups' alike)."""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TransferSpeedColumn,
)

from sshcluster.check.report import SCHEMA_VERSION, CheckReport, print_report
from sshcluster.errors import CheckFailed, InventoryError, SshclusterError
from sshcluster.helpformat import use_help_formatter
from sshcluster.quoting import printable


class ErrorGroup(click.Group):
    """A click group that turns library errors into a message and an exit status.

    ``lazy`` names commands by where they live (``name: "module:attribute"``): a
    command's module is imported only when that command is asked for, so that
    ``sshcluster sync`` does not import what ``check`` or ``ec2`` need.
    """

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            use_help_formatter(command)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        asks_json = _asks_json(ctx)  # (click empties the group's words as it goes on)
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            # A command line click refused (a missing file, a bad value), with --json
            # asked for: a script reads stdout, so the refusal is JSON too; click then
            # prints the usage on stderr and exits 2, as always.
            if not ctx.meta.get(_USAGE_SHOWN) and (ctx.meta.get(JSON_META) or asks_json):
                click.echo(json.dumps(usage_document(e.format_message()), indent=2))
                ctx.meta[_USAGE_SHOWN] = True  # (once, not again in each enclosing group)
            raise
        except SshclusterError as e:
            if isinstance(e, CheckFailed):
                print_report(e.report, Console(stderr=True))
            if ctx.meta.get(JSON_META):  # (a script reads stdout: an error is JSON too)
                click.echo(json.dumps(error_document(e), indent=2))
            print_error(e)
            ctx.exit(e.exit_code)


def _asks_json(ctx: click.Context) -> bool:
    """Whether the command line of this group's command has --json among its options
    (before any ``--``: what follows is the user's script's)."""
    # (the subcommand's words: click 8.2 keeps the first in _protected_args, and warns
    # that protected_args will go)
    first = getattr(ctx, "_protected_args", None)
    words = [*(first if first is not None else ctx.protected_args), *ctx.args]
    return "--json" in (words[:words.index("--")] if "--" in words else words)


_USAGE_SHOWN = "sshcluster.usage_shown"

#: Set in the context's meta (shared by a command's context and its groups') when the
#: command was given --json.
JSON_META = "sshcluster.json"


def error_document(e: SshclusterError) -> dict[str, Any]:
    """What ``check --json`` prints instead of a report when there is none to print (a
    wrong inventory): ``ok`` false and the ``error`` with its file, line and field."""
    error: dict[str, Any] = {
        "kind": "inventory" if isinstance(e, InventoryError) else "error",
        "message": e.message, "hint": e.hint,
        "path": None, "line": None, "field": None,
    }
    if isinstance(e, InventoryError):
        error.update(path=e.path, line=e.line, field=e.field, problem=e.problem)
    # (the host and step a host's error names; the AWS code of an EC2 one; a failed
    # check's whole report, every host's outcome, as check --json prints it)
    for name in ("host", "check", "code"):
        if isinstance(getattr(e, name, None), str):
            error[name] = getattr(e, name)
    if isinstance(getattr(e, "report", None), CheckReport):
        error["report"] = e.report.to_dict()  # type: ignore[attr-defined]
    error["exit_code"] = e.exit_code
    return {"schema": SCHEMA_VERSION, "ok": False, "error": error}


def usage_document(message: str) -> dict[str, Any]:
    """The error document of a command line click refused (exit status 2)."""
    return {"schema": SCHEMA_VERSION, "ok": False, "error": {
        "kind": "usage", "message": message, "hint": None, "path": None, "line": None,
        "field": None, "exit_code": 2}}


def json_flag(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """The callback of every ``--json`` option: an error the command raises is then also
    printed on stdout, as ``check --json`` prints it (``ok`` false, ``error``)."""
    if value:
        ctx.meta[JSON_META] = True
    return value


def print_error(e: SshclusterError, where: str | None = None) -> None:
    """``error: [WHERE: ]MESSAGE`` and its hint, on stderr."""
    # (a message may hold what a host printed: shown, never acted on by the terminal)
    click.secho(printable(f"error: {where + ': ' if where else ''}{e.message}"), fg="red",
                err=True)
    if e.hint:
        click.echo(printable(f"hint: {e.hint}"), err=True)


def quiet() -> bool:
    """Whether ``--quiet`` was given (to the ``sshcluster`` command itself)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("quiet"))


def note(message: str) -> None:
    """An informational line on stderr (what was written, what was recorded), which
    ``--quiet`` leaves out; errors and warnings are never left out."""
    if not quiet():
        click.echo(message, err=True)


__all__ = ["JSON_META", "ErrorGroup", "error_document", "json_flag", "note", "print_error",
           "quiet", "usage_document"]


#: Called with a host's label, the bytes sent to it so far and the total.
ByteProgress = Callable[[str, int, int], None]


@contextlib.contextmanager
def byte_bars(console: Console, show: bool) -> Iterator[ByteProgress | None]:
    """One bar of bytes per host on ``console`` while the block runs (push, image push),
    when ``show`` and the console is a terminal; else ``None``."""
    if not (show and console.is_terminal):
        yield None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=console, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def update(host: str, sent: int, total: int) -> None:
            if host not in tasks:
                tasks[host] = bar.add_task(host, total=total)
            bar.update(tasks[host], completed=sent)

        yield update
