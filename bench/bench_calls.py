"""What every call to a running cluster costs: ours vs parallelly vs a local cluster.

Run as root on a machine that can build SSH test hosts (see sshcluster.testing)::

    .venv/bin/python bench/bench_calls.py                 # 4 hosts x 2 workers, 3 runs
    .venv/bin/python bench/bench_calls.py --reps 5 --hosts 4 --ncore 2

Side by side in one run, interleaved, each cluster in a fresh Rscript, on the same test
hosts (for ``local*``: on this machine):

* ``tunnel``: the default file ``sshcluster render`` writes (R's traffic through ssh,
  forked workers, each host's workers relayed over one connection); ``direct``: the same
  with ``--tunnel none`` (straight to the primary's port); ``tunnel-norelay`` and
  ``direct-norelay``: the same inventory with ``relay: false`` (one connection per
  worker, as before the relays); ``tunnel-relayonly`` and ``direct-relayonly``: the
  default inventory with ``options(sshcluster.lanes = FALSE)``, every message through
  the hosts' relays (no lane per worker, as where the lanes would not fit in R's
  connections); ``tunnel-stream`` and ``direct-stream``: the default with
  ``options(sshcluster.relay_files = FALSE)``, the hosts' relays handing each big message
  on through their workers' sockets (as where a host has no perl), not keeping it in a
  file the workers read; ``classic``: ``--launch classic`` (R's own makeCluster);
* ``parallelly``: ``parallelly::makeClusterPSOCK()`` on the same workers as it is used by
  default for remote workers, through ssh reverse tunnels (``revtunnel = TRUE``);
  ``parallelly-direct``: the same with ``revtunnel = FALSE``, straight to the primary
  (parallelly 1.34, as Debian ships it, sets TCP no-delay on the workers' end only: the
  primary accepts with the session's ``socketOptions``, R's default without no-delay);
* ``local``: ``parallel::makeCluster(n)`` on this machine, R's defaults;
  ``local-nodelay``: ``parallelly::makeClusterPSOCK(n)`` on this machine (no-delay on
  the workers' end).
* ``mirai``: ``mirai::make_cluster()`` (a parallel cluster of mirai daemons) on the same
  workers, launched with ``mirai::ssh_config()``, the daemons dialling the primary's
  address; ``mirai-tunnel``: the same through ssh tunnels (``tunnel = TRUE``). mirai is
  not a dependency of the project: these methods load it from ``--bench-lib`` (default
  ``~/.cache/sshcluster-bench/Rlib``, on the test hosts too, which share this machine's
  files), built there from the public sources, e.g.
  ``R CMD INSTALL -l ~/.cache/sshcluster-bench/Rlib nanonext`` and then ``mirai``.

A method whose R packages are missing is left out, with a note. (future 1.31 cannot use
mirai's cluster: it subsets it with ``[``, which mirai's cluster answers with a bare list;
its futures row shows n/a.)

Measured in each (median of many calls, then the median over the runs):

* round trips to one worker: a tiny ``clusterCall``, and 16 KB and 1 MB arguments sent
  and returned;
* calls to every worker at once: a tiny ``clusterCall`` (``identity(NULL)``), and a 1 MB
  argument sent to each (``length`` returned);
* 1,000 ``foreach`` tasks with doParallel, and 200 futures with ``future.apply`` (each
  after a smaller warm-up run, the median of three);
* bulk data both ways: a 50 MB and a 200 MB ``clusterExport()`` to every worker, and 8 MB
  returned by every worker at once (``clusterEvalQ``);
* the bytes that left this machine for the test hosts during the 200 MB export (the
  testbed bridge's ``tx_bytes``, read by the R program before and after it), as a
  multiple of 200 MB (``local*``: n/a).

``--ssh-option Ciphers=aes128-gcm@openssh.com`` (any ``-o`` option, repeatable) adds
options to our launches' ssh commands, to compare what the tunnel costs with another
cipher.

And, with no R anywhere, what the network and ssh alone cost: one-byte echoes from a test
host to this machine, straight and through an ssh reverse forward (the floor under the
``direct`` and ``tunnel`` round trips).

The table gives each figure and each method's ratio to parallelly: ``tunnel``,
``tunnel-norelay`` and ``mirai-tunnel`` to ``parallelly`` (all through ssh tunnels), every
other method to ``parallelly-direct`` (no tunnel). Below it, issue 27's goals, each met or
not met (or not measured, when a method it needs was not run). This is a benchmark, not a
test: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from sshcluster.bootstrap import RenderOptions, write_bootstrap
from sshcluster.inventory import load_inventory
from sshcluster.quoting import r_string, r_vector, shell_quote
from sshcluster.ssh.command import ssh_command
from sshcluster.testing import Testbed, run_r

METHODS = ("tunnel", "direct", "tunnel-norelay", "direct-norelay", "tunnel-relayonly",
           "direct-relayonly", "tunnel-stream", "direct-stream", "classic", "parallelly",
           "parallelly-direct", "mirai", "mirai-tunnel", "local", "local-nodelay")
MEASURES = {  # name: (label, unit)
    "tiny": ("tiny clusterCall round trip", "ms"),
    "16k": ("16 KB argument round trip", "ms"),
    "1m": ("1 MB argument round trip", "ms"),
    "call8": ("tiny clusterCall to every worker", "ms"),
    "call8-1m": ("1 MB argument clusterCall to every worker", "ms"),
    "foreach": ("1,000 foreach tasks (doParallel)", "s"),
    "futures": ("200 futures (future.apply)", "s"),
    "export50": ("50 MB clusterExport to every worker", "s"),
    "export": ("200 MB clusterExport to every worker", "s"),
    "bytes": ("bytes out of the primary in the 200 MB export", "x 200 MB"),
    "return": ("8 MB returned by every worker", "s"),
}
#: Rows that get no ratio to parallelly.
_NO_RATIO = {"bytes"}
R_TIMEOUT = 600
#: Where the ``mirai*`` methods find mirai and nanonext (see the module's docstring).
BENCH_LIB = Path.home() / ".cache" / "sshcluster-bench" / "Rlib"
#: The R packages a method needs beyond what every method needs.
_NEEDS = {"parallelly": ("parallelly",), "parallelly-direct": ("parallelly",),
          "local-nodelay": ("parallelly",), "mirai": ("mirai",), "mirai-tunnel": ("mirai",)}
_EVERY = ("foreach", "doParallel", "future", "future.apply")
#: Each method's ratio: the tunnels to parallelly's own reverse tunnels, every other one
#: to parallelly's direct connections.
_LIKE = {"tunnel": "parallelly", "tunnel-norelay": "parallelly", "mirai-tunnel": "parallelly",
         "tunnel-relayonly": "parallelly", "direct-relayonly": "parallelly-direct",
         "tunnel-stream": "parallelly", "direct-stream": "parallelly-direct",
         "direct": "parallelly-direct", "direct-norelay": "parallelly-direct",
         "classic": "parallelly-direct", "mirai": "parallelly-direct",
         "local": "parallelly-direct", "local-nodelay": "parallelly-direct"}
#: Issue 27's goals: (what, measure, our methods, the method compared with (None: the
#: figure itself), the most the ratio may be).
GOALS: tuple[tuple[str, str, tuple[str, ...], str | None, float], ...] = (
    ("tiny call to all workers <= parallelly-direct", "call8", ("tunnel", "direct"),
     "parallelly-direct", 1.0),
    ("1 MB call to all workers <= mirai", "call8-1m", ("tunnel", "direct"), "mirai", 1.0),
    ("50 MB export through the tunnel <= 1.2x direct", "export50", ("tunnel",), "direct", 1.2),
    ("1,000 foreach tasks <= 1.0x parallelly-direct", "foreach", ("tunnel", "direct"),
     "parallelly-direct", 1.0),
    ("tiny round trip <= 1.1x direct-norelay (today's direct)", "tiny", ("direct",),
     "direct-norelay", 1.1),
    ("tiny round trip through the tunnel <= 1.1x tunnel-norelay", "tiny", ("tunnel",),
     "tunnel-norelay", 1.1),
    ("bytes out in the 200 MB export <= 4.2x 200 MB", "bytes", ("tunnel", "direct"), None, 4.2),
    ("200 MB export <= 0.6x a local makeCluster", "export", ("tunnel", "direct"), "local", 0.6),
)

#: The timed part, the same R code for every method: it gets `cl` and `bridge_tx` (the
#: file counting the bytes sent to the test hosts, or NA) and prints RESULT lines.
MEASURE_R = """
# (mirai's `[` on its cluster returns a bare list: its first node put back in one)
node <- if (inherits(cl, "miraiCluster")) structure(list(cl[[1]]), class = class(cl)) else cl[1]
seconds <- function(expr) {
  t0 <- Sys.time()
  force(expr)
  as.numeric(Sys.time() - t0, units = "secs")
}
# Milliseconds per call: the median over batches of the mean of a batch.
time_calls <- function(batches, size, arg, to = node, fun = identity) {
  parallel::clusterCall(to, fun, arg)  # warm
  1000 * median(vapply(seq_len(batches), function(b) seconds(
    for (i in seq_len(size)) parallel::clusterCall(to, fun, arg)) / size, 0))
}
say <- function(key, value) cat(sprintf("RESULT %s %.6f\\n", key, value))
tx <- function() if (is.na(bridge_tx)) NaN else as.numeric(readLines(bridge_tx))
say("tiny", time_calls(15, 400, NULL))
say("16k", time_calls(15, 20, as.raw(seq_len(16384) %% 256)))
say("1m", time_calls(10, 4, as.raw(seq_len(2^20) %% 256)))
say("call8", time_calls(15, 100, NULL, cl))
say("call8-1m", time_calls(10, 4, as.raw(seq_len(2^20) %% 256), cl, length))
# (each after one smaller warm-up run; the median of three)
suppressPackageStartupMessages({library(foreach); library(doParallel)})
doParallel::registerDoParallel(cl)
invisible(foreach(i = 1:100, .combine = c) %dopar% i)
say("foreach", median(replicate(3, seconds(foreach(i = 1:1000, .combine = c) %dopar% i))))
say("futures", tryCatch({
  future::plan(future::cluster, workers = cl)
  invisible(future.apply::future_lapply(1:20, function(i) i))
  median(replicate(3, seconds(future.apply::future_lapply(1:200, function(i) i))))
}, error = function(e) {
  message("futures: ", conditionMessage(e))
  NaN
}, finally = future::plan(future::sequential)))
mid <- as.raw(seq_len(50e6) %% 256)
say("export50", seconds(parallel::clusterExport(cl, "mid")))
invisible(parallel::clusterEvalQ(cl, { rm(mid); NULL }))
rm(mid)
big <- as.raw(seq_len(200e6) %% 256)
before <- tx()
say("export", seconds(parallel::clusterExport(cl, "big")))
say("bytes", (tx() - before) / 200e6)
invisible(parallel::clusterEvalQ(cl, { rm(big); back <- as.raw(seq_len(8e6) %% 256); NULL }))
say("return", median(replicate(3, seconds(parallel::clusterEvalQ(cl, back)))))
"""

#: Starts a mirai cluster on the test hosts and waits until every daemon has dialled in.
MIRAI_START = """
.libPaths(c({lib}, .libPaths()))
cl <- mirai::make_cluster({n}, url = {url}, remote = mirai::ssh_config(
  {remotes}, tunnel = {tunnel}, command = {command}, rscript = {rscript}))
local({{
  t0 <- Sys.time()
  while (mirai::status(cl)$connections < {n}) {{
    if (as.numeric(Sys.time() - t0, units = "secs") > 60) stop("mirai: daemons missing")
    Sys.sleep(0.05)
  }}
}})
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _program(method: str, tb: Testbed, inventory: Path, workdir: Path,
             ssh_options: tuple[str, ...] = (), bench_lib: Path = BENCH_LIB) -> str:
    inv = load_inventory(inventory)
    n = inv.workers
    remote = not method.startswith("local")
    bridge = f"/sys/class/net/{tb.name}-br/statistics/tx_bytes"
    bridge_tx = f"bridge_tx <- {r_string(bridge) if remote else 'NA'}\n"
    ours = method.removesuffix("-norelay").removesuffix("-relayonly").removesuffix("-stream")
    if ours in ("direct", "tunnel", "classic"):
        f = workdir / f"{method}.R"
        write_bootstrap(
            dataclasses.replace(inv, relay=False) if method.endswith("-norelay") else inv,
            f, RenderOptions(launch="classic" if method == "classic" else "fast",
                             tunnel="none" if ours == "direct" else None,
                             extra_ssh_options=ssh_options))
        start, stop = f"source({r_string(str(f))})\ncl <- parallelCluster", "sshcluster_stop()"
        if method.endswith("-relayonly"):
            start = f"options(sshcluster.lanes = FALSE)\n{start}"
        if method.endswith("-stream"):
            start = f"options(sshcluster.relay_files = FALSE)\n{start}"
    elif method in ("parallelly", "parallelly-direct"):
        opts = [shell_quote(w) for w in ssh_command(inv, inv.hosts[0])[1:]]
        workers = [h.host for h in inv.hosts for _ in range(h.ncore or 1)]
        where = ("revtunnel = TRUE" if method == "parallelly" else
                 f"master = {r_string(tb.primary_address)}, revtunnel = FALSE")
        start = (f"cl <- parallelly::makeClusterPSOCK({r_vector(workers)}, {where}, "
                 f"user = {r_string(tb.user)}, rshopts = {r_vector(opts)})")
        stop = "parallel::stopCluster(cl)"
    elif method in ("mirai", "mirai-tunnel"):
        wrapper = workdir / "mirai-ssh"  # (ssh with the options our launch uses)
        words = " ".join(shell_quote(w) for w in ssh_command(inv, inv.hosts[0]))
        wrapper.write_text(f'#!/bin/sh\nexec {words} "$@"\n')
        wrapper.chmod(0o755)
        tunnel = method == "mirai-tunnel"
        url = (f"tcp://127.0.0.1:{_free_port()}" if tunnel else
               f"tcp://{tb.primary_address}:0")
        remotes = [f"ssh://{h.user or tb.user}@{h.host}:{h.ssh_port or 22}"
                   for h in inv.hosts for _ in range(h.ncore or 1)]
        start = MIRAI_START.format(
            lib=r_string(str(bench_lib)), url=r_string(url), remotes=r_vector(remotes),
            tunnel="TRUE" if tunnel else "FALSE", command=r_string(str(wrapper)),
            rscript=r_string(f"R_LIBS={shell_quote(str(bench_lib))} Rscript"), n=n)
        stop = "mirai::stop_cluster(cl)"
    elif method == "local":
        start, stop = f"cl <- parallel::makeCluster({n})", "parallel::stopCluster(cl)"
    else:
        start = f"cl <- parallelly::makeClusterPSOCK({n})"
        stop = "parallel::stopCluster(cl)"
    return f"{start}\n{bridge_tx}{MEASURE_R}\n{stop}\n"


def _missing(methods: Iterable[str], bench_lib: Path) -> dict[str, list[str]]:
    """The methods whose R packages this machine lacks, each with the packages."""
    wanted = sorted({p for m in methods for p in (*_EVERY, *_NEEDS.get(m, ()))})
    code = (f".libPaths(c({r_string(str(bench_lib))}, .libPaths()))\n"
            f"for (p in {r_vector(wanted)}) if (!requireNamespace(p, quietly = TRUE)) "
            "cat(p, '\\n')")
    done = subprocess.run(["Rscript", "-e", code], capture_output=True, text=True, timeout=120)
    absent = set(done.stdout.split())
    out = {m: [p for p in (*_EVERY, *_NEEDS.get(m, ())) if p in absent] for m in methods}
    return {m: ps for m, ps in out.items() if ps}


#: Run on a test host: N one-byte round trips to HOST:PORT; prints milliseconds per trip.
ECHO_CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.settimeout(None)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def trips(n):
    for _ in range(n):
        s.sendall(b"x")
        if s.recv(1) != b"x":
            raise SystemExit("the echo ended")
trips(200)
times = []
for _ in range(15):
    t0 = time.perf_counter()
    trips(400)
    times.append((time.perf_counter() - t0) / 400)
times.sort()
print("%.6f" % (1000 * times[len(times) // 2]))
"""


@contextlib.contextmanager
def _echo_server(address: str) -> Iterator[int]:
    """A one-byte echo on ``address`` (this machine's side of the test network, or
    loopback), one thread per connection, for as long as the block runs; yields its port."""
    srv = socket.socket()
    srv.bind((address, 0))
    srv.listen()

    def serve() -> None:
        while True:
            try:
                con, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(con,), daemon=True).start()

    def echo(con: socket.socket) -> None:
        con.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with con:
            while data := con.recv(1):
                con.sendall(data)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield srv.getsockname()[1]
    finally:
        with contextlib.suppress(OSError):
            srv.shutdown(socket.SHUT_RDWR)  # (wakes the accept)
        srv.close()
        server.join(5)


def _echo_floor(tb: Testbed, inventory: Path) -> dict[str, float]:
    """What the network and ssh alone cost a round trip, no R anywhere: one-byte echoes
    from a test host to this machine, straight to its address (``direct``) and through an
    ssh reverse forward bound to the host's loopback, with the ssh options the launch
    uses (``tunnel``)."""
    inv = load_inventory(inventory)
    host = inv.hosts[0]
    ssh = ssh_command(inv, host)
    ours = ["-T", "-o", "ControlMaster=no", "-o", "ControlPath=none",
            "-o", "ExitOnForwardFailure=yes"]
    client = ["python3", "-c", shell_quote(ECHO_CLIENT)]
    out: dict[str, float] = {}
    with _echo_server(tb.primary_address) as port, _echo_server("127.0.0.1") as local:
        for name in ("direct", "tunnel"):
            for _attempt in range(5):  # (a remote port already taken: another one)
                remote = 20000 + secrets.randbelow(20000)  # in the host's own port space
                cmd = ([*ssh, *ours, f"{host.user}@{host.host}", *client,
                        tb.primary_address, str(port)] if name == "direct" else
                       [*ssh, *ours, "-R", f"127.0.0.1:{remote}:127.0.0.1:{local}",
                        f"{host.user}@{host.host}", *client, "127.0.0.1", str(remote)])
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                                      stdin=subprocess.DEVNULL)
                if done.returncode == 0 or "forwarding failed" not in done.stderr:
                    break
            if done.returncode:
                raise RuntimeError(f"the echo ({name}) failed: {done.stderr}")
            out[name] = float(done.stdout.split()[-1])
    return out


def _run(program: str, workdir: Path) -> dict[str, float]:
    script = workdir / "run.R"
    script.write_text(program)
    out = run_r(script, timeout=R_TIMEOUT)
    found = {ln.split()[1]: float(ln.split()[2]) for ln in out.stdout.splitlines()
             if ln.startswith("RESULT ")}
    if set(found) != set(MEASURES):
        raise RuntimeError(f"the run failed:\n{out.stdout}\n{out.stderr}")
    return found


def _median(values: Iterable[float]) -> float:
    """The median of the figures R could measure (NaN: none)."""
    known = [v for v in values if not math.isnan(v)]
    return statistics.median(known) if known else math.nan


def _cell(value: float, unit: str, base: float | None) -> str:
    if math.isnan(value):
        return "n/a"
    ratio = f" ({value / base:.2f}x)" if base and not math.isnan(base) else ""
    return f"{value:.2f} {unit}{ratio}"


def _goals(medians: dict[str, dict[str, float]]) -> list[str]:
    """Issue 27's goals, one line per goal and method: met, not met or not measured."""
    out = []
    for what, key, ours, like, most in GOALS:
        for m in ours:
            value = medians.get(m, {}).get(key, math.nan)
            base = medians.get(like, {}).get(key, math.nan) if like else 1.0
            if math.isnan(value) or math.isnan(base):
                needs = ", ".join(x for x in (m, like) if x and x not in medians) or "its rows"
                out.append(f"- {what}: {m}: not measured (needs {needs})")
                continue
            ratio = value / base
            verdict = "met" if ratio <= most else "not met"
            against = f" of {like}" if like else ""
            out.append(f"- {what}: {m} {ratio:.2f}x{against}: {verdict}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--ncore", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3, help="runs per method")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--ssh-option", action="append", default=[], metavar="NAME=VALUE",
                        help="an -o option for our launches' ssh (repeatable)")
    parser.add_argument("--bench-lib", type=Path, default=BENCH_LIB,
                        help="the R library with mirai and nanonext (default: %(default)s)")
    args = parser.parse_args(argv)
    missing = _missing(args.methods, args.bench_lib)
    for method, packages in missing.items():
        print(f"left out {method}: R lacks {', '.join(packages)}", file=sys.stderr)
    methods = [m for m in args.methods if m not in missing]
    if not methods:
        print("no method left to run", file=sys.stderr)
        return 1
    results: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    floors: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp, Testbed(args.hosts) as tb:
        workdir = Path(tmp)
        inventory = tb.write_inventory(workdir / "hosts.yaml", ncore=args.ncore)
        for rep in range(args.reps):
            print(f"run {rep + 1}/{args.reps}: echo", file=sys.stderr, flush=True)
            floors.append(_echo_floor(tb, inventory))
            for method in methods:
                print(f"run {rep + 1}/{args.reps}: {method}", file=sys.stderr, flush=True)
                results[method].append(_run(_program(
                    method, tb, inventory, workdir, tuple(args.ssh_option), args.bench_lib),
                    workdir))
                if tb.leftovers("R", wait=30):
                    raise RuntimeError(f"{method} left R workers on the test hosts")
    if args.json:
        args.json.write_text(json.dumps({"calls": results, "echo": floors,
                                         "left_out": missing}, indent=2))
    medians = {m: {k: _median(r[k] for r in runs) for k in MEASURES}
               for m, runs in results.items()}
    floor = {k: statistics.median(f[k] for f in floors) for k in ("direct", "tunnel")}
    print(f"\n{args.hosts} hosts x {args.ncore} workers, median of {args.reps} runs "
          "(each itself the median of many calls for round trips)\n")
    print("| per call | " + " | ".join(methods) + " |")
    print("|---|" + "---:|" * len(methods))
    for key, (label, unit) in MEASURES.items():
        cells = []
        for m in methods:
            like = _LIKE.get(m)
            base = medians[like][key] if like in medians and key not in _NO_RATIO else None
            cells.append(_cell(medians[m][key], unit, base))
        print(f"| {label} | " + " | ".join(cells) + " |")
    local = medians.get("local")
    if local:
        cells = [f"{medians[m]['export'] / local['export']:.2f}x" for m in methods]
        print("| 200 MB export, to a local makeCluster | " + " | ".join(cells) + " |")
    cells = [f"{floor[m]:.2f} ms" if m in floor else "" for m in methods]
    print("| one-byte echo, no R (network and ssh alone) | " + " | ".join(cells) + " |")
    print("\n(x): the ratio to parallelly (the tunnels: to parallelly's default reverse "
          "tunnels; the rest: to parallelly-direct); below 1 is faster. n/a: not measured "
          "(the bytes on this machine's own cluster; futures where future cannot use the "
          "cluster: future 1.31 subsets it with `[`, which on mirai's cluster returns a "
          "bare list).")
    for method, packages in missing.items():
        print(f"Left out {method}: R lacks {', '.join(packages)}.")
    print(f"ssh's reverse forward adds {floor['tunnel'] - floor['direct']:.3f} ms to a round "
          "trip with no R anywhere.")
    if {"tunnel", "direct"} <= set(medians):
        print("Through our tunnel a tiny call takes "
              f"{medians['tunnel']['tiny'] - medians['direct']['tiny']:.3f} ms more than "
              "direct.")
    print("\nGoals (issue 27):")
    print("\n".join(_goals(medians)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
