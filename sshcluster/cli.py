"""The ``sshcluster`` command: a thin click layer over the Python API.

Each command parses its arguments, calls one library function, renders the result and
turns :class:`~sshcluster.errors.SshclusterError` into a message and an exit status:
0 success, 1 a host or a cloud request failed, 2 the inventory or the command line is
wrong. No traceback for a user's mistake.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from sshcluster import bootstrap
from sshcluster.check.report import CheckReport, HostReport, print_report
from sshcluster.console import ErrorGroup, error_document, json_flag, note, quiet
from sshcluster.errors import CheckFailed, SshclusterError
from sshcluster.helpformat import use_help_formatter
from sshcluster.inventory import (
    LAUNCHES,
    TUNNELS,
    Inventory,
    Register,
    load_inventory,
)
from sshcluster.protocol import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT
from sshcluster.version import __version__

#: The sub-systems' commands, imported when asked for (see ErrorGroup).
SUBCOMMANDS = {
    "testbed": "sshcluster.testing.cli:testbed_group",
    "ec2": "sshcluster.ec2.cli:ec2_group",
    "push": "sshcluster.push.cli:push_command",
    "sync": "sshcluster.packages.cli:sync_command",
    "run": "sshcluster.jobs.cli:run_command",
    "jobs": "sshcluster.jobs.cli:jobs_command",
    "logs": "sshcluster.jobs.cli:logs_command",
    "stop": "sshcluster.jobs.cli:stop_command",
    "fetch": "sshcluster.jobs.cli:fetch_command",
    "status": "sshcluster.status.cli:status_command",
    "image": "sshcluster.containers.cli:image_group",  # (sshcluster/containers)
}


@click.group(cls=ErrorGroup, lazy=SUBCOMMANDS,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sshcluster")
@click.option("-q", "--quiet", is_flag=True,
              help="Print only results, warnings and errors: no progress, no notes on what "
                   "was written; check prints what failed and the summary, not the table.")
@click.pass_context
def cli(ctx: click.Context, quiet: bool) -> None:
    """Turn a list of machines into a working R cluster.

    \b
    Typical use:
      sshcluster check hosts.yaml            # is every host ready? (one verdict per host)
      sshcluster render hosts.yaml -o cluster.R
      Rscript -e 'source("cluster.R"); print(parallelCluster)'

    'sshcluster example' prints an inventory with every field documented;
    'sshcluster init' writes one for your hosts. Exit status: 0 success,
    1 a host or a cloud request failed, 2 the inventory or the command line is wrong.
    NO_COLOR (set, not empty) turns colours off. Shell completion (bash):
    eval "$(_SSHCLUSTER_COMPLETE=bash_source sshcluster)"
    """
    if os.environ.get("NO_COLOR"):  # https://no-color.org; rich reads it itself
        ctx.color = False


def _run_check(inv: Inventory, *, timeout: float, concurrency: int, accept_new: bool,
               ssh_config: tuple[str, ...], show_progress: bool,
               tunnel: bool | None = None) -> CheckReport:
    """Run the preflight check, with a progress bar on stderr when it is a terminal; say
    how many host keys --accept-new recorded, and where."""
    from sshcluster.check.preflight import check  # (asyncssh: only for the commands that check)

    console = Console(stderr=True)
    kwargs: dict[str, Any] = {"timeout": timeout, "concurrency": concurrency,
                              "accept_new": accept_new, "tunnel": tunnel,
                              "ssh_config": list(ssh_config) if ssh_config else None}
    if console.is_terminal and show_progress and not quiet():
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                      transient=True) as bar:
            pending = [h.label for h in inv.hosts]
            task = bar.add_task(pending_hosts(pending), total=len(inv.hosts))

            def done(host: HostReport) -> None:
                with contextlib.suppress(ValueError):
                    pending.remove(host.label)
                bar.update(task, advance=1, description=pending_hosts(pending))

            report = check(inv, progress=done, **kwargs)
    else:
        report = check(inv, **kwargs)
    if accept_new:
        recorded = report.recorded_keys()
        for path, n in recorded.items():
            note(f"accept-new: recorded {n} new host key{'s' if n != 1 else ''} in {path}")
        if not recorded:
            note("accept-new: recorded no host key (none was new)")
    return report


def pending_hosts(pending: list[str], shown: int = 3) -> str:
    """The progress line's words: which hosts the check still waits for."""
    if not pending:
        return "checking hosts"
    more = f" and {len(pending) - shown} more" if len(pending) > shown else ""
    # (escaped: rich would take a label such as [fe80::1]:2222 for markup)
    return escape(f"checking hosts; waiting for {', '.join(pending[:shown])}{more}")


def _config_files(ctx: click.Context, param: click.Parameter,
                  files: tuple[str, ...]) -> tuple[str, ...]:
    """``-F``: existing files, or ``none`` alone, as ssh takes them."""
    for f in files:
        if f == "none" and len(files) > 1:
            raise click.BadParameter("'none' means no config file, so it comes alone")
        if f != "none" and not os.path.isfile(f):
            raise click.BadParameter(f"file {f!r} does not exist")
    return files


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
@click.option("--json", "as_json", is_flag=True, callback=json_flag,
              help="Print only the JSON report on stdout (its JSON Schema: "
                   "sshcluster/schema/check.schema.json); a wrong inventory is a JSON "
                   "error document too (exit 2).")
@click.option("-F", "--ssh-config", "ssh_config", multiple=True, callback=_config_files,
              help="Use this OpenSSH client config file instead of ssh's own (~/.ssh/config "
                   "and /etc/ssh/ssh_config), as 'ssh -F' does ('none': no file at all); "
                   "repeatable (read in order).")
@click.pass_context
def check_command(ctx: click.Context, inventory: str, timeout: float, concurrency: int,
                  accept_new: bool, as_json: bool, ssh_config: tuple[str, ...]) -> None:
    """Check that every host of INVENTORY is ready to be an R worker.

    Per host, in order: resolve, connect, hostkey, auth, rscript, packages, cores,
    load, reverse_ssh, callback, and with shared_dir: / fanout: in the inventory,
    shared_dir and fanout. All hosts at once; the run ends within --timeout.
    Exit status: 0 every host ready, 1 some host failed, 2 a wrong inventory or
    command line.
    """
    try:
        inv = load_inventory(inventory)
        report = _run_check(inv, timeout=timeout, concurrency=concurrency,
                            accept_new=accept_new, ssh_config=ssh_config,
                            show_progress=not as_json)
    except SshclusterError as e:
        if not as_json:
            raise
        click.echo(json.dumps(error_document(e), indent=2))  # scripts never parse text
        ctx.exit(e.exit_code)
    if as_json:
        click.echo(report.to_json())
    else:
        print_report(report, Console(), table=not quiet())
    ctx.exit(0 if report.ok else 1)
@cli.command()
@click.argument("inventory", type=click.Path(dir_okay=False, path_type=str))
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=str),
              help="Write the R file here (default, or '-': print it on stdout).")
@click.option("--launch", type=click.Choice(LAUNCHES),
              help="fast: one ssh per host starts all its workers at once, fails fast "
                   "(default); classic: parallel::makeCluster, one worker at a time. "
                   "Overrides the inventory's 'launch'.")
@click.option("--tunnel", type=click.Choice(TUNNELS),
              help="reverse (the fast launch's default): workers reach the primary "
                   "through ssh (authenticated and encrypted; works behind NAT); none: "
                   "they connect to primary.host directly (cleartext, a little faster per "
                   "call; the classic launch's only way). Overrides 'tunnel'.")
@click.option("--fork/--no-fork", default=None,
              help="Fast launch: start one R per host and fork its workers from it "
                   "(default; one R start-up per host), or start every worker as a fresh "
                   "Rscript. Overrides the inventory's 'fork'.")
@click.option("--worker-output", metavar="none|console|DIR",
              help="Fast launch: where the workers' output goes: none (default), console "
                   "(the primary's, each line after its host) or a file per host in the "
                   "absolute directory DIR on the hosts. Overrides 'worker_output'.")
@click.option("--future", "use_future", is_flag=True,
              help="Also run future::plan(future::cluster, workers = parallelCluster).")
@click.option("--doparallel", "use_doparallel", is_flag=True,
              help="Also run doParallel::registerDoParallel(parallelCluster).")
@click.option("--check", "run_check", is_flag=True,
              help="Run `sshcluster check` first and render what it verified: ncore: auto "
                   "and primary: auto filled in, a host's own rscript where paths differ. "
                   "A failed host stops the render (exit 1) with the report.")
@click.option("--allow-partial", is_flag=True,
              help="With --check: leave failed hosts out (the file's header says which) "
                   "instead of stopping.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULT_TIMEOUT, show_default=True, help="With --check: as for check.")
@click.option("--accept-new", is_flag=True, help="With --check: as for check.")
@click.option("--concurrency", type=click.IntRange(min=1), default=DEFAULT_CONCURRENCY,
              show_default=True, help="With --check: as for check.")
def render(inventory: str, output: str | None, launch: str | None, tunnel: str | None,
           fork: bool | None, worker_output: str | None, use_future: bool,
           use_doparallel: bool, run_check: bool, allow_partial: bool, timeout: float,
           accept_new: bool, concurrency: int) -> None:
    """Write the R bootstrap for INVENTORY.

    In an R session on the primary, source() the file to get `parallelCluster`,
    ready for parLapply, foreach/doParallel and future:

    \b
      sshcluster render hosts.yaml -o cluster.R
      R> source("cluster.R"); parallel::parSapply(parallelCluster, 1:8, sqrt)
      R> sshcluster_stop()

    The file is deterministic (same inventory, same bytes) and holds no secret.
    """
    inv = load_inventory(inventory)
    if allow_partial and not run_check:
        raise click.UsageError("--allow-partial goes with --check")
    register: list[Register] = []
    if use_future:
        register.append("future")
    if use_doparallel:
        register.append("doparallel")
    options = bootstrap.RenderOptions(
        launch="classic" if launch == "classic" else "fast" if launch else None,
        tunnel="reverse" if tunnel == "reverse" else "none" if tunnel else None,
        fork=fork,
        worker_output=worker_output,
        register=tuple(register),
    )
    if run_check:
        # The callback is checked on the route of the launch that will run: the
        # options', else the inventory's, else the default's.
        route = bootstrap.launch_tunnel(inv, options) == "reverse"
        try:
            inv, options = _checked(inv, options, timeout=timeout, accept_new=accept_new,
                                    allow_partial=allow_partial, concurrency=concurrency,
                                    tunnel=route)
        except CheckFailed as e:
            raise CheckFailed(f"not rendered: {e.message}", report=e.report,
                              hint=e.hint) from None
    else:
        options = bootstrap.with_library(inv, options)
    plan = bootstrap.plan_of(inv, options)
    warning = bootstrap.connection_note(inv, launch=plan.launch, fork=plan.fork,
                                        lease=plan.lease)
    if warning:
        click.secho(f"warning: {warning}", fg="yellow", err=True)
    if output is None or output == "-":
        click.echo(bootstrap.render(inv, options), nl=False)
        return
    bootstrap.write_bootstrap(inv, output, options)
    note(f"wrote {output}: {len(inv.hosts)} host{'s' if len(inv.hosts) != 1 else ''}, "
         f"{inv.workers} R workers "
         f"{'(checked)' if run_check else '(not checked)'} (in R: source({output!r}))")


def _checked(inv: Inventory, options: bootstrap.RenderOptions, *, timeout: float,
             accept_new: bool, allow_partial: bool, concurrency: int, tunnel: bool | None
             ) -> tuple[Inventory, bootstrap.RenderOptions]:
    """Check ``inv``; return the verified inventory (its ``check_note`` goes into the
    file's header) and ``options`` with the library of the check's reference.

    The check reads the default ssh config (~/.ssh/config), as the generated file's ssh
    does: a host that only another config file names would pass the check and then fail
    the launch, so render has no -F."""
    plan = bootstrap.plan_of(inv, options)  # (as its launch; what its registrations load)
    checked = dataclasses.replace(inv, register=plan.register, launch=plan.launch)
    report = _run_check(checked, timeout=timeout, concurrency=concurrency,
                        accept_new=accept_new, ssh_config=(), show_progress=True,
                        tunnel=tunnel)
    from sshcluster.check.preflight import verified_inventory

    verified = verified_inventory(report, inv, allow_partial=allow_partial)
    for host in report.failed:
        note(f"left out {host.label}: failed {', '.join(host.failed)}")
    return verified, bootstrap.with_library(inv, options, report)


@cli.command()
@click.option("--hosts", "n_hosts", default=4, show_default=True, type=click.IntRange(1, 64),
              help="How many local SSH test hosts to build.")
@click.option("--ncore", default=2, show_default=True, type=click.IntRange(1, 16),
              help="R workers per host.")
@click.option("--tasks", default=1000, show_default=True, type=click.IntRange(1, 10**6),
              help="Monte Carlo runs to spread over the cluster.")
@click.option("--keep", "keep", default=None, metavar="DIR",
              type=click.Path(file_okay=False, path_type=str),
              help="Write the inventory, cluster.R and the testbed's keys and logs to DIR and "
                   "keep them (default: a temporary directory, removed at the end).")
def demo(n_hosts: int, ncore: int, tasks: int, keep: str | None) -> None:
    """Run an R computation on local SSH test hosts, end to end.

    Builds the hosts (network namespaces, one sshd each; needs root), writes an
    inventory and the R bootstrap, checks the hosts (naming any warnings), runs a Monte
    Carlo stock-price simulation with parLapply, prints a summary and the tasks per
    host, and tears the hosts down. Without root it runs the same computation on a
    local cluster and says so.
    """
    from pathlib import Path

    from sshcluster.demo import run_demo

    status = run_demo(hosts=n_hosts, ncore=ncore, tasks=tasks,
                      workdir=Path(keep) if keep else None)
    if status != 0:
        raise click.exceptions.Exit(1)


@cli.command()
def example() -> None:
    """Print the documented example inventory: every field, with comments.

    \b
      sshcluster example > hosts.yaml     # then edit the hosts
    """
    from sshcluster.init import example_inventory  # (as the init command does)
    click.echo(example_inventory(), nl=False)


@cli.command()
@click.option("-o", "--output", default="hosts.yaml", show_default=True,
              type=click.Path(dir_okay=False, path_type=str),
              help="The inventory to write ('-': print it); an existing file is never "
                   "replaced.")
@click.option("--hosts", "hosts_spec", metavar="LIST",
              help="Host names or addresses, comma-separated, with ranges: "
                   "a,b,node[01-16].")
@click.option("--from-ssh-config", is_flag=True,
              help="Also every Host alias of ~/.ssh/config (and what it Includes) without "
                   "wildcards.")
@click.option("-F", "--ssh-config", type=click.Path(dir_okay=False, exists=True),
              help="Read this ssh config file instead of ~/.ssh/config.")
@click.option("--match", metavar="GLOB",
              help="With --from-ssh-config: only the aliases that match, e.g. 'node*'.")
@click.option("--user", help="The login name on every host (defaults.user).")
@click.option("--identity-file", metavar="KEY",
              help="The private key for every host (defaults.identity_file).")
def init(output: str, hosts_spec: str | None, from_ssh_config: bool, ssh_config: str | None,
         match: str | None, user: str | None, identity_file: str | None) -> None:
    """Write a first inventory: your hosts, ncore: auto, primary: auto.

    \b
      sshcluster init --hosts 'node[01-04]' --user alice
      sshcluster init --from-ssh-config --match 'node*'
      sshcluster check hosts.yaml

    The check then detects each host's cores and the primary's address;
    'render --check' writes them into the R bootstrap.
    """
    from sshcluster.init import expand_hosts, write_inventory

    written = write_inventory(output, expand_hosts(hosts_spec) if hosts_spec else (),
                              from_ssh_config=from_ssh_config, ssh_config=ssh_config,
                              match=match, user=user, identity_file=identity_file)
    if output == "-":
        click.echo(written.text, nl=False)
        return
    n = len(written.inventory.hosts)
    note(f"wrote {output}: {n} host{'s' if n != 1 else ''}, ncore: auto "
         f"(next: sshcluster check {output})")


use_help_formatter(cli)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``sshcluster`` console script.

    Standard output that is closed, or that cannot be written (a full disk, an I/O
    error), is an error (exit status 1) with a message on stderr, not a traceback, and
    never a success with the result lost: a script must be able to tell."""
    if sys.stdout is None:  # (how Python starts when descriptor 1 is closed)
        click.echo("error: standard output is closed; redirect it instead "
                   "(> FILE, or > /dev/null to discard what sshcluster prints)", err=True)
        sys.exit(1)
    signalled = _terminate_as_ctrl_c()
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="sshcluster")
    except SystemExit as e:
        # (click's "Aborted!" is exit status 1: after SIGTERM or SIGHUP, 128 + it)
        if signalled and e.code == 1:
            sys.exit(128 + signalled[0])
        raise
    except OSError as e:  # (click itself handles a closed pipe, EPIPE)
        if e.filename is not None or e.errno not in _OUTPUT_ERRORS:
            raise  # (not standard output's: a defect, to be seen as one)
        with contextlib.suppress(OSError):
            click.echo(f"error: cannot write the output: {e.strerror or e}", err=True)
        # (what is still buffered would fail again as Python exits, with a traceback)
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


#: How writing standard output fails: a full disk or quota, an I/O error, a file too
#: big, a descriptor not open for writing.
_OUTPUT_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EBADF}


def _terminate_as_ctrl_c() -> list[int]:
    """SIGTERM (``kill``, a CI timeout) and SIGHUP (a closed terminal) end any command as
    Ctrl-C does, so that its cleanup runs: the temporary files it made (a sync's bundle
    of packages), its ssh sessions. (Python's default ends the process where it stands.)
    A signal this process was started ignoring (nohup) stays ignored; ``run`` and ``ec2
    up`` put guards of their own over these. A second such signal ends the process at
    once. Returns the list the signal is noted in."""
    noted: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        if noted:  # a second one while the first's cleanup runs: ends it, as before
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        noted.append(signum)
        raise KeyboardInterrupt

    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, interrupt)
    return noted


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
