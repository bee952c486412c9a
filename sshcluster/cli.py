"""The ``sshcluster`` command: a thin click layer over the Python API.

Each command parses its arguments, calls one library function, renders the result and
turns :class:`~sshcluster.errors.SshclusterError` into a message and an exit status:
0 success, 1 a host or a cloud request failed, 2 the inventory or the command line is
wrong. No traceback for a user's mistake.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

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

from sshcluster import __version__, bootstrap
from sshcluster.errors import CheckFailed, SshclusterError
from sshcluster.inventory import LAUNCHES, TUNNELS, Inventory, Register, load_inventory
from sshcluster.preflight import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT, check, verified_inventory
from sshcluster.report import CheckReport, print_report


class _Group(click.Group):
    """A click group that turns library errors into a message and an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SshclusterError as e:
            if isinstance(e, CheckFailed):
                print_report(e.report, Console(stderr=True))
            _print_error(e)
            ctx.exit(e.exit_code)


def _print_error(e: SshclusterError, where: str | None = None) -> None:
    """``error: [WHERE: ]MESSAGE`` and its hint, on stderr."""
    click.secho(f"error: {where + ': ' if where else ''}{e.message}", fg="red", err=True)
    if e.hint:
        click.echo(f"hint: {e.hint}", err=True)


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


def _run_check(inv: Inventory, *, timeout: float, concurrency: int, accept_new: bool,
               ssh_config: tuple[str, ...], show_progress: bool,
               tunnel: bool | None = None) -> CheckReport:
    """Run the preflight check, with a progress bar on stderr when it is a terminal."""
    console = Console(stderr=True)
    kwargs: dict[str, Any] = {"timeout": timeout, "concurrency": concurrency,
                              "accept_new": accept_new, "tunnel": tunnel,
                              "ssh_config": list(ssh_config) if ssh_config else None}
    if console.is_terminal and show_progress:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                      transient=True) as bar:
            task = bar.add_task("checking hosts", total=len(inv.hosts))
            return check(inv, progress=lambda _: bar.advance(task), **kwargs)
    return check(inv, **kwargs)


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
              type=click.Path(dir_okay=False, exists=True),
              help="Use this OpenSSH client config file instead of ssh's own (~/.ssh/config "
                   "and /etc/ssh/ssh_config), as 'ssh -F' does; repeatable (read in order).")
@click.pass_context
def check_command(ctx: click.Context, inventory: str, timeout: float, concurrency: int,
                  accept_new: bool, as_json: bool, ssh_config: tuple[str, ...]) -> None:
    """Check that every host of INVENTORY is ready to be an R worker.

    Per host, in order: resolve, connect, hostkey, auth, rscript, packages, cores,
    load, reverse_ssh, callback. All hosts at once; the run ends within --timeout.
    Exit status: 0 every host ready, 1 some host failed, 2 a wrong inventory or
    command line.
    """
    inv = load_inventory(inventory)
    report = _run_check(inv, timeout=timeout, concurrency=concurrency, accept_new=accept_new,
                        ssh_config=ssh_config, show_progress=not as_json)
    if as_json:
        click.echo(report.to_json())
    else:
        print_report(report, Console())
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
              help="reverse: workers reach the primary through an ssh reverse tunnel "
                   "(for a primary behind NAT or a firewall). Overrides 'tunnel'.")
@click.option("--fork/--no-fork", default=None,
              help="Fast launch: start one R per host and fork its workers from it "
                   "(default; one R start-up per host), or start every worker as a fresh "
                   "Rscript. Overrides the inventory's 'fork'.")
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
           fork: bool | None, use_future: bool, use_doparallel: bool, run_check: bool,
           allow_partial: bool, timeout: float, accept_new: bool, concurrency: int) -> None:
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
    note = None
    if allow_partial and not run_check:
        raise click.UsageError("--allow-partial goes with --check")
    if run_check:
        try:
            inv, note = _checked(inv, timeout=timeout, accept_new=accept_new,
                                 allow_partial=allow_partial, concurrency=concurrency,
                                 tunnel=None if tunnel is None else tunnel == "reverse")
        except CheckFailed as e:
            raise CheckFailed(f"not rendered: {e.message}", report=e.report,
                              hint=e.hint) from None
    register: list[Register] = []
    if use_future:
        register.append("future")
    if use_doparallel:
        register.append("doparallel")
    options = bootstrap.RenderOptions(
        launch="classic" if launch == "classic" else "fast" if launch else None,
        tunnel="reverse" if tunnel == "reverse" else "none" if tunnel else None,
        fork=fork,
        register=tuple(register),
        note=note,
    )
    if output is None or output == "-":
        click.echo(bootstrap.render(inv, options), nl=False)
        return
    bootstrap.write_bootstrap(inv, output, options)
    click.echo(
        f"wrote {output}: {len(inv.hosts)} hosts, {inv.workers} R workers "
        f"(in R: source({output!r}))",
        err=True,
    )


def _checked(inv: Inventory, *, timeout: float, accept_new: bool, allow_partial: bool,
             concurrency: int, tunnel: bool | None) -> tuple[Inventory, str]:
    """Check ``inv``; return the verified inventory and a note for the file's header.

    The check reads the default ssh config (~/.ssh/config), as the generated file's ssh
    does: a host that only another config file names would pass the check and then fail
    the launch, so render has no -F."""
    report = _run_check(inv, timeout=timeout, concurrency=concurrency,
                        accept_new=accept_new, ssh_config=(), show_progress=True,
                        tunnel=tunnel)
    verified = verified_inventory(report, inv, allow_partial=allow_partial)
    for host in report.failed:
        click.echo(f"left out {host.label}: failed {', '.join(host.failed)}", err=True)
    return verified, report.header_note()


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


@cli.group()
def testbed() -> None:
    """Local SSH test hosts on this Linux machine (root, network namespaces).

    \b
      sshcluster testbed up 4 --dir /tmp/tb    # hosts + /tmp/tb/hosts.yaml
      sshcluster render /tmp/tb/hosts.yaml -o /tmp/tb/cluster.R
      sshcluster testbed down --dir /tmp/tb    # or --name NAME, as printed by `up`

    Each host is a network namespace with its own address, hostname, host key and
    sshd; the primary is this machine on the testbed's bridge.
    """


def _subnet_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from sshcluster.testbeds import parse_subnet

    if value is None:
        return None
    try:
        return str(parse_subnet(value))
    except SshclusterError as e:
        raise click.BadParameter(e.message) from e


@testbed.command("up")
@click.argument("count", type=click.IntRange(1, 250))
@click.option("--dir", "workdir", required=True, metavar="DIR",
              type=click.Path(file_okay=False, path_type=str),
              help="Directory for keys, known_hosts, logs and hosts.yaml (refused while a "
                   "testbed that is up uses it).")
@click.option("--subnet", default=None, metavar="NETWORK", callback=_subnet_option,
              help="IPv4 network for the hosts, e.g. 10.213.5.0/24 (default: a free "
                   "10.213.X.0/24); must not overlap this machine's addresses or routes.")
@click.option("--ncore", default=2, show_default=True, type=click.IntRange(1, 256),
              help="ncore written into hosts.yaml.")
@click.option("--port", default=None, type=click.IntRange(1, 65535),
              help="R port written into hosts.yaml.")
def testbed_up(count: int, workdir: str, subnet: str | None, ncore: int,
               port: int | None) -> None:
    """Build COUNT SSH test hosts and write DIR/hosts.yaml for them.

    They stay up after this command ends; remove them with
    `sshcluster testbed down --dir DIR` (or --name NAME).
    """
    from sshcluster.errors import TestbedError
    from sshcluster.testbed import Testbed

    try:
        tb = Testbed(count, workdir=workdir, subnet=subnet)
    except TestbedError as e:  # the constructor only checks its arguments
        raise click.UsageError(e.message) from e
    tb.up()
    inventory = tb.write_inventory(f"{workdir}/hosts.yaml", ncore=ncore, port=port)
    for h in tb.hosts:
        click.echo(f"{h.hostname}\t{h.address}")
    click.echo(f"testbed {tb.name}: {count} hosts on {tb.subnet}, primary {tb.primary_address};"
               f" inventory {inventory}", err=True)
    click.echo(f"remove with: sshcluster testbed down --name {tb.name}"
               f" (or --dir {tb.workdir})", err=True)


@testbed.command("down")
@click.option("--name", default=None, metavar="NAME",
              help="Remove the testbed with exactly this name (as printed by `up`).")
@click.option("--dir", "workdir", default=None, metavar="DIR",
              type=click.Path(file_okay=False, path_type=str),
              help="Remove the testbed whose directory is DIR (as given to `up --dir`); "
                   "DIR itself stays.")
@click.option("--all", "everything", is_flag=True,
              help="Remove every testbed on this machine whose owner process has exited: "
                   "that is every testbed made by `sshcluster testbed up`, anyone's, and "
                   "the leftovers of crashed runs. A testbed whose owner still runs (a "
                   "test run, the demo, a Python program) is never removed.")
def testbed_down(name: str | None, workdir: str | None, everything: bool) -> None:
    """Remove test hosts: their processes, namespaces, links and bridge.

    Give exactly one of --name, --dir and --all. --name and --dir remove one testbed,
    or fail (exit 1) if there is none by that name or directory.
    """
    from sshcluster.testbeds import down_all, remove_testbed

    given = [opt for opt, value in (("--name", name), ("--dir", workdir),
                                    ("--all", everything)) if value]
    if len(given) != 1:
        raise click.UsageError("give one of --name NAME, --dir DIR or --all"
                               + (f", not {' and '.join(given)}" if given else ""))
    removed = down_all() if everything else [remove_testbed(name, workdir=workdir)]
    click.echo(f"removed {len(removed)} testbed{'s' if len(removed) != 1 else ''}"
               + (f": {', '.join(removed)}" if removed else ""), err=True)


# --------------------------------------------------------------------------- ec2


@cli.group("ec2")
def ec2_group() -> None:
    """Transient EC2 workers that end themselves.

    \b
    sshcluster ec2 up ec2.yaml -o hosts.yaml   # start, wait for SSH, write an inventory
    sshcluster ec2 ls                          # what sshcluster started, in every region
                                               # with a record here: age, time left
    sshcluster ec2 down NAME                   # terminate it all (safe to repeat)
    sshcluster ec2 gc                          # end expired or orphaned clusters

    The spec format is documented in ec2.example.yaml. Credentials and the endpoint come
    from the usual AWS settings (AWS_PROFILE, AWS_ENDPOINT_URL, ...).
    """


def _client(region: str | None, name: str | None = None) -> Any:
    from sshcluster import ec2

    return ec2.make_client(ec2.resolve_region(region, name))


def _region(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Check --region as the spec's 'region' is checked: a malformed name is exit 2."""
    from sshcluster.ec2spec import REGION_RULE, is_region

    if value is not None and not is_region(value):
        raise click.BadParameter(f"expected {REGION_RULE}, got {value!r}")
    return value


_region_option = click.option(
    "--region", callback=_region,
    help="AWS region (default: the cluster's record, then AWS_DEFAULT_REGION or your AWS "
         "config).")
_regions_option = click.option(
    "--region", callback=_region,
    help="Look in this AWS region only (default: every region of this machine's cluster "
         "records, and AWS_DEFAULT_REGION or your AWS config).")

T = TypeVar("T")


def _each_region(region: str | None, call: Callable[[Any], Sequence[T]]
                 ) -> tuple[list[T], list[str], bool]:
    """``call(client)`` in each region ``ls`` and ``gc`` look in (``ec2.search_regions``).
    Returns what they found, the regions that answered, and whether any failed: an AWS
    failure in one region is printed, and the other regions are still looked in."""
    from sshcluster import ec2

    found: list[T] = []
    answered: list[str] = []
    failed = False
    for name in ec2.search_regions(region):
        try:
            found.extend(call(ec2.make_client(name)))
        except SshclusterError as e:
            failed = True
            _print_error(e, name)
            continue
        answered.append(name)
    return found, answered, failed


def _print_clusters(clusters: Sequence[Any], now: Any, *, stderr: bool = False) -> None:
    """The table of ``ec2 ls``: one row per instance."""
    from rich.console import Console
    from rich.table import Table

    from sshcluster import ec2

    table = Table("cluster", "region", "instance", "state", "type", "address", "age",
                  "time left", box=None)
    for c in clusters:
        left = ec2.format_duration(c.expires - now) if c.expires else "?"
        for i in c.instances:
            age = ec2.format_duration(now - i.launch_time) if i.launch_time else "?"
            table.add_row(c.name + ("" if c.known else " (no record)"), c.region, i.id,
                          i.state, i.instance_type + (" spot" if i.spot else ""),
                          i.public_ip or i.private_ip or "-", age,
                          left if i.live else "-")
    Console(width=200, stderr=stderr).print(table)


class _ProgressPrinter:
    """A :class:`~sshcluster.ec2.Step` callback: a rich progress bar on a terminal, plain
    lines otherwise. Keeps the note of an aborted ``up`` for the Ctrl-C message."""

    def __init__(self, console: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.console = console
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), console=console,
                            transient=True) if console.is_terminal else None
        self.tasks: dict[str, Any] = {}
        self.last: dict[str, tuple[int, int]] = {}
        self.aborted: str | None = None

    def __call__(self, step: Any) -> None:
        if step.stage in ("done", "aborted"):
            if self.bar is not None:
                self.bar.stop()
            if step.stage == "aborted":
                self.aborted = step.message  # the error message says it too
            else:
                self.console.print(step.message)
            return
        if self.bar is None:
            if self.last.get(step.stage) != (step.done, step.total):
                self.console.print(f"{step.stage}: {step.done}/{step.total} {step.message}")
                self.last[step.stage] = (step.done, step.total)
            return
        self.bar.start()
        if step.stage not in self.tasks:
            self.tasks[step.stage] = self.bar.add_task(step.message, total=step.total)
        self.bar.update(self.tasks[step.stage], completed=step.done, total=step.total,
                        description=step.message or step.stage)


@ec2_group.command("up")
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("-o", "--output", default="hosts.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="Inventory to write.")
@click.option("--accept-new", is_flag=True,
              help="If an instance's host keys are not in its console output, record the key "
                   "it shows on first connection (trust on first use).")
@click.option("--timeout", default=900.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds to wait, in all, for the instances to run and answer on SSH.")
@click.option("--dry-run", is_flag=True,
              help="Ask EC2 whether it would work (DryRun=True); start nothing.")
@click.option("--force", is_flag=True,
              help="Replace OUTPUT even if it is not an inventory 'ec2 up' wrote for this "
                   "cluster (by default such a file is left alone and nothing starts).")
def ec2_up(spec_file: str, output: str, accept_new: bool, timeout: float,
           dry_run: bool, force: bool) -> None:
    """Start the cluster in SPEC and write an inventory for it.

    Waits until every instance runs and answers on SSH (one overall deadline), records
    the host keys cloud-init prints on the console, writes the inventory OUTPUT and
    prints the next commands. With the default 'primary: auto' they are:

    \b
      sshcluster render hosts.yaml --check -o cluster.R
      Rscript -e 'source("cluster.R"); print(parallelCluster)'

    --check is needed: it fills in the primary's address as the instances see it, and
    tells whether the setup script has installed R yet. On any failure or Ctrl-C,
    everything this command started is terminated.

    An existing OUTPUT is replaced only if 'ec2 up' wrote it for this cluster (or with
    --force); otherwise nothing starts.
    """
    from rich.console import Console

    from sshcluster import ec2
    from sshcluster.ec2spec import load_spec

    spec = load_spec(spec_file)
    client = ec2.make_client(spec.region)
    if dry_run:
        for line in ec2.dry_run(spec, client=client):
            click.echo(f"ok: {line}")
        click.echo("dry run: nothing was started")
        return
    printer = _ProgressPrinter(Console(stderr=True))
    try:
        cluster = ec2.up(spec, client=client, output=output, accept_new=accept_new,
                         timeout=timeout, progress=printer, overwrite=force)
    except KeyboardInterrupt:
        click.secho(f"error: {printer.aborted or 'interrupted'}", fg="red", err=True)
        raise SystemExit(130) from None
    click.echo(f"cluster {cluster.name}: {len(cluster.instances)} instances, expires "
               f"{ec2.format_time(cluster.expires)}; inventory {cluster.inventory_path}")
    click.echo("next:")
    for line in cluster.next_steps:
        click.echo(f"  {line}")
    click.echo(f"end it with: sshcluster ec2 down {cluster.name}")


@ec2_group.command("ls")
@_regions_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def ec2_ls(region: str | None, as_json: bool) -> None:
    """List the clusters and instances sshcluster started, in every state.

    Without --region it looks in every region this machine has a cluster record in,
    and in your default region.
    """
    import json

    from sshcluster import ec2

    now = ec2.utcnow()
    clusters, looked, failed = _each_region(region, lambda c: ec2.list_clusters(client=c))
    if as_json:
        click.echo(json.dumps([c.to_dict(now) for c in clusters], indent=2))
    elif clusters:
        _print_clusters(clusters, now)
    elif looked:
        click.echo(f"no clusters in {', '.join(looked)}")
    if failed:
        raise click.exceptions.Exit(1)


def _cluster_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from sshcluster.ec2spec import NAME_RULE, is_cluster_name

    if not is_cluster_name(value):
        raise click.BadParameter(f"expected {NAME_RULE}, got {value!r}")
    return value


@ec2_group.command("down")
@click.argument("name", callback=_cluster_name)
@_region_option
def ec2_down(name: str, region: str | None) -> None:
    """Terminate every instance of cluster NAME and delete what 'up' created for it.

    Instances in any state (pending, running, stopping, stopped) are terminated, spot
    requests cancelled, the security group and key pair made for it deleted. Running it
    again is harmless. A NAME that is no cluster here (no record on this machine,
    nothing tagged with it in the region) is an error (exit status 1), and the clusters
    that exist are listed.
    """
    from sshcluster import ec2

    client = _client(region, name)
    report = ec2.down(name, client=client)
    if report.found:
        click.echo(f"{name}: {report.summary()}")
        return
    where = client.meta.region_name
    click.secho(f"error: no cluster {name} in {where}: no record of it on this machine, "
                f"and nothing in {where} is tagged with it", fg="red", err=True)
    clusters, looked, _ = _each_region(region, lambda c: ec2.list_clusters(client=c))
    if clusters:
        click.echo("the clusters sshcluster started, as 'sshcluster ec2 ls' lists them:",
                   err=True)
        _print_clusters(clusters, ec2.utcnow(), stderr=True)
    elif looked:
        click.echo(f"there are no clusters in {', '.join(looked)}", err=True)
    click.echo("hint: check the name; for a cluster in another region pass --region",
               err=True)
    raise click.exceptions.Exit(1)


@ec2_group.command("gc")
@_regions_option
@click.option("--yes", is_flag=True, help="Do not ask before terminating.")
def ec2_gc(region: str | None, yes: bool) -> None:
    """Terminate clusters past their expiry, or orphaned (started here, no record left).

    Without --region it looks where 'ec2 ls' looks: every region this machine has a
    cluster record in, and your default region.
    """
    from sshcluster import ec2

    found, looked, failed = _each_region(
        region, lambda c: [(c, g) for g in ec2.find_garbage(client=c)])
    if not found:
        if looked:
            click.echo(f"nothing to collect in {', '.join(looked)}")
        if failed:
            raise click.exceptions.Exit(1)
        return
    for _, g in found:
        click.echo(f"{g.name} ({g.region}): {g.reason}: {', '.join(g.instance_ids)}")
    if not yes and not click.confirm("Terminate these?", default=False):
        click.echo("nothing terminated")
        raise click.exceptions.Exit(1 if failed else 0)
    for client, g in found:
        try:
            (report,) = ec2.collect_garbage([g], client=client)
        except SshclusterError as e:
            failed = True
            _print_error(e, f"{g.name} ({g.region})")
            continue
        click.echo(f"{report.name} ({g.region}): {report.summary()}")
    if failed:
        raise click.exceptions.Exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``sshcluster`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="sshcluster")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
