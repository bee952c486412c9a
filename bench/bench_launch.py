"""How long from source() to a ready cluster: ours (fast, classic) vs what R users do today.

Run as root on a machine that can build SSH test hosts (see sshcluster.testing)::

    .venv/bin/python bench/bench_launch.py            # 8/4, 32/8, 64/16 workers/hosts
    .venv/bin/python bench/bench_launch.py --reps 3 --sizes 8/4 32/8

Side by side in one run, interleaved, each launch in a fresh Rscript, timed inside R from
just before the launch call to the moment the cluster object exists:

* ``hand``: the snippet R users copy, ``parallel::makeCluster(type = "PSOCK", master =
  primary, spec = spec, rshcmd = rshcmd)``, with our ssh options so ssh can log in;
* ``parallelly``: ``parallelly::makeClusterPSOCK(workers, master = primary, user = ...,
  rshopts = ..., revtunnel = FALSE)`` on the same workers;
* ``fast``, ``direct``, ``fresh`` and ``classic``: ``source()`` of the file ``sshcluster
  render`` writes; ``fast`` is the default (through ssh reverse tunnels, one R per host,
  its workers forked from it), ``direct`` the same with ``--tunnel none``, ``fresh`` the
  default with ``--no-fork`` (one Rscript per worker);
* ``floor``: ``parallel::makeCluster(n)``, the same number of R workers on this machine
  with no ssh at all.

Between two launches every worker is stopped and the hosts are checked to be empty. The
table shows the best and the median of ``--reps`` runs, and the ratios the goal is stated
in (from the best runs: other load on the machine only ever adds time).
This is a benchmark, not a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
from pathlib import Path

from sshcluster.bootstrap import RenderOptions, write_bootstrap
from sshcluster.inventory import load_inventory
from sshcluster.quoting import r_string, r_vector, shell_join, shell_quote
from sshcluster.ssh.command import ssh_command
from sshcluster.testing import Testbed, run_r

METHODS = ("hand", "parallelly", "fast", "direct", "fresh", "classic", "floor")
#: Seconds one launch may take; R's own launches never give up on a failed worker.
R_TIMEOUT = 300


def _r_program(method: str, tb: Testbed, inventory: Path, workdir: Path, n_hosts: int,
               ncore: int) -> str:
    """The R code that launches (timed), stops, and prints the seconds."""
    inv = load_inventory(inventory)
    hosts = [h.host for h in inv.hosts]
    primary = r_string(tb.primary_address)
    if method in ("fast", "direct", "fresh", "classic"):
        f = workdir / f"{method}-{n_hosts}.R"
        write_bootstrap(inv, f, RenderOptions(launch="classic" if method == "classic" else "fast",
                                              fork=method != "fresh",
                                              tunnel="none" if method == "direct" else None))
        launch = f"source({r_string(str(f))})\ncl <- parallelCluster"
        stop = "sshcluster_stop()"
    elif method == "hand":
        rshcmd = shell_join(ssh_command(inv, inv.hosts[0]))
        machines = ",\n".join(
            f"  list(host = {r_string(h)}, user = {r_string(tb.user)}, ncore = {ncore})"
            for h in hosts)
        launch = (
            f"primary <- {primary}\n"
            f"machineAddresses <- list(\n{machines}\n)\n"
            "spec <- lapply(machineAddresses, function(machine) {\n"
            "  rep(list(list(host = machine$host, user = machine$user)), machine$ncore)\n"
            "})\n"
            "spec <- unlist(spec, recursive = FALSE)\n"
            f"cl <- parallel::makeCluster(type = 'PSOCK', master = primary, spec = spec,\n"
            f"                            rshcmd = {r_string(rshcmd)})"
        )
        stop = "parallel::stopCluster(cl)"
    elif method == "parallelly":
        # The same options as ours. parallelly pastes rshopts into a shell command line
        # unquoted, so each word goes in shell-quoted (else a wrong word makes the
        # launch wait forever: parallelly does not notice that ssh failed).
        opts = [shell_quote(w) for w in ssh_command(inv, inv.hosts[0])[1:]]
        workers = [h for h in hosts for _ in range(ncore)]
        launch = (
            f"cl <- parallelly::makeClusterPSOCK({r_vector(workers)}, master = {primary},\n"
            f"  user = {r_string(tb.user)}, rshopts = {r_vector(opts)}, revtunnel = FALSE)"
        )
        stop = "parallel::stopCluster(cl)"
    else:  # floor
        launch = f"cl <- parallel::makeCluster({n_hosts * ncore})"
        stop = "parallel::stopCluster(cl)"
    return (
        "t0 <- Sys.time()\n"
        f"{launch}\n"
        "elapsed <- as.numeric(difftime(Sys.time(), t0, units = 'secs'))\n"
        "stopifnot(length(cl) == " f"{n_hosts * ncore}" ")\n"
        f"{stop}\n"
        "cat(sprintf('ELAPSED %.3f\\n', elapsed))\n"
    )


def _wait_empty(tb: Testbed, timeout: float = 30.0) -> None:
    if tb.leftovers("R", wait=timeout):
        raise RuntimeError("R workers still running on the test hosts after a launch")


def _run(program: str, workdir: Path) -> float:
    script = workdir / "run.R"
    script.write_text(program)
    out = run_r(script, timeout=R_TIMEOUT)
    for line in out.stdout.splitlines():
        if line.startswith("ELAPSED "):
            return float(line.split()[1])
    raise RuntimeError(f"launch failed:\n{out.stdout}\n{out.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["8/4", "32/8", "64/16"],
                        help="WORKERS/HOSTS pairs (default: 8/4 32/8 64/16)")
    parser.add_argument("--reps", type=int, default=3, help="runs per method and size")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--json", type=Path, help="also write the raw times here")
    parser.add_argument("--table", type=Path, help="only print the table of an earlier --json")
    args = parser.parse_args(argv)
    if args.table:
        print(_table(json.loads(args.table.read_text())))
        return 0
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the test hosts are torn down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sizes = [tuple(int(x) for x in s.split("/")) for s in args.sizes]
    max_hosts = max(h for _, h in sizes)

    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-launch-") as tmp, \
            Testbed(max_hosts) as tb:
        workdir = Path(tmp)
        for workers, n_hosts in sizes:
            ncore = workers // n_hosts
            label = f"{workers}/{n_hosts}"
            inventory = tb.write_inventory(workdir / f"hosts-{n_hosts}.yaml", ncore=ncore)
            # Only the first n_hosts hosts.
            text = inventory.read_text().splitlines()
            keep, seen = [], 0
            for line in text:
                if line.startswith("- host:"):
                    seen += 1
                    if seen > n_hosts:
                        continue
                keep.append(line)
            inventory.write_text("\n".join(keep) + "\n")
            programs = {m: _r_program(m, tb, inventory, workdir, n_hosts, ncore)
                        for m in args.methods}
            results[label] = {m: [] for m in args.methods}
            for rep in range(args.reps):
                for m in args.methods:  # interleaved: load changes hit every method alike
                    _wait_empty(tb)
                    secs = _run(programs[m], workdir)
                    results[label][m].append(secs)
                    print(f"  {label} rep {rep + 1} {m:<10} {secs:7.2f} s", file=sys.stderr,
                          flush=True)
            _wait_empty(tb)

    print(_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _table(results: dict[str, dict[str, list[float]]]) -> str:
    """Markdown table. Ratios use each method's fastest run: on a shared machine, other
    processes only ever add time, so the minimum is the least disturbed measurement."""
    rows = ["| workers/hosts | method | best s | median s | hand / this | this / floor |",
            "|---|---|---:|---:|---:|---:|"]
    for label, by_method in results.items():
        best = {m: min(v) for m, v in by_method.items()}
        for m, times in by_method.items():
            vs_hand = f"{best['hand'] / best[m]:.1f}x" if "hand" in best else "-"
            vs_floor = f"{best[m] / best['floor']:.2f}" if "floor" in best else "-"
            rows.append(f"| {label} | {m} | {best[m]:.2f} | {statistics.median(times):.2f} "
                        f"| {vs_hand} | {vs_floor} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
