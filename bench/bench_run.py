"""What ``sshcluster run`` adds to the launch itself, at 8 hosts.

Run as root on a machine that can build SSH test hosts (see sshcluster.testing)::

    .venv/bin/python bench/bench_run.py                 # 8 hosts, 2 workers each, 3 reps
    .venv/bin/python bench/bench_run.py --hosts 4 --reps 5

Side by side, interleaved, with the same short script (one clusterEvalQ):

* ``launch``: ``Rscript -e 'source("cluster.R"); source("script.R"); sshcluster_stop()'``
  with the file ``render --check`` wrote once: what a user does by hand, timed from
  outside as the whole Rscript process;
* ``run``: ``sshcluster run hosts.yaml script.R``, the whole command, timed the same way.

The overhead of ``run`` is its wall time minus the script's own time (from its record);
the goal is at most 1.5 s more than ``launch``'s wall time minus the same script's time.
The table shows the best and the median of ``--reps``, and ``run``'s phases (best run).
This is a benchmark, not a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sshcluster.bootstrap import write_bootstrap
from sshcluster.check.preflight import check, verified_inventory
from sshcluster.inventory import load_inventory
from sshcluster.quoting import r_string
from sshcluster.testing import Testbed

SCRIPT = "invisible(parallel::clusterEvalQ(parallelCluster, Sys.getpid()))\n"
#: Seconds one job may take (a hang guard).
TIMEOUT = 300
LEFTOVER = "R|sh|sleep|bash"


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    t = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    wall = time.monotonic() - t
    if done.returncode != 0:
        sys.exit(f"{argv[:3]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return wall, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--ncore", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Testbed(args.hosts) as tb:
        work = Path(tmp)
        inv = tb.write_inventory(work / "hosts.yaml", ncore=args.ncore)
        script = work / "script.R"
        script.write_text(SCRIPT)
        ready = verified_inventory(check(load_inventory(inv)), load_inventory(inv))
        write_bootstrap(ready, work / "cluster.R")
        env = dict(os.environ, SSHCLUSTER_STATE_DIR=str(work / "state"))
        launch_r = (f"source({r_string(str(work / 'cluster.R'))}); "
                    f"t <- Sys.time(); source({r_string(str(script))}); "
                    "cat(as.numeric(Sys.time() - t, units = 'secs')); sshcluster_stop()")
        launch: list[tuple[float, float]] = []
        runs: list[tuple[float, float, dict[str, float]]] = []
        for _ in range(args.reps):
            wall, out = _timed(["Rscript", "-e", launch_r], env)
            launch.append((wall, float(out.strip())))
            assert tb.leftovers(LEFTOVER, wait=15) == {}, "launch left processes"
            wall, out = _timed([sys.executable, "-m", "sshcluster", "run", "--json",
                                str(inv), str(script)], env)
            phases = json.loads(out)["phases"]
            runs.append((wall, phases["script"], phases))
            assert tb.leftovers(LEFTOVER, wait=15) == {}, "run left processes"
    launch_over = [w - s for w, s in launch]
    run_over = [w - s for w, s, _ in runs]
    print(f"{args.hosts} hosts, {args.ncore} workers each, {args.reps} reps "
          "(seconds: wall time minus the script's own time)")
    print(f"{'':8} {'best':>7} {'median':>7}")
    for name, xs in (("launch", launch_over), ("run", run_over)):
        print(f"{name:8} {min(xs):7.2f} {statistics.median(xs):7.2f}")
    print(f"run - launch: best {min(run_over) - min(launch_over):+.2f} s, median "
          f"{statistics.median(run_over) - statistics.median(launch_over):+.2f} s "
          "(goal: at most +1.5 s)")
    best = min(runs, key=lambda r: r[0] - r[1])[2]
    print("run's phases (best run): " + ", ".join(f"{k} {v:.2f}" for k, v in best.items()))


if __name__ == "__main__":
    main()
