"""How soon a fault in a running cluster is named, and how soon a cut-off host stops.

Run as root on a machine that can build SSH test hosts (see sshcluster.testing)::

    .venv/bin/python bench/bench_faults.py              # 3 runs of each fault and mode
    .venv/bin/python bench/bench_faults.py --reps 5 --modes fork tunnel

For each launch mode (``fork``: direct connections, forked workers; ``fresh``: direct,
``--no-fork``; ``tunnel``: the default, through ssh, forked), each fault is made for real
during a ``parLapply`` whose tasks sleep for 10 minutes, in a fresh R session on 4 test
hosts x 2 workers:

* ``cut``: every packet of one host dropped (its namespace's iptables), as when a
  machine vanishes: seconds until the error names the host; then seconds until
  ``sshcluster_stop()`` returns; then seconds from the cut until that host, still cut
  off, has stopped its own workers (no R process left in its namespace);
* ``kill -9``: one worker killed: seconds until the error names it;
* ``sshd``: the host's sshd session processes killed: seconds until the error names it.

R's own clusters (``makeCluster``, parallelly) wait for the 30-day socket timeout in
each case. This is a benchmark, not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sshcluster.bootstrap import RenderOptions, write_bootstrap
from sshcluster.inventory import load_inventory
from sshcluster.testing import Testbed

MODES = {"fork": RenderOptions(fork=True, tunnel="none"),
         "fresh": RenderOptions(fork=False, tunnel="none"),
         "tunnel": RenderOptions(tunnel="reverse")}
FAULTS = ("cut", "kill -9", "sshd")


def _fault_command(fault: str, tb: Testbed) -> str:
    h = tb.hosts[1]
    if fault == "cut":
        return (f"ip netns exec {h.netns} iptables -w 5 -I INPUT 1 ! -i lo -j DROP; "
                f"ip netns exec {h.netns} iptables -w 5 -I OUTPUT 1 ! -o lo -j DROP")
    if fault == "sshd":
        return (f"for p in $(ip netns pids {h.netns}); do case \"$(tr '\\0' ' ' "
                f"< /proc/$p/cmdline)\" in 'sshd: root@notty'*|'sshd: root [priv]'*) "
                "kill -9 $p;; esac; done")
    return "kill -9 $WORKER"


def _one(tb: Testbed, cluster_r: Path, fault: str) -> dict[str, float]:
    script = cluster_r.parent / "fault.sh"
    script.write_text(_fault_command(fault, tb) + "\n")
    code = f"""
        source({str(cluster_r)!r})
        worker <- unlist(parallel::clusterEvalQ(parallelCluster[3], Sys.getpid()))
        Sys.setenv(WORKER = worker)
        system("sh -c 'sleep 2; sh {script}'", wait = FALSE)
        at <- as.numeric(Sys.time()) + 2
        r <- tryCatch(parallel::parLapply(parallelCluster, 1:8, function(i) Sys.sleep(600)),
                      error = conditionMessage)
        cat(sprintf("FAULT %.3f\\nNOTICED %.3f\\n", at, as.numeric(Sys.time()) - at))
        cat("MESSAGE", gsub("\\n", " ", r), "\\n")
        t0 <- Sys.time(); sshcluster_stop()
        cat(sprintf("STOP %.3f\\n", as.numeric(Sys.time() - t0, units = "secs")))
    """
    out = subprocess.run(["Rscript", "-e", code], capture_output=True, text=True, timeout=900)
    got = {ln.split()[0]: ln.split(maxsplit=1)[1] for ln in out.stdout.splitlines() if ln}
    if "NOTICED" not in got or tb.hosts[1].address not in got.get("MESSAGE", ""):
        raise RuntimeError(f"{fault}: no error naming the host:\n{out.stdout}\n{out.stderr}")
    result = {"noticed": float(got["NOTICED"]), "stop": float(got["STOP"])}
    if fault == "cut":
        h = tb.hosts[1]
        while tb.processes(h, "R"):
            time.sleep(0.2)
        result["self-stop"] = time.time() - float(got["FAULT"])
        tb.reconnect(h)
    if tb.leftovers("R", wait=30):
        raise RuntimeError(f"{fault}: R left on the hosts")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = parser.parse_args(argv)
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, Testbed(4) as tb:
        inv = load_inventory(tb.write_inventory(Path(tmp) / "hosts.yaml", ncore=2))
        files = {}
        for mode in args.modes:
            files[mode] = Path(tmp) / f"{mode}.R"
            write_bootstrap(inv, files[mode], MODES[mode])
        for rep in range(args.reps):
            for mode in args.modes:
                for fault in FAULTS:
                    print(f"run {rep + 1}/{args.reps}: {mode}, {fault}", file=sys.stderr,
                          flush=True)
                    rows.setdefault((mode, fault), []).append(_one(tb, files[mode], fault))
    print(f"\nseconds, median (max) of {args.reps} runs\n")
    print("| mode | fault | error names the host | sshcluster_stop() | cut-off host stops "
          "its workers |")
    print("|---|---|---:|---:|---:|")
    for (mode, fault), runs in rows.items():
        def cell(key: str, runs: list[dict[str, float]] = runs) -> str:
            values = [r[key] for r in runs if key in r]
            return f"{statistics.median(values):.1f} ({max(values):.1f})" if values else ""
        print(f"| {mode} | {fault} | {cell('noticed')} | {cell('stop')} | "
              f"{cell('self-stop')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
