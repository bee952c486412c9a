"""What every call to a running cluster costs: ours vs parallelly vs a local cluster.

Run as root on a machine that can build SSH test hosts (see sshcluster.testing)::

    .venv/bin/python bench/bench_calls.py                 # 4 hosts x 2 workers, 3 runs
    .venv/bin/python bench/bench_calls.py --reps 5 --hosts 4 --ncore 2

Side by side in one run, interleaved, each cluster in a fresh Rscript, on the same test
hosts (for ``local*``: on this machine):

* ``tunnel``: the default file ``sshcluster render`` writes (R's traffic through ssh,
  forked workers); ``direct``: the same with ``--tunnel none`` (straight to the
  primary's port); ``classic``: ``--launch classic`` (R's own makeCluster);
* ``parallelly``: ``parallelly::makeClusterPSOCK()`` on the same workers as it is used by
  default for remote workers, through ssh reverse tunnels (``revtunnel = TRUE``);
  ``parallelly-direct``: the same with ``revtunnel = FALSE``, straight to the primary
  (parallelly 1.34, as Debian ships it, sets TCP no-delay on the workers' end only: the
  primary accepts with the session's ``socketOptions``, R's default without no-delay);
* ``local``: ``parallel::makeCluster(n)`` on this machine, R's defaults;
  ``local-nodelay``: ``parallelly::makeClusterPSOCK(n)`` on this machine (no-delay on
  the workers' end).

Measured in each (median of many calls, then the median over the runs):

* round trips to one worker: a tiny ``clusterCall``, and 16 KB and 1 MB arguments sent
  and returned;
* 1,000 ``foreach`` tasks with doParallel, and 200 futures with ``future.apply`` (each
  after a smaller warm-up run, the median of three);
* bulk data both ways: a 200 MB ``clusterExport()`` to every worker, and 8 MB
  returned by every worker at once (``clusterEvalQ``).

``--ssh-option Ciphers=aes128-gcm@openssh.com`` (any ``-o`` option, repeatable) adds
options to our launches' ssh commands, to compare what the tunnel costs with another
cipher.

And, with no R anywhere, what the network and ssh alone cost: one-byte echoes from a test
host to this machine, straight and through an ssh reverse forward (the floor under the
``direct`` and ``tunnel`` round trips).

The table gives milliseconds (seconds for the last three rows) and each method's ratio to
parallelly: ``tunnel`` to ``parallelly`` (both through ssh reverse tunnels), every other
method to ``parallelly-direct`` (no tunnel). This is a benchmark, not a test: the numbers depend
on the machine and its load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from sshcluster.bootstrap import RenderOptions, write_bootstrap
from sshcluster.inventory import load_inventory
from sshcluster.quoting import r_string, r_vector, shell_quote
from sshcluster.ssh.command import ssh_command
from sshcluster.testing import Testbed, run_r

METHODS = ("tunnel", "direct", "classic", "parallelly", "parallelly-direct", "local",
           "local-nodelay")
MEASURES = {  # name: (label, unit)
    "tiny": ("tiny clusterCall round trip", "ms"),
    "16k": ("16 KB argument round trip", "ms"),
    "1m": ("1 MB argument round trip", "ms"),
    "foreach": ("1,000 foreach tasks (doParallel)", "s"),
    "futures": ("200 futures (future.apply)", "s"),
    "export": ("200 MB clusterExport to every worker", "s"),
    "return": ("8 MB returned by every worker", "s"),
}
R_TIMEOUT = 600
#: Each method's ratio: ``tunnel`` to parallelly's own reverse tunnels, every other one
#: to parallelly's direct connections.
_LIKE = {"tunnel": "parallelly", "direct": "parallelly-direct", "classic": "parallelly-direct",
         "local": "parallelly-direct", "local-nodelay": "parallelly-direct"}

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
# (each after one smaller warm-up run; the median of three)
suppressPackageStartupMessages({library(foreach); library(doParallel)})
doParallel::registerDoParallel(cl)
invisible(foreach(i = 1:100, .combine = c) %dopar% i)
say("foreach", median(replicate(3, seconds(foreach(i = 1:1000, .combine = c) %dopar% i))))
future::plan(future::cluster, workers = cl)
invisible(future.apply::future_lapply(1:20, function(i) i))
say("futures", median(replicate(3, seconds(future.apply::future_lapply(1:200, function(i) i)))))
future::plan(future::sequential)
big <- as.raw(seq_len(200e6) %% 256)
say("export", seconds(parallel::clusterExport(cl, "big")))
invisible(parallel::clusterEvalQ(cl, { rm(big); back <- as.raw(seq_len(8e6) %% 256); NULL }))
say("return", median(replicate(3, seconds(parallel::clusterEvalQ(cl, back)))))
"""


def _program(method: str, tb: Testbed, inventory: Path, workdir: Path,
             ssh_options: tuple[str, ...] = ()) -> str:
    inv = load_inventory(inventory)
    n = inv.workers
    if method in ("direct", "tunnel", "classic"):
        f = workdir / f"{method}.R"
        write_bootstrap(inv, f, RenderOptions(
            launch="classic" if method == "classic" else "fast",
            tunnel="none" if method == "direct" else None, extra_ssh_options=ssh_options))
        start, stop = f"source({r_string(str(f))})\ncl <- parallelCluster", "sshcluster_stop()"
    elif method in ("parallelly", "parallelly-direct"):
        opts = [shell_quote(w) for w in ssh_command(inv, inv.hosts[0])[1:]]
        workers = [h.host for h in inv.hosts for _ in range(h.ncore or 1)]
        where = ("revtunnel = TRUE" if method == "parallelly" else
                 f"master = {r_string(tb.primary_address)}, revtunnel = FALSE")
        start = (f"cl <- parallelly::makeClusterPSOCK({r_vector(workers)}, {where}, "
                 f"user = {r_string(tb.user)}, rshopts = {r_vector(opts)})")
        stop = "parallel::stopCluster(cl)"
    elif method == "local":
        start, stop = f"cl <- parallel::makeCluster({n})", "parallel::stopCluster(cl)"
    else:
        start = f"cl <- parallelly::makeClusterPSOCK({n})"
        stop = "parallel::stopCluster(cl)"
    return f"{start}\n{MEASURE_R}\n{stop}\n"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--ncore", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3, help="runs per method")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--ssh-option", action="append", default=[], metavar="NAME=VALUE",
                        help="an -o option for our launches' ssh (repeatable)")
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {m: [] for m in args.methods}
    floors: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp, Testbed(args.hosts) as tb:
        workdir = Path(tmp)
        inventory = tb.write_inventory(workdir / "hosts.yaml", ncore=args.ncore)
        for rep in range(args.reps):
            print(f"run {rep + 1}/{args.reps}: echo", file=sys.stderr, flush=True)
            floors.append(_echo_floor(tb, inventory))
            for method in args.methods:
                print(f"run {rep + 1}/{args.reps}: {method}", file=sys.stderr, flush=True)
                results[method].append(_run(_program(method, tb, inventory, workdir,
                                                     tuple(args.ssh_option)), workdir))
                if tb.leftovers("R", wait=30):
                    raise RuntimeError(f"{method} left R workers on the test hosts")
    if args.json:
        args.json.write_text(json.dumps({"calls": results, "echo": floors}, indent=2))
    medians = {m: {k: statistics.median(r[k] for r in runs) for k in MEASURES}
               for m, runs in results.items()}
    floor = {k: statistics.median(f[k] for f in floors) for k in ("direct", "tunnel")}
    print(f"\n{args.hosts} hosts x {args.ncore} workers, median of {args.reps} runs "
          "(each itself the median of many calls for round trips)\n")
    print("| per call | " + " | ".join(args.methods) + " |")
    print("|---|" + "---:|" * len(args.methods))
    for key, (label, unit) in MEASURES.items():
        cells = []
        for m in args.methods:
            v = medians[m][key]
            like = _LIKE.get(m)
            base = medians.get(like) if like else None
            ratio = f" ({v / base[key]:.2f}x)" if base else ""
            cells.append(f"{v:.2f} {unit}{ratio}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    cells = [f"{floor[m]:.2f} ms" if m in floor else "" for m in args.methods]
    print("| one-byte echo, no R (network and ssh alone) | " + " | ".join(cells) + " |")
    print("\n(x): the ratio to parallelly (tunnel: to parallelly's default reverse tunnels; "
          "the rest: to parallelly-direct); below 1 is faster.")
    print(f"ssh's reverse forward adds {floor['tunnel'] - floor['direct']:.3f} ms to a round "
          "trip with no R anywhere.")
    if {"tunnel", "direct"} <= set(medians):
        print("Through our tunnel a tiny call takes "
              f"{medians['tunnel']['tiny'] - medians['direct']['tiny']:.3f} ms more than "
              "direct.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
