"""``sshcluster run`` and ``sshcluster jobs``: the click layer over :mod:`sshcluster.jobs`."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import click

from sshcluster.console import json_flag
from sshcluster.inventory import load_inventory
from sshcluster.jobs.control import fetch_job, job_logs, list_jobs, stop_job
from sshcluster.jobs.detached import start_detached
from sshcluster.jobs.job import RunOptions, run
from sshcluster.jobs.leases import WAIT_TIMEOUT, list_leases
from sshcluster.protocol import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT
from sshcluster.quoting import printable


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
@click.option("--results", "results", metavar="DIR",
              type=click.Path(file_okay=False, path_type=str),
              help="When the script has ended, bring the files the workers wrote under "
                   "results/ (in their workdir) into DIR; a name found on several hosts "
                   "goes to DIR/HOST/NAME for each.")
@click.option("--worker-output", is_flag=True,
              help="Show what the workers print (cat, message) live on stderr, each line "
                   "after its host; it goes to the record's workers/HOST.log either way. "
                   "With --detach: 'sshcluster logs JOB' shows those lines too.")
@click.option("--detach", is_flag=True,
              help="Run the job on a host of the cluster (--primary), under a supervisor "
                   "there that outlives this connection; come back with 'sshcluster jobs', "
                   "'logs', 'stop' and 'fetch'.")
@click.option("--primary", "primary_host", metavar="HOST",
              help="With --detach: the host whose supervisor runs the script (default: "
                   "the first host that passed the check). It reaches the other hosts "
                   "by ssh with its own keys and known_hosts. With --ec2: the number of "
                   "the instance (1 to the spec's count), checked before the fleet starts.")
@click.option("--ec2", "ec2_spec", is_flag=True,
              help="INVENTORY is an EC2 spec: start its fleet for this job ('ec2 up'), "
                   "run the job on it, then end it ('ec2 down'), also after a failure or "
                   "a signal. With --detach the fleet ends once 'fetch JOB' brought the "
                   "ended job's results, or with 'stop JOB', or at its max_lifetime.")
@click.option("--keep", is_flag=True,
              help="With --ec2: keep the fleet after the job (it still ends at its "
                   "max_lifetime); 'sshcluster ec2 down NAME' ends it.")
@click.option("--json", "as_json", is_flag=True, callback=json_flag,
              help="Print the job's summary as JSON on stdout (the script's stdout then "
                   "goes to stderr, so stdout holds only the JSON).")
@click.pass_context
def run_command(ctx: click.Context, inventory: str, script: str, args: tuple[str, ...],
                allow_partial: bool, wait: bool, wait_timeout: float, timeout: float,
                accept_new: bool, concurrency: int, results: str | None,
                worker_output: bool, detach: bool, primary_host: str | None,
                ec2_spec: bool, keep: bool, as_json: bool) -> None:
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

    \b
    A fleet for one job (up, run, down; --keep keeps it):
      sshcluster run --ec2 ec2.yaml fit.R

    \b
    A fleet for one detached job (it ends once 'fetch' brought the ended job's
    results, or with 'stop', or at its max_lifetime; --keep keeps it):
      sshcluster run --ec2 --detach ec2.yaml fit.R

    \b
    Detached (this machine may then sleep or go offline):
      sshcluster run --detach hosts.yaml fit.R     prints the job's id, JOB
      sshcluster jobs                              running, done, failed, lost
      sshcluster logs -f JOB                       its output, as it comes
      sshcluster fetch JOB --to out/               its results and record
      sshcluster stop JOB                          it, its cluster, its leases
    """
    if primary_host is not None and not detach:
        raise click.UsageError("--primary is for --detach")
    if keep and not ec2_spec:
        raise click.UsageError("--keep is for --ec2")
    if detach and results is not None:
        raise click.UsageError("a detached job's results come with 'sshcluster fetch JOB'")
    options = RunOptions(args=args, allow_partial=allow_partial, wait=wait,
                         wait_timeout=wait_timeout, timeout=timeout,
                         concurrency=concurrency, accept_new=accept_new, results=results,
                         worker_output=worker_output)
    if detach and ec2_spec:
        from sshcluster import ec2
        from sshcluster.ec2.signals import exit_status
        from sshcluster.jobs.ec2job import start_ec2_detached

        try:
            job = start_ec2_detached(inventory, script, options, keep=keep,
                                     primary=primary_host, on_event=_note,
                                     seams=ctx.find_object(ec2.Seams))
        except KeyboardInterrupt as e:  # the fleet has ended by now
            _note(f"error: {e or 'interrupted'}")
            ctx.exit(exit_status(e))
    elif detach:
        job = start_detached(inventory, script, options, primary=primary_host,
                             on_event=_note)
    if detach:
        if as_json:
            click.echo(json.dumps(job.to_dict(), indent=2))
        else:
            click.echo(job.job)
        ctx.exit(0)
    out = sys.stderr.buffer if as_json else None
    if ec2_spec:
        from sshcluster import ec2
        from sshcluster.ec2.signals import exit_status
        from sshcluster.jobs.ec2job import run_ec2

        try:
            result = run_ec2(inventory, script, options, keep=keep, stdout=out,
                             on_event=_note, seams=ctx.find_object(ec2.Seams))
        except KeyboardInterrupt as e:  # during up or down: cleaned up by now
            _note(f"error: {e or 'interrupted'}")
            ctx.exit(exit_status(e))
    else:
        result = run(inventory, script, options, on_event=_note, stdout=out)
    if as_json:
        click.echo(result.to_json())
    else:
        how = f"ended by {result.signal}" if result.signal else f"exit status {result.status}"
        _note(f"job {result.job}: {how} in {result.wall:.1f} s (record: {result.run_dir})")
    ctx.exit(result.status)


@click.command("jobs")
@click.argument("inventory", required=False, type=click.Path(dir_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, callback=json_flag, help="Print the list as JSON.")
@click.pass_context
def jobs_command(ctx: click.Context, inventory: str | None, as_json: bool) -> None:
    """List the jobs started from this machine, or with INVENTORY the leases on its
    hosts (which job holds each host).

    \b
      sshcluster jobs               JOB  STATE  TIME  PRIMARY  SCRIPT
      sshcluster jobs hosts.yaml    HOST  JOB  WHO  SINCE  SCRIPT (or "free")

    A detached job's state comes from its primary host: leasing, waiting (in line
    for a host), running, done, failed, stopped, or lost (its primary host cannot
    be reached). A lease lasts as long as its job's session on the host. Exit
    status 1 when a host could not be asked.
    """
    if inventory is None:
        jobs = list_jobs()
        if as_json:
            click.echo(json.dumps([asdict(j) for j in jobs], indent=2))
        else:
            for j in jobs:
                took = f"{j.seconds:.0f}s" if j.seconds is not None else "-"
                state = j.state + (f" ({j.status})" if j.state == "failed" and j.status
                                   else "")
                # (the script's name, the detail and the leases' fields come from
                # records and hosts: shown, never acted on by the terminal)
                click.echo(printable(f"{j.job}\t{state}\t{took}\t{j.primary}\t{j.script}"
                                     + (f"\t{j.detail}" if j.detail else ""), newlines=False))
        ctx.exit(1 if any(j.state == "lost" for j in jobs) else 0)
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
            click.echo(printable(f"{lease.host}\t" + (
                f"{h.job}\t{h.who}\tsince {h.since}\t{h.script}" if h
                else f"error: {lease.error}" if lease.error else "free"), newlines=False))
    ctx.exit(1 if any(lease.error for lease in leases) else 0)


@click.command("logs")
@click.argument("job")
@click.option("-f", "--follow", is_flag=True,
              help="Keep showing the log as it grows, until the job ends (Ctrl-C leaves "
                   "the job running).")
@click.pass_context
def logs_command(ctx: click.Context, job: str, follow: bool) -> None:
    """Show the log (the script's stdout and stderr) of JOB (detached or not).

    A detached job started with --worker-output: what its workers print too, each line
    after its host ("[HOST] line"), as it comes to the primary host. Otherwise the
    workers' own output is in the record after 'sshcluster fetch JOB'
    (workers/HOST.log). Exit status: 0 shown; 1 the log could not be read or written;
    2 no such JOB.
    """
    ctx.exit(0 if job_logs(job, sys.stdout.buffer, follow=follow) == 0 else 1)


@click.command("stop")
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, callback=json_flag,
              help="Print the job's state as JSON.")
@click.pass_context
def stop_command(ctx: click.Context, job: str, as_json: bool) -> None:
    """Stop the detached JOB and everything it started: its R, its cluster's workers on
    every host, its leases. Its supervisor stops them in order; whatever is left after
    30 s is killed. A job that has already ended is left as it is. A job with an EC2
    fleet of its own ('run --ec2 --detach'): what it has (log, results so far) comes
    into its record, then the fleet ends (unless --keep was given at run), also after
    a fetch that could not read every host, and also when the primary host cannot be
    reached (then the exit status is 1 and the error says so). No such JOB: exit
    status 2.
    """
    status = stop_job(job, on_event=_note)
    if as_json:
        click.echo(json.dumps(asdict(status), indent=2))
    else:
        click.echo(f"{status.job}\t{status.state}")
    ctx.exit(1 if status.state == "lost" else 0)


@click.command("fetch")
@click.argument("job")
@click.option("--to", "dest", metavar="DIR", type=click.Path(file_okay=False, path_type=str),
              help="Where the results go (default: the job's record, runs/JOB/results).")
@click.option("--json", "as_json", is_flag=True, callback=json_flag,
              help="Print the job's summary as JSON.")
@click.pass_context
def fetch_command(ctx: click.Context, job: str, dest: str | None, as_json: bool) -> None:
    """Bring the detached JOB's results: the files its workers wrote under results/
    (in their workdir) from every host, into DIR (a name found on several hosts goes to
    DIR/HOST/NAME for each); and its log, its workers' logs and, once it has ended,
    run.json into its record. Exit status 1 when a host could not be read, 2 when
    there is no such JOB.

    Once the ended job is all here, its directory on the primary host is removed (the
    record keeps its log), and a fleet started for it ('run --ec2 --detach') ends,
    unless --keep was given at run; when a host could not be read, the fleet keeps
    running (fetch again, or 'sshcluster stop JOB' ends it).
    """
    status, results, result = fetch_job(job, dest, on_event=_note)
    if as_json:
        click.echo(json.dumps({"state": asdict(status),
                               "results": {"dir": results.dest, "files": results.files,
                                           "errors": results.errors},
                               "record": result.to_dict() if result else None}, indent=2))
    else:
        _note(f"job {job}: {status.state}; {results.total} result files in {results.dest}")
        for host, why in results.errors.items():
            _note(f"{host}: {why}")
    ctx.exit(1 if results.errors else 0)
