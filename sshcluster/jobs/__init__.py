"""Jobs: one R script run on a cluster, from check to results, with its hosts leased.

    import sshcluster
    result = sshcluster.run("hosts.yaml", "fit.R", sshcluster.RunOptions(args=("10",)))
    print(result.status, result.run_dir)
    sshcluster.jobs.list_leases(sshcluster.load_inventory("hosts.yaml"))

See :mod:`sshcluster.jobs.job` (the job), :mod:`sshcluster.jobs.leases` (who holds a
host) and :mod:`sshcluster.jobs.record` (the run directory).
"""

from __future__ import annotations

from sshcluster.jobs.job import RunError, RunOptions, run
from sshcluster.jobs.leases import JobInfo, Lease, Leases, acquire, describe, list_leases
from sshcluster.jobs.record import RunResult, runs_dir

__all__ = ["JobInfo", "Lease", "Leases", "RunError", "RunOptions", "RunResult", "acquire",
           "describe", "list_leases", "run", "runs_dir"]
