"""``up --verify``: the cluster works, not only the instances. The inventory ``up`` wrote
must pass the preflight check (``render --check``: R, the packages, the way back through
the reverse tunnel), and one R computation must run on every instance."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from sshcluster.bootstrap import RenderOptions, with_library, write_bootstrap
from sshcluster.check.preflight import check, verified_inventory
from sshcluster.errors import EC2Error
from sshcluster.inventory import load_inventory
from sshcluster.quoting import r_string

#: Seconds the R computation may take, start-up of every worker included.
VERIFY_TIMEOUT = 300.0

# Every worker says where it runs and adds its share of 1..n: each instance must answer.
_SCRIPT = """\
source({cluster})
nodes <- unlist(parallel::clusterEvalQ(parallelCluster, Sys.info()[["nodename"]]))
n <- length(parallelCluster)
total <- sum(parallel::parSapply(parallelCluster, seq_len(n), function(i) i))
cat("instances", length(unique(nodes)), "\\n")
cat("ok", total == n * (n + 1) / 2, "\\n")
sshcluster_stop()
"""


def verify_inventory(inventory_path: Path, instances: int, *, timeout: float = 60.0,
                     r_timeout: float = VERIFY_TIMEOUT) -> None:
    """Check the inventory at ``inventory_path`` as ``render --check`` does, render it,
    and run one computation across it in R; raise EC2Error (``VerifyFailed``) unless
    the check passes and ``instances`` distinct instances answered."""
    inventory = load_inventory(inventory_path)
    report = check(inventory, timeout=timeout)
    if not report.ok:
        raise EC2Error(f"the inventory {inventory_path} does not pass the check:\n"
                       f"{report.summary()}", code="VerifyFailed",
                       hint="see 'sshcluster render --check' on it")
    with tempfile.TemporaryDirectory(prefix="sshcluster-verify-") as tmp:
        cluster_r = Path(tmp) / "cluster.R"
        write_bootstrap(verified_inventory(report, inventory), cluster_r,
                        with_library(inventory, RenderOptions(), report))
        script = Path(tmp) / "verify.R"
        script.write_text(_SCRIPT.format(cluster=r_string(str(cluster_r))), encoding="utf-8")
        try:
            proc = subprocess.run(["Rscript", str(script)], capture_output=True, text=True,
                                  timeout=r_timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise EC2Error(f"the R computation across the cluster did not finish: {e}",
                           code="VerifyFailed") from e
    words = dict(line.split(None, 1) for line in proc.stdout.splitlines() if " " in line)
    answered = words.get("instances", "0").strip()
    if proc.returncode != 0 or words.get("ok", "").strip() != "TRUE" or answered != str(
            instances):
        raise EC2Error(
            f"the R computation across the cluster failed: {answered} of {instances} "
            f"instances answered (Rscript exit status {proc.returncode})\n"
            + "\n".join(f"  | {x}" for x in proc.stderr.strip().splitlines()[-20:]),
            code="VerifyFailed")


__all__ = ["VERIFY_TIMEOUT", "verify_inventory"]
