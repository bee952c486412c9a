"""The launch of workers in containers against the same launch without them, side by side.

Run as root on a machine that can build SSH test hosts and has podman (scripts/setup.sh)::

    .venv/bin/python bench/bench_containers.py              # 32 workers on 8 hosts, 3 reps
    .venv/bin/python bench/bench_containers.py --workers 16 --hosts 4 --reps 5

One testbed of ``--hosts`` hosts, each with a podman store of its own holding an R image
made offline from this machine's R (:mod:`sshcluster.testing.containers`). Two files are
rendered from one inventory, with and without ``container:`` (``pull: never``), and
launched in turn, interleaved, each in a fresh Rscript, timed inside R from just before
``source()`` to the moment ``parallelCluster`` exists; then the cluster is stopped and
the hosts are checked to hold no container and no R. Printed: the best and the median of
each, the difference and the ratio (from the best runs: other load only adds time).
Goal: containers add at most 1 s. This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from sshcluster.bootstrap import write_bootstrap
from sshcluster.inventory import load_inventory
from sshcluster.quoting import r_string
from sshcluster.testing import Testbed, run_r
from sshcluster.testing.containers import (
    ENGINE_DIRS,
    MARKER_FILE,
    containers_left,
    import_image,
    load_image,
    r_rootfs,
    save_image,
)

R_TIMEOUT = 300
IMAGE = "localhost/sshcluster-bench:1"


def _program(f: Path, workers: int) -> str:
    return (
        "t0 <- Sys.time()\n"
        f"source({r_string(str(f))})\n"
        "elapsed <- as.numeric(difftime(Sys.time(), t0, units = 'secs'))\n"
        f"stopifnot(length(parallelCluster) == {workers})\n"
        "inside <- unlist(parallel::clusterEvalQ(parallelCluster, file.exists("
        f"{r_string(MARKER_FILE)})))\n"
        "sshcluster_stop()\n"
        "cat(sprintf('ELAPSED %.3f INSIDE %d\\n', elapsed, sum(inside)))\n"
    )


def _run(script: Path) -> tuple[float, int]:
    out = run_r(script, timeout=R_TIMEOUT)
    for line in out.stdout.splitlines():
        if line.startswith("ELAPSED "):
            words = line.split()
            return float(words[1]), int(words[3])
    raise RuntimeError(f"launch failed:\n{out.stdout}\n{out.stderr}")


def _wait_empty(tb: Testbed, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (left := containers_left(tb)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if left or tb.leftovers("R", wait=timeout):
        raise RuntimeError(f"left on the test hosts after a launch: {left}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ncore = args.workers // args.hosts
    times: dict[str, list[float]] = {"plain": [], "container": []}
    with tempfile.TemporaryDirectory(prefix="bench-containers-") as tmp:
        d = Path(tmp)
        t = time.monotonic()
        import_image(r_rootfs(d / "rootfs", marker="bench"), IMAGE)
        archive = save_image(IMAGE, d / "image.tar")
        print(f"image built in {time.monotonic() - t:.1f} s", file=sys.stderr)
        try:
            with Testbed(args.hosts, private_dirs=ENGINE_DIRS) as tb:
                t = time.monotonic()
                load_image(tb, tb.hosts, archive)
                print(f"loaded on {args.hosts} hosts in {time.monotonic() - t:.1f} s",
                      file=sys.stderr)
                plain = tb.write_inventory(d / "plain.yaml", ncore=ncore)
                doc = yaml.safe_load(plain.read_text())
                doc["container"] = {"image": IMAGE, "engine": "podman", "pull": "never"}
                boxed = d / "container.yaml"
                boxed.write_text(yaml.safe_dump(doc, sort_keys=False))
                scripts = {}
                for name, inv in (("plain", plain), ("container", boxed)):
                    f = d / f"{name}.R"
                    write_bootstrap(load_inventory(inv), f)
                    scripts[name] = d / f"run-{name}.R"
                    scripts[name].write_text(_program(f, args.workers))
                os.environ["TMPDIR"] = str(d)
                for rep in range(args.reps):
                    for name in ("plain", "container"):  # interleaved
                        _wait_empty(tb)
                        secs, inside = _run(scripts[name])
                        expect = args.workers if name == "container" else 0
                        if inside != expect:
                            raise RuntimeError(f"{name}: {inside} workers in the image, "
                                               f"not {expect}")
                        times[name].append(secs)
                        print(f"  rep {rep + 1} {name:<10} {secs:6.2f} s", file=sys.stderr,
                              flush=True)
                _wait_empty(tb)
        finally:
            subprocess.run(["podman", "rmi", "-f", IMAGE], capture_output=True, check=False)
    best = {k: min(v) for k, v in times.items()}
    print(f"| {args.workers} workers / {args.hosts} hosts | best s | median s |")
    print("|---|---:|---:|")
    for k, v in times.items():
        print(f"| {k} | {best[k]:.2f} | {statistics.median(v):.2f} |")
    diff = best["container"] - best["plain"]
    median = statistics.median(times["container"]) - statistics.median(times["plain"])
    print(f"containers add {diff:+.2f} s (best), {median:+.2f} s (median); "
          f"ratio {best['container'] / best['plain']:.2f} (goal: at most +1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
