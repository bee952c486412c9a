"""``sshcluster ec2 up | ls | down | gc``: the click layer over :mod:`sshcluster.ec2`.

Each command parses its arguments, makes one library call and renders the result; the
root command group turns library errors into a message and an exit status. boto3 is only
imported when a command runs, so ``sshcluster --help`` stays fast.
"""

from __future__ import annotations

import contextlib
from typing import Any

import click

from sshcluster import ec2
from sshcluster.console import error_document, json_flag, print_error
from sshcluster.ec2.signals import exit_status
from sshcluster.ec2.spec import NAME_RULE, REGION_RULE, is_cluster_name, is_region
from sshcluster.errors import EC2Error, NoRegion


@click.group("ec2")
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


def _region(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Check --region as the spec's 'region' is checked: a malformed name is exit 2."""
    if value is not None and not is_region(value):
        raise click.BadParameter(f"expected {REGION_RULE}, got {value!r}")
    return value


def _cluster_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not is_cluster_name(value):
        raise click.BadParameter(f"expected {NAME_RULE}, got {value!r}")
    return value


_region_option = click.option(
    "--region", callback=_region,
    help="AWS region (default: the cluster's record, then AWS_DEFAULT_REGION or your AWS "
         "config).")
_any_owner_option = click.option(
    "--any-owner", is_flag=True,
    help="Also clusters other people started (by default only yours: the sshcluster:owner "
         "tag is you@this-host).")
_regions_option = click.option(
    "--region", callback=_region,
    help="Look in this AWS region only (default: every region of this machine's cluster "
         "records, and AWS_DEFAULT_REGION or your AWS config).")


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

    def __call__(self, step: ec2.Step) -> None:
        # After SIGHUP the terminal may be gone: a line that cannot be shown must not
        # stop the cleanup that is running.
        with contextlib.suppress(OSError):
            self._show(step)

    def _show(self, step: ec2.Step) -> None:
        if step.stage == "note":
            self.console.print(step.message)
            return
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
              help="Seconds to wait, in all, for the instances to run, answer on SSH and "
                   "show their host keys.")
@click.option("--setup-timeout", default=ec2.SETUP_TIMEOUT, show_default=True,
              type=click.FloatRange(min=1),
              help="Seconds to wait for every instance's setup (R and r_packages).")
@click.option("--no-wait", is_flag=True,
              help="Do not wait for the setup: return once SSH answers (check later with "
                   "'sshcluster render --check').")
@click.option("--keep-on-failure", is_flag=True,
              help="If the setup fails on an instance, keep the cluster to look at it "
                   "(default: end it). 'sshcluster ec2 down NAME' ends it.")
@click.option("--verify", is_flag=True,
              help="End with the inventory passing 'render --check' and one R computation "
                   "on every instance; else the cluster is ended and up fails.")
@click.option("--dry-run", is_flag=True,
              help="Ask EC2 whether it would work (DryRun=True); start nothing.")
@click.option("--force", is_flag=True,
              help="Replace OUTPUT even if it is not an inventory 'ec2 up' wrote for this "
                   "cluster (by default such a file is left alone and nothing starts).")
@click.pass_context
def ec2_up(ctx: click.Context, spec_file: str, output: str, accept_new: bool,
           timeout: float, setup_timeout: float, no_wait: bool, keep_on_failure: bool,
           verify: bool, dry_run: bool, force: bool) -> None:
    """Start the cluster in SPEC and write an inventory for it.

    First checks what it can before starting anything (image, architecture, subnets,
    zones, vCPU quota). Then waits until every instance runs and answers on SSH (one
    deadline), records the host keys the instances print on the console, writes the
    inventory OUTPUT, waits until every instance's setup has R and the spec's r_packages
    loading (its own deadline; a failed setup shows the end of its log and ends the
    cluster), and prints the next commands. With the default 'primary: auto' they are:

    \b
      sshcluster render hosts.yaml --check -o cluster.R
      Rscript -e 'source("cluster.R"); print(parallelCluster)'

    The inventory says 'tunnel: reverse': the workers reach this machine through ssh
    reverse tunnels, so it need not be reachable from AWS. On any failure, Ctrl-C,
    SIGTERM or SIGHUP, everything this command started is terminated.

    An existing OUTPUT is replaced only if 'ec2 up' wrote it for this cluster (or with
    --force); otherwise nothing starts.
    """
    from rich.console import Console

    spec = ec2.load_spec(spec_file)
    if dry_run:
        for line in ec2.dry_run(spec):
            click.echo(f"ok: {line}")
        click.echo("dry run: nothing was started")
        return
    seams = ctx.find_object(ec2.Seams) or ec2.Seams()
    printer = _ProgressPrinter(Console(stderr=True))
    try:
        cluster = ec2.up(spec, output=output, accept_new=accept_new, timeout=timeout,
                         setup_timeout=setup_timeout, wait=not no_wait,
                         keep_on_failure=keep_on_failure, progress=printer, overwrite=force,
                         address_of=seams.address_of, console_text=seams.console_text,
                         read_status=seams.read_status, verify=verify)
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP: cleaned up by now
        with contextlib.suppress(OSError):
            click.secho(f"error: {printer.aborted or 'interrupted'}", fg="red", err=True)
        raise SystemExit(exit_status(e)) from None
    click.echo(f"cluster {cluster.name}: {len(cluster.instances)} instances of {cluster.image}"
               f"{', ready' if cluster.ready else ''}, expires "
               f"{ec2.format_time(cluster.expires)}; inventory {cluster.inventory_path}")
    click.echo("next:")
    for line in cluster.next_steps:
        click.echo(f"  {line}")
    click.echo(f"end it with: sshcluster ec2 down {cluster.name}")


@ec2_group.command("example")
def ec2_example() -> None:
    """Print the documented example cluster spec: every field, with comments.

    \b
      sshcluster ec2 example > ec2.yaml     # then edit the image, type, count
      sshcluster ec2 up ec2.yaml --dry-run
    """
    from importlib import resources

    click.echo(resources.files("sshcluster").joinpath("examples").joinpath(
        "ec2.example.yaml").read_text(encoding="utf-8"), nl=False)


@ec2_group.command("ls")
@_regions_option
@_any_owner_option
@click.option("--json", "as_json", is_flag=True, callback=json_flag,
              help="Print JSON instead of a table: a list of clusters; if a region could "
                   "not be listed, an object with 'ok' false, the 'clusters' found and "
                   "each region's error in 'errors'.")
def ec2_ls(region: str | None, any_owner: bool, as_json: bool) -> None:
    """List your clusters and their instances, in every state.

    Without --region it looks in every region this machine has a cluster record in,
    and in your default region. A cluster whose 'up' was killed is shown as orphaned,
    with the command that ends it; one started for a detached job ('sshcluster run
    --ec2 --detach') as "(job JOB)": 'sshcluster fetch JOB' or 'stop JOB' ends it.

    A region that cannot be listed (credentials refused, no network, no such region)
    is named with its error, and the exit status is 1: what runs there is unknown,
    and the list is only of the other regions.
    """
    import json

    now = ec2.utcnow()
    try:
        found = ec2.list_all_clusters(region=region, any_owner=any_owner)
    except NoRegion:  # nothing started from here, nowhere to look: an empty list
        click.echo("[]" if as_json else "no clusters (no cluster records on this machine, "
                   "and no default AWS region; pass --region to look in one)")
        return
    for where, error in found.failed.items():
        print_error(error, where)
    clusters = [c for listed in found.succeeded.values() for c in listed]
    if as_json:
        listed = [c.to_dict(now) for c in clusters]
        click.echo(json.dumps(_incomplete(found, listed) if found.failed else listed,
                              indent=2))
    elif clusters:
        click.echo(ec2.format_clusters(clusters, now))
    elif found.succeeded:
        click.echo(f"no clusters in {', '.join(found.succeeded)}")
    if found.failed:
        if not as_json:
            click.echo(f"not listed: {', '.join(found.failed)} (see the error above); "
                       "clusters there, if any, are not shown")
        raise click.exceptions.Exit(1)


def _incomplete(found: ec2.Results[str, Any], clusters: list[dict[str, Any]]
                ) -> dict[str, Any]:
    """What ``ls --json`` prints when a region could not be listed: the error document
    every command prints (``ok`` false, ``error``), the clusters of the regions that
    answered, which those are, and each failed region's error."""
    failed = ", ".join(found.failed)
    problem = EC2Error(
        f"could not list the clusters in {failed}" + (
            f"; the clusters listed are those in {', '.join(found.succeeded)} only"
            if found.succeeded else ""),
        hint="see each region's error in 'errors', then run 'sshcluster ec2 ls' again")
    return {**error_document(problem), "clusters": clusters,
            "listed_regions": list(found.succeeded),
            "errors": {where: error_document(e)["error"] for where, e in found.failed.items()}}


@ec2_group.command("down")
@click.argument("name", callback=_cluster_name)
@_region_option
@_any_owner_option
def ec2_down(name: str, region: str | None, any_owner: bool) -> None:
    """Terminate every instance of your cluster NAME and delete what 'up' created for it.

    Instances in any state (pending, running, stopping, stopped) are terminated, spot
    requests cancelled, the security group and key pair made for it deleted. Running it
    again is harmless. A NAME that is no cluster here (no record on this machine,
    nothing tagged with it in the region) is an error (exit status 1), and the clusters
    that exist are listed; so is a NAME that only someone else has (unless --any-owner).
    If AWS has not released the security group by the deadline, the rest is removed,
    and what is left is named (exit status 1): run the same command again later.
    """
    report = ec2.down(name, region=region, any_owner=any_owner)
    click.echo(f"{name}: {report.summary()}")


@ec2_group.command("gc")
@_regions_option
@_any_owner_option
@click.option("--yes", is_flag=True, help="Do not ask before terminating.")
def ec2_gc(region: str | None, any_owner: bool, yes: bool) -> None:
    """End your clusters that should not be there any more.

    That is: past their expiry; orphaned (started here, no record left, or their 'up'
    was killed); or with their instances gone but a security group, key pair or record
    left. Without --region it looks where 'ec2 ls' looks: every region this machine has a
    cluster record in, and your default region. A detached job's cluster is left alone
    until its expiry, whether the job runs or waits for its results to be fetched.
    """
    found = ec2.find_all_garbage(region=region, any_owner=any_owner)
    for where, error in found.failed.items():
        print_error(error, where)
    garbage = [g for listed in found.succeeded.values() for g in listed]
    failed = bool(found.failed)
    if not garbage:
        if found.succeeded:
            click.echo(f"nothing to collect in {', '.join(found.succeeded)}")
        raise click.exceptions.Exit(1 if failed else 0)
    for g in garbage:
        of_job = f", of job {g.job}" if g.job else ""
        click.echo(f"{g.name} ({g.region}{of_job}): {g.reason}: {g.what}")
    if not yes and not click.confirm("Terminate these?", default=False):
        click.echo("nothing terminated")
        raise click.exceptions.Exit(1 if failed else 0)
    collected = ec2.collect_all_garbage(garbage)
    for g, report in collected.succeeded.items():
        click.echo(f"{report.name} ({g.region}): {report.summary()}")
    for g, error in collected.failed.items():
        print_error(error, f"{g.name} ({g.region})")
    if failed or collected.failed:
        raise click.exceptions.Exit(1)


__all__ = ["ec2_group"]
