"""Jobs: one R script run on a cluster, from check to results, with its hosts leased.

    import sshcluster
    result = sshcluster.run("hosts.yaml", "fit.R", sshcluster.RunOptions(args=("10",)))
    print(result.status, result.run_dir)
    sshcluster.jobs.list_leases(sshcluster.load_inventory("hosts.yaml"))

    job = sshcluster.jobs.start_detached("hosts.yaml", "fit.R")   # runs on a host
    sshcluster.jobs.job_status(job.job).state
    sshcluster.jobs.fetch_job(job.job, "out/")

    job = sshcluster.jobs.start_ec2_detached("ec2.yaml", "fit.R")  # a fleet of its own

See :mod:`sshcluster.jobs.job` (the job), :mod:`sshcluster.jobs.detached` (starting a
detached job), :mod:`sshcluster.jobs.control` (coming back to it),
:mod:`sshcluster.jobs.ec2job` (a fleet for one job), :mod:`sshcluster.jobs.leases` (who
holds a host), :mod:`sshcluster.jobs.results` (what comes back),
:mod:`sshcluster.jobs.workerlog` (what the workers print) and
:mod:`sshcluster.jobs.record` (the run directory).
"""

from __future__ import annotations

from sshcluster.jobs.control import fetch_job, job_logs, job_status, list_jobs, stop_job
from sshcluster.jobs.detached import DetachedJob, JobError, JobStatus, NoSuchJob, start_detached
from sshcluster.jobs.ec2job import (  # (boto3 is imported only when they run)
    release_fleet,
    run_ec2,
    start_ec2_detached,
)
from sshcluster.jobs.job import RunError, RunOptions, run
from sshcluster.jobs.leases import JobInfo, Lease, Leases, acquire, describe, list_leases
from sshcluster.jobs.record import RunResult, runs_dir
from sshcluster.jobs.results import ResultsReport, fetch_results

__all__ = ["DetachedJob", "JobError", "JobInfo", "JobStatus", "Lease", "Leases",
           "NoSuchJob", "ResultsReport", "RunError", "RunOptions", "RunResult", "acquire",
           "describe", "fetch_job", "fetch_results", "job_logs", "job_status", "list_jobs",
           "list_leases", "release_fleet", "run", "run_ec2", "runs_dir", "start_detached",
           "start_ec2_detached", "stop_job"]
