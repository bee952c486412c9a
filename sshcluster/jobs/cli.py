"""``sshcluster run`` and ``sshcluster jobs``: the click layer over :mod:`sshcluster.jobs`."""

from __future__ import annotations

import json
import sys

import click

from sshcluster.check.preflight import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT
from sshcluster.inventory import load_inventory
from sshcluster.jobs.job import RunOptions, run
from sshcluster.jobs.leases import WAIT_TIMEOUT, list_leases


def _note(message: str) -> None:
    ctx = click.get_current_context(silent=True)
    if not (ctx and ctx.find_root().params.get("quiet")):
        click.echo(message, err=True)


@click.command("run", context_settings={"ignore_unknown_options": False})
@click.argument("inventory", type=click.Path(dir_okay=False, path_type=str))
@click.argument("script", type=click.Path(dir_okay=False, exists=True, path_type=str))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--allow-partial", is_flag=True,
              help="Leave failed hosts out (the record says which) instead of stopping.")
@click.option("--wait", is_flag=True,
              help="Wait in line for hosts leased to another job (showing the place) "
                   "instead of stopping.")
@click.option("--wait-timeout", type=click.FloatRange(min=0, min_open=True),
              default=WAIT_TIMEOUT, show_default=True,
              help="With --wait: seconds to wait in line at most.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULT_TIMEOUT, show_default=True, help="As for check.")
@click.option("--accept-new", is_flag=True, help="As for check.")
@click.option("--concurrency", type=click.IntRange(min=1), default=DEFAULT_CONCURRENCY,
              show_default=True, help="As for check.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the job's summary as JSON on stdout (the script's stdout then "
                   "goes to stderr, so stdout holds only the JSON).")
@click.pass_context
def run_command(ctx: click.Context, inventory: str, script: str, args: tuple[str, ...],
                allow_partial: bool, wait: bool, wait_timeout: float, timeout: float,
                accept_new: bool, concurrency: int, as_json: bool) -> None:
    """Run the R SCRIPT on the cluster of INVENTORY, with its hosts leased.

    \b
      sshcluster run hosts.yaml fit.R -- 1000 --model=glm
      Rscript-like: commandArgs(TRUE) is c("1000", "--model=glm")

    Checks the hosts (as 'render --check'), leases each one to this job (a host
    leased to another job stops the run, naming that job, or with --wait waits in
    line), then runs SCRIPT in a fresh Rscript here with `parallelCluster` ready; its
    output streams live. At the end, or on Ctrl-C, SIGTERM or SIGHUP: the cluster
    stops, the leases are released, and the exit status is the script's own (128+N
    after signal N). A record of the job (script, log, times, hosts, versions, status)
    is kept in ~/.local/state/sshcluster/runs/JOB ($SSHCLUSTER_STATE_DIR/runs).
    """
    options = RunOptions(args=args, allow_partial=allow_partial, wait=wait,
                         wait_timeout=wait_timeout, timeout=timeout,
                         concurrency=concurrency, accept_new=accept_new)
    result = run(inventory, script, options, on_event=_note,
                 stdout=sys.stderr.buffer if as_json else None)
    if as_json:
        click.echo(result.to_json())
    else:
        how = f"ended by {result.signal}" if result.signal else f"exit status {result.status}"
        _note(f"job {result.job}: {how} in {result.wall:.1f} s (record: {result.run_dir})")
    ctx.exit(result.status)


@click.command("jobs")
@click.argument("inventory", type=click.Path(dir_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the leases as JSON.")
@click.pass_context
def jobs_command(ctx: click.Context, inventory: str, as_json: bool) -> None:
    """List the leases on the hosts of INVENTORY: which job holds each host.

    A lease lasts as long as its job's ssh session on the host ('sshcluster run').
    Exit status 1 when a host could not be asked.
    """
    leases = list_leases(load_inventory(inventory))
    if as_json:
        click.echo(json.dumps([
            {"host": lease.host, "job": lease.holder.job if lease.holder else None,
             "who": lease.holder.who if lease.holder else None,
             "since": lease.holder.since if lease.holder else None,
             "script": lease.holder.script if lease.holder else None,
             "error": lease.error}
            for lease in leases], indent=2))
    else:
        for lease in leases:
            h = lease.holder
            click.echo(f"{lease.host}\t" + (
                f"{h.job}\t{h.who}\tsince {h.since}\t{h.script}" if h
                else f"error: {lease.error}" if lease.error else "free"))
    ctx.exit(1 if any(lease.error for lease in leases) else 0)
