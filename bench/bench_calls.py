"""What every call to a running cluster costs: ours vs parallelly vs a local cluster.

Run as root on a machine that can build SSH test hosts (see sshcluster.testing)::

    .venv/bin/python bench/bench_calls.py                 # 4 hosts x 2 workers, 3 runs
    .venv/bin/python bench/bench_calls.py --reps 5 --hosts 4 --ncore 2

Side by side in one run, interleaved, each cluster in a fresh Rscript, on the same test
hosts (for ``local*``: on this machine):

* ``tunnel``: the default file ``sshcluster render`` writes (R's traffic through ssh,
  forked workers); ``direct``: the same with ``--tunnel none`` (straight to the
  primary's port); ``classic``: ``--launch classic`` (R's own makeCluster);
* ``parallelly``: ``parallelly::makeClusterPSOCK()`` on the same workers (the workers set
  TCP no-delay; parallelly 1.34, as Debian ships it, accepts them on the primary with
  the session's ``socketOptions``, R's default without no-delay);
* ``local``: ``parallel::makeCluster(n)`` on this machine, R's defaults;
  ``local-nodelay``: ``parallelly::makeClusterPSOCK(n)`` on this machine (no-delay on
  the workers' end).

Measured in each (median of many calls, then the median over the runs):

* round trips to one worker: a tiny ``clusterCall``, and 16 KB and 1 MB arguments sent
  and returned;
* 1,000 ``foreach`` tasks with doParallel, and 200 futures with ``future.apply``;
* a 200 MB ``clusterExport()`` to every worker.

The table gives milliseconds (seconds for the last three rows) and each method's ratio to
parallelly. This is a benchmark, not a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from sshcluster.bootstrap import RenderOptions, ssh_command, write_bootstrap
from sshcluster.inventory import load_inventory
from sshcluster.quoting import r_string, r_vector, shell_quote
from sshcluster.testing import Testbed, run_r

METHODS = ("direct", "tunnel", "classic", "parallelly", "local", "local-nodelay")
MEASURES = {  # name: (label, unit)
    "tiny": ("tiny clusterCall round trip", "ms"),
    "16k": ("16 KB argument round trip", "ms"),
    "1m": ("1 MB argument round trip", "ms"),
    "foreach": ("1,000 foreach tasks (doParallel)", "s"),
    "futures": ("200 futures (future.apply)", "s"),
    "export": ("200 MB clusterExport to every worker", "s"),
}
R_TIMEOUT = 600

#: The timed part, the same R code for every method: it gets `cl` and prints RESULT lines.
MEASURE_R = """
node <- cl[1]
seconds <- function(expr) {
  t0 <- Sys.time()
  force(expr)
  as.numeric(Sys.time() - t0, units = "secs")
}
# Milliseconds per call: the median over batches of the mean of a batch.
time_calls <- function(batches, size, arg) {
  parallel::clusterCall(node, identity, arg)  # warm
  1000 * median(vapply(seq_len(batches), function(b) seconds(
    for (i in seq_len(size)) parallel::clusterCall(node, identity, arg)) / size, 0))
}
say <- function(key, value) cat(sprintf("RESULT %s %.6f\\n", key, value))
say("tiny", time_calls(15, 400, NULL))
say("16k", time_calls(15, 20, as.raw(seq_len(16384) %% 256)))
say("1m", time_calls(10, 4, as.raw(seq_len(2^20) %% 256)))
suppressPackageStartupMessages({library(foreach); library(doParallel)})
doParallel::registerDoParallel(cl)
say("foreach", seconds(foreach(i = 1:1000, .combine = c) %dopar% i))
future::plan(future::cluster, workers = cl)
say("futures", seconds(future.apply::future_lapply(1:200, function(i) i)))
future::plan(future::sequential)
big <- as.raw(seq_len(200e6) %% 256)
say("export", seconds(parallel::clusterExport(cl, "big")))
"""


def _program(method: str, tb: Testbed, inventory: Path, workdir: Path) -> str:
    inv = load_inventory(inventory)
    n = inv.workers
    if method in ("direct", "tunnel", "classic"):
        f = workdir / f"{method}.R"
        write_bootstrap(inv, f, RenderOptions(
            launch="classic" if method == "classic" else "fast",
            tunnel="none" if method == "direct" else None))
        start, stop = f"source({r_string(str(f))})\ncl <- parallelCluster", "sshcluster_stop()"
    elif method == "parallelly":
        opts = [shell_quote(w) for w in ssh_command(inv, inv.hosts[0])[1:]]
        workers = [h.host for h in inv.hosts for _ in range(h.ncore or 1)]
        start = (f"cl <- parallelly::makeClusterPSOCK({r_vector(workers)}, "
                 f"master = {r_string(tb.primary_address)}, user = {r_string(tb.user)}, "
                 f"rshopts = {r_vector(opts)}, revtunnel = FALSE)")
        stop = "parallel::stopCluster(cl)"
    elif method == "local":
        start, stop = f"cl <- parallel::makeCluster({n})", "parallel::stopCluster(cl)"
    else:
        start = f"cl <- parallelly::makeClusterPSOCK({n})"
        stop = "parallel::stopCluster(cl)"
    return f"{start}\n{MEASURE_R}\n{stop}\n"


def _run(program: str, workdir: Path) -> dict[str, float]:
    script = workdir / "run.R"
    script.write_text(program)
    out = run_r(script, timeout=R_TIMEOUT)
    found = {ln.split()[1]: float(ln.split()[2]) for ln in out.stdout.splitlines()
             if ln.startswith("RESULT ")}
    if set(found) != set(MEASURES):
        raise RuntimeError(f"the run failed:\n{out.stdout}\n{out.stderr}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--ncore", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3, help="runs per method")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {m: [] for m in args.methods}
    with tempfile.TemporaryDirectory() as tmp, Testbed(args.hosts) as tb:
        workdir = Path(tmp)
        inventory = tb.write_inventory(workdir / "hosts.yaml", ncore=args.ncore)
        for rep in range(args.reps):
            for method in args.methods:
                print(f"run {rep + 1}/{args.reps}: {method}", file=sys.stderr, flush=True)
                results[method].append(_run(_program(method, tb, inventory, workdir),
                                            workdir))
                if tb.leftovers("R", wait=30):
                    raise RuntimeError(f"{method} left R workers on the test hosts")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    medians = {m: {k: statistics.median(r[k] for r in runs) for k in MEASURES}
               for m, runs in results.items()}
    base = medians.get("parallelly")
    print(f"\n{args.hosts} hosts x {args.ncore} workers, median of {args.reps} runs "
          "(each itself the median of many calls for round trips)\n")
    print("| per call | " + " | ".join(args.methods) + " |")
    print("|---|" + "---:|" * len(args.methods))
    for key, (label, unit) in MEASURES.items():
        cells = []
        for m in args.methods:
            v = medians[m][key]
            ratio = f" ({v / base[key]:.2f}x)" if base and m != "parallelly" else ""
            cells.append(f"{v:.2f} {unit}{ratio}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\n(x): the ratio to parallelly; below 1 is faster.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
