"""``sshcluster run --ec2 spec.yaml SCRIPT``: a fleet for one job. ``ec2 up``, then the
job on the inventory it wrote, then ``ec2 down``: also after a failed check, a failing
script, an error, Ctrl-C, SIGTERM or SIGHUP (one signal guard covers the three steps;
a signal during ``down`` is noted, not obeyed half-way). ``keep`` keeps the fleet (it
still ends at the spec's ``max_lifetime``, as every ``ec2 up`` fleet does).

    result = run_ec2("ec2.yaml", "fit.R", RunOptions(args=("10",)))
    result.phases["ec2_up"], result.phases["ec2_down"]
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, BinaryIO

from sshcluster.jobs.job import RunOptions, run
from sshcluster.jobs.record import RunResult, runs_dir, write_record


def run_ec2(spec_file: str | os.PathLike[str], script: str | os.PathLike[str],
            options: RunOptions | None = None, *, keep: bool = False, seams: Any = None,
            up_timeout: float = 900.0, wait_setup: bool = True,
            stdout: BinaryIO | None = None, stderr: BinaryIO | None = None,
            on_event: Callable[[str], None] | None = None) -> RunResult:
    """Run ``script`` on a fleet started from the EC2 spec ``spec_file`` for this job
    alone (see the module's text); the fleet's inventory is kept in
    ``runs/ec2/NAME/hosts.yaml``. ``seams`` (an :class:`sshcluster.ec2.Seams`) says how
    to reach the instances when not EC2's own way (tests); ``up_timeout`` and
    ``wait_setup`` are ``ec2 up``'s ``--timeout`` and not ``--no-wait``. A signal
    during ``up`` raises :class:`~sshcluster.ec2.signals.Interrupted` once ``up`` has
    cleaned up; during the job, the result says which signal ended it."""
    from sshcluster import ec2  # (boto3 only when asked for)
    from sshcluster.ec2.signals import signal_guard

    tell = on_event or (lambda message: None)
    spec = ec2.load_spec(spec_file)
    where = runs_dir() / "ec2" / spec.name
    where.mkdir(parents=True, exist_ok=True)
    seam = seams or ec2.Seams()
    said: set[tuple[str, int]] = set()

    def progress(step: Any) -> None:  # (each stage's count once: up polls)
        if (step.stage, step.done) not in said:
            said.add((step.stage, step.done))
            tell(f"ec2 up: {step.stage} {step.done}/{step.total} {step.message}".rstrip())

    up_options: dict[str, Any] = {
        "address_of": seam.address_of, "console_text": seam.console_text,
        "read_status": seam.read_status, "timeout": up_timeout, "wait": wait_setup,
        "progress": progress}
    t0 = time.monotonic()
    tell(f"ec2: starting {spec.count} instances for the job (cluster {spec.name})")
    if keep:
        with signal_guard():
            cluster = ec2.up(spec, output=where / "hosts.yaml", **up_options)
            t_up = time.monotonic() - t0
            result = run(cluster.inventory_path, script, options, stdout=stdout,
                         stderr=stderr, on_event=on_event)
        tell(f"ec2: cluster {spec.name} kept (inventory {cluster.inventory_path}); end it "
             f"with: sshcluster ec2 down {spec.name}")
        return _with_ec2(result, t_up, None)
    with ec2.cluster(spec, output=where / "hosts.yaml", **up_options) as cluster:
        t_up = time.monotonic() - t0
        try:
            result = run(cluster.inventory_path, script, options, stdout=stdout,
                         stderr=stderr, on_event=on_event)
        finally:
            tell(f"ec2: ending cluster {spec.name}")
            t_end = time.monotonic()
    tell(f"ec2: cluster {spec.name} ended")
    return _with_ec2(result, t_up, time.monotonic() - t_end)


def _with_ec2(result: RunResult, t_up: float, t_down: float | None) -> RunResult:
    phases = {"ec2_up": t_up, **result.phases}
    if t_down is not None:
        phases["ec2_down"] = t_down
    done = replace(result, phases=phases)
    write_record(done)
    return done
