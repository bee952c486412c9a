"""How long from source() to a ready cluster: ours (fast, classic) vs what R users do today.

Run as root on a machine that can build SSH test hosts (see sshcluster.testing)::

    .venv/bin/python bench/bench_launch.py            # 8/4, 32/8, 64/16 workers/hosts
    .venv/bin/python bench/bench_launch.py --reps 3 --sizes 8/4 32/8
    .venv/bin/python bench/bench_launch.py --scale 25x20     # 500 workers, issue 27's goal

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

``--scale 25x20`` runs issue 27's scale goal instead: 25 hosts x 20 forked workers (500)
from one primary behind the hosts' relays (the default file). ``--reps`` launches, each
in a fresh Rscript (the last one goes on: ``parLapply`` over 1:1000 must reach every
worker; the resident and proportional set size (``/proc/PID/smaps_rollup``) of every
worker, every host's relay (the workers' parent R) and the primary R are summed while all
are up; one host's relay is killed and the next ``parLapply`` must name that host and no
other; stop must leave no R on any host). The same inventory with ``relay: false`` is a
second row: R 4.2's 128 connections cannot hold 500 workers, so it must be refused
before anything starts. Goal: launch in at most 15 s.

This is a benchmark, not a test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from sshcluster.bootstrap import RenderOptions, write_bootstrap
from sshcluster.inventory import load_inventory
from sshcluster.quoting import r_string, r_vector, shell_join, shell_quote
from sshcluster.ssh.command import ssh_command
from sshcluster.testing import Testbed, run_r
from sshcluster.testing.cluster import interactive_r, write_cluster

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
    parser.add_argument("--scale", metavar="HOSTSxNCORE",
                        help="issue 27's scale goal instead, e.g. 25x20 (500 workers)")
    args = parser.parse_args(argv)
    if args.table:
        data = json.loads(args.table.read_text())
        print(_scale_table(data) if "scale" in data else _table(data))
        return 0
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the test hosts are torn down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.scale:
        n_hosts, ncore = (int(x) for x in args.scale.lower().split("x"))
        scale = _scale(n_hosts, ncore, args.reps)
        print(_scale_table(scale))
        if args.json:
            args.json.write_text(json.dumps(scale, indent=2))
        return 0
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



# --------------------------------------------------------------------------- --scale

#: Issue 27's goal: 500 workers on 25 hosts launch in at most this many seconds.
SCALE_GOAL_SECONDS = 15.0
#: The host (0-based) whose relay the scale run kills.
LOST = 12


def _scale_program(f: Path, workers: int, full: bool) -> str:
    """One launch, timed; with ``full``, the checks and the lost host (driven from
    Python through stdin: 'ready' once the memory can be measured)."""
    head = (
        "t0 <- Sys.time()\n"
        f"source({r_string(str(f))})\n"
        "cat(sprintf('ELAPSED %.3f\\n', as.numeric(difftime(Sys.time(), t0, units = 'secs'))))\n"
        f"stopifnot(length(parallelCluster) == {workers})\n"
    )
    if not full:
        return head + "sshcluster_stop()\n"
    return head + (
        "pids <- unlist(parallel::parLapply(parallelCluster, 1:1000, function(i) Sys.getpid()))\n"
        "cat('USED', length(unique(pids)), '\\n')\n"
        "cat('PRIMARY', Sys.getpid(), '\\n')\n"
        "who <- parallel::clusterEvalQ(parallelCluster, c(Sys.getpid(), as.integer(\n"
        "  strsplit(readLines('/proc/self/stat'), ' ')[[1]][4])))\n"
        "for (w in who) cat('WORKER', w, '\\n')\n"
        "cat('READY\\n')\n"
        "invisible(readLines(file('stdin'), n = 1))\n"
        f"r <- tryCatch(parallel::parLapply(parallelCluster, 1:{workers}, function(i) i),\n"
        "              error = function(e) conditionMessage(e))\n"
        "cat('LOST', if (is.character(r)) gsub('\\n', ' ', r) else 'no error', '\\n')\n"
        "sshcluster_stop()\n"
        "cat('END ok\\n')\n"
    )


def _rollup(pid: int) -> tuple[int, int]:
    """Rss and Pss of ``pid`` in KiB, from /proc/PID/smaps_rollup ((0, 0) if gone)."""
    got = {"Rss:": 0, "Pss:": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, *rest = line.split()
            if key in got:
                got[key] = int(rest[0])
    except OSError:
        pass
    return got["Rss:"], got["Pss:"]


def _memory(workers: list[int], relays: list[int], primary: int) -> dict[str, float]:
    """MiB of Rss and Pss summed over each group."""
    out: dict[str, float] = {}
    for name, pids in (("workers", workers), ("relays", relays), ("primary", [primary])):
        rss, pss = (sum(v) for v in zip(*(_rollup(p) for p in pids), strict=True))
        out[f"{name}_rss"], out[f"{name}_pss"] = rss / 1024, pss / 1024
    return out


def _named(address: str, text: str) -> bool:
    """Whether ``text`` names ``address`` (10.0.0.2 is not named by 10.0.0.21)."""
    return re.search(rf"(?<![\d.]){re.escape(address)}(?![\d])", text) is not None


def _full_run(tb: Testbed, f: Path, workdir: Path, workers: int) -> dict[str, object]:
    """The last launch: every worker used, memory, a lost host named, nothing left."""
    res: dict[str, object] = {}
    with interactive_r(_scale_program(f, workers, True), workdir, "scale.R") as proc:
        assert proc.stdout is not None and proc.stdin is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line)
            if line.strip() == "READY":
                break
        else:
            raise RuntimeError(f"the scale run failed:\n{''.join(lines)}\n"
                               f"{proc.stderr.read() if proc.stderr else ''}")
        words = [ln.split() for ln in lines]
        res["launch"] = next(float(w[1]) for w in words if w[:1] == ["ELAPSED"])
        res["used"] = next(int(w[1]) for w in words if w[:1] == ["USED"])
        primary = next(int(w[1]) for w in words if w[:1] == ["PRIMARY"])
        pairs = [(int(w[1]), int(w[2])) for w in words if w[:1] == ["WORKER"]]
        relays = sorted({pp for _, pp in pairs})
        res["relays"] = len(relays)
        res["memory"] = _memory([p for p, _ in pairs], relays, primary)
        res["r_on_hosts"] = sum(len(tb.processes(h)) for h in tb.hosts)
        lost = tb.hosts[min(LOST, len(tb.hosts) - 1)]
        on_lost = set(tb.processes(lost))
        victim = next(p for p in relays if p in on_lost)
        os.kill(victim, signal.SIGKILL)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=R_TIMEOUT)
    message = next((ln.split(" ", 1)[1] for ln in out.splitlines() if ln.startswith("LOST ")),
                   "")
    others = [h.address for h in tb.hosts if h is not lost and _named(h.address, message)]
    res["lost_host"] = lost.address
    res["lost_message"] = message.strip()
    res["lost_named"] = _named(lost.address, message) and not others
    res["stopped"] = "END ok" in out
    if not res["stopped"]:
        res["stderr"] = err[-2000:]
    res["leftovers"] = tb.leftovers("R", wait=30)
    return res


def _refused(tb: Testbed, workdir: Path, ncore: int) -> dict[str, object]:
    """The same inventory with relay: false: refused before anything starts?"""
    f = write_cluster(tb, workdir, "norelay.R", ncore=ncore, relay=False)
    script = workdir / "norelay-run.R"
    script.write_text(
        "t0 <- Sys.time()\n"
        f"r <- tryCatch({{ source({r_string(str(f))}); 'started' }},\n"
        "              error = function(e) conditionMessage(e))\n"
        "cat(sprintf('ELAPSED %.3f\\n', as.numeric(difftime(Sys.time(), t0, units = 'secs'))))\n"
        "cat('MESSAGE', gsub('\\n', ' ', r), '\\n')\n"
        "if (exists('sshcluster_stop')) sshcluster_stop()\n")
    out = run_r(script, timeout=R_TIMEOUT, env={"TMPDIR": str(workdir)})
    lines = dict(ln.split(" ", 1) for ln in out.stdout.splitlines() if " " in ln)
    message = lines.get("MESSAGE", out.stderr).strip()
    return {"seconds": float(lines.get("ELAPSED", "nan")), "message": message,
            "refused": "Nothing was started" in message,
            "leftovers": tb.leftovers("R")}


def _loadavg() -> list[str]:
    with open("/proc/loadavg") as load:
        return load.read().split()[:3]


def _scale(n_hosts: int, ncore: int, reps: int) -> dict[str, object]:
    workers = n_hosts * ncore
    before = _loadavg()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, Testbed(n_hosts) as tb:
        workdir = Path(tmp)
        f = write_cluster(tb, workdir, "relay.R", ncore=ncore)
        times: list[float] = []
        for rep in range(max(0, reps - 1)):
            _wait_empty(tb)
            script = workdir / "run.R"
            script.write_text(_scale_program(f, workers, False))
            out = run_r(script, timeout=R_TIMEOUT, env={"TMPDIR": str(workdir)})
            secs = next((float(ln.split()[1]) for ln in out.stdout.splitlines()
                         if ln.startswith("ELAPSED ")), None)
            if secs is None or out.returncode != 0:
                raise RuntimeError(f"launch failed:\n{out.stdout}\n{out.stderr}")
            times.append(secs)
            print(f"  {workers}/{n_hosts} rep {rep + 1} relay {secs:7.2f} s", file=sys.stderr,
                  flush=True)
        _wait_empty(tb)
        full = _full_run(tb, f, workdir, workers)
        times.append(float(full["launch"]))  # type: ignore[arg-type]
        print(f"  {workers}/{n_hosts} rep {reps} relay {times[-1]:7.2f} s (full run)",
              file=sys.stderr, flush=True)
        _wait_empty(tb)
        refused = _refused(tb, workdir, ncore)
    return {"scale": {"hosts": n_hosts, "ncore": ncore, "workers": workers}, "times": times,
            "full": full, "refused": refused, "loadavg": {"before": before, "after": _loadavg()}}


def _scale_table(r: dict[str, Any]) -> str:
    n = r["scale"]["workers"]
    t, full, ref, mem = r["times"], r["full"], r["refused"], r["full"]["memory"]
    wr, wp = mem["workers_rss"] + mem["relays_rss"], mem["workers_pss"] + mem["relays_pss"]
    label = f"{n}/{r['scale']['hosts']}"
    left = "none" if not full["leftovers"] else full["leftovers"]
    met = "met" if min(t) <= SCALE_GOAL_SECONDS else "not met"
    rows = [
        "| workers/hosts | relay | launch s min / median (n) | workers used | RSS MiB "
        "(per worker) | PSS MiB (per worker) | lost host named | leftovers | <= 15 s |",
        "|---|---|---:|---:|---:|---:|---|---|---|",
        f"| {label} | yes ({full['relays']} relays) | {min(t):.2f} / "
        f"{statistics.median(t):.2f} ({len(t)}) | {full['used']} of {n} | {wr:,.0f} "
        f"({wr / n:.1f}) | {wp:,.0f} ({wp / n:.2f}) | "
        f"{'yes' if full['lost_named'] else 'no'} | {left} | {met} |",
        f"| {label} | `relay: false` | refused in {ref['seconds']:.2f} s, "
        f"{'nothing started' if ref['refused'] else 'NOT refused'} | - | - | - | - | "
        f"{'none' if not ref['leftovers'] else ref['leftovers']} | - |",
        "",
        f"Memory while all {n} were up (MiB, Rss / Pss): workers {mem['workers_rss']:,.0f} / "
        f"{mem['workers_pss']:,.0f}, relays {mem['relays_rss']:,.0f} / {mem['relays_pss']:,.0f}, "
        f"primary R {mem['primary_rss']:,.0f} / {mem['primary_pss']:,.0f}; "
        f"R processes on the hosts: {full['r_on_hosts']}.",
        f"Lost host {full['lost_host']}: {full['lost_message']}",
        f"relay: false: {ref['message']}",
        f"Load average (1, 5, 15 min) before: {' '.join(r['loadavg']['before'])}, "
        f"at the end: {' '.join(r['loadavg']['after'])}",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
