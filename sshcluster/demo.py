"""The demo: a real R computation spread over local SSH test hosts.

It builds the test hosts (:mod:`sshcluster.testing`), writes an inventory for them, checks
them (:mod:`sshcluster.check.preflight`) and says what the check warned about, writes the R
bootstrap, runs a Monte Carlo stock-price simulation across the cluster with
``parLapply``, prints a summary and how many tasks each host ran, and tears the hosts
down. Its files go to a temporary directory, removed at the end, unless a ``workdir`` is
given. Without root (no network namespaces) it runs the same computation on a local
cluster and says so.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sshcluster import bootstrap
from sshcluster.check import preflight
from sshcluster.check.report import STEPS, CheckReport
from sshcluster.errors import RenderError, SshclusterError, TestbedError
from sshcluster.inventory import load_inventory
from sshcluster.quoting import r_string
from sshcluster.testing import RTimeout, Testbed, require_root_and_netns, run_r

#: The computation, after the bootstrap has made ``parallelCluster``.
DEMO_R = r"""
# A stock's closing price after `days` trading days of log-normal daily moves.
getClosingPrice <- function(days, start = 100, drift = 0.0003, volatility = 0.012) {
  start * exp(sum(rnorm(days, mean = drift, sd = volatility)))
}

parallel::clusterSetRNGStream(parallelCluster, 20261121)
parallel::clusterExport(parallelCluster, "getClosingPrice")
started <- Sys.time()
runs <- parallel::parLapply(parallelCluster, seq_len(TASKS), function(i) {
  list(price = getClosingPrice(365), host = Sys.info()[["nodename"]])
})
elapsed <- as.numeric(difftime(Sys.time(), started, units = "secs"))
prices <- vapply(runs, function(r) r$price, numeric(1))
hosts <- vapply(runs, function(r) r$host, character(1))

cat(sprintf("%d simulated closing prices after 365 days on %d R workers in %.2f s\n",
            length(prices), length(parallelCluster), elapsed))
cat(sprintf("  mean %.2f, median %.2f, 5%% %.2f, 95%% %.2f, P(loss) %.1f%%\n",
            mean(prices), median(prices), quantile(prices, 0.05), quantile(prices, 0.95),
            100 * mean(prices < 100)))
cat("tasks per host:\n")
counts <- table(hosts)
for (h in names(counts)) cat(sprintf("  %-12s %5d\n", h, counts[[h]]))
sshcluster_stop()
"""

LOCAL_BOOTSTRAP_R = """
# No SSH test hosts could be built here: the same computation on a local cluster.
parallelCluster <- parallel::makeCluster(WORKERS)
sshcluster_stop <- function() parallel::stopCluster(parallelCluster)
"""


def _say(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr, flush=True)


def warning_lines(report: CheckReport, names: dict[str, str] | None = None) -> list[str]:
    """The check's warnings, one line per step and detail with the hosts that gave it.

    ``names`` maps a host's label to what to call it (the demo uses hostnames).
    """
    hosts_by_warning: dict[tuple[str, str], list[str]] = {}
    for h in report.succeeded:
        for step in h.warnings:
            key = (step, h.checks[step].detail)
            hosts_by_warning.setdefault(key, []).append((names or {}).get(h.label, h.label))
    ordered = sorted(hosts_by_warning.items(), key=lambda item: STEPS.index(item[0][0]))
    return [f"warning: {step} on {', '.join(hosts)}: {detail}"
            for (step, detail), hosts in ordered]


def run_demo(hosts: int = 4, ncore: int = 2, tasks: int = 1000,
             workdir: Path | None = None,
             say: Callable[[str], None] = _say) -> int:
    """Run the demo; returns the exit status of the R computation (0 on success).

    Its files (the inventory ``hosts.yaml``, the bootstrap ``cluster.R``, the R script,
    the testbed's keys and sshd logs) go to ``workdir``, which is kept, or else to a
    temporary directory that is removed at the end.
    """
    with tempfile.TemporaryDirectory(prefix="sshcluster-demo-") as tmp:
        base = workdir.resolve() if workdir else Path(tmp)
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RenderError(f"cannot make {base}: {e.strerror or e}",
                              hint="--keep names a directory to make, or one to reuse") from None
        try:
            require_root_and_netns()
        except TestbedError as e:
            say(f"cannot build SSH test hosts here ({e.message}); "
                f"running on a local cluster of {hosts * ncore} R workers instead")
            script = base / "demo-local.R"
            script.write_text(LOCAL_BOOTSTRAP_R.replace("WORKERS", f"{hosts * ncore}L")
                              + DEMO_R.replace("TASKS", f"{tasks}L"))
            return _run_r(script)

        started = time.monotonic()
        say(f"building {hosts} SSH test hosts (network namespaces, one sshd each)...")
        with Testbed(hosts, workdir=base / "testbed") as tb:
            say(f"testbed {tb.name} up in {time.monotonic() - started:.1f} s: "
                + ", ".join(f"{h.hostname}={h.address}" for h in tb.hosts))
            inventory_path = base / "hosts.yaml"
            tb.write_inventory(inventory_path, ncore=ncore)
            inventory = load_inventory(inventory_path)
            report = preflight.check(inventory, timeout=30)
            say(f"sshcluster check: {report.summary()}")
            for line in warning_lines(report, {h.address: h.hostname for h in tb.hosts}):
                say(f"  {line}")
            if not report.ok:
                raise SshclusterError("the test hosts failed the preflight check:\n"
                                      + report.to_json())
            cluster_r = base / "cluster.R"
            bootstrap.write_bootstrap(inventory, cluster_r)
            where = ("kept after the demo" if workdir else
                     "temporary, removed at the end; `sshcluster demo --keep DIR` keeps them")
            say(f"wrote {inventory_path} and {cluster_r} "
                f"({len(inventory.hosts)} hosts x {ncore} = {inventory.workers} R workers; "
                f"{where})")
            script = base / "demo.R"
            script.write_text(f"source({r_string(str(cluster_r))})\n"
                              + DEMO_R.replace("TASKS", f"{tasks}L"))
            status = _run_r(script)
            say("tearing the test hosts down")
        if workdir:
            say(f"kept {base}: hosts.yaml, cluster.R, demo.R and testbed/ (keys, sshd logs);"
                " the test hosts they name are gone")
        return status


def _run_r(script: Path) -> int:
    """Run the script, its output straight to the terminal; return R's exit status."""
    try:
        return run_r(script, timeout=10 * 60, capture=False).returncode
    except RTimeout:
        raise SshclusterError("the R computation did not finish within 10 minutes") from None


__all__ = ["DEMO_R", "run_demo", "warning_lines"]
