"""Benchmark ``sshcluster sync`` against installing R packages by hand.

Builds N local SSH test hosts (``sshcluster.testing``; needs root), each with an empty
R library of its own (a wrapper rscript with its own ``R_LIBS``) and a sync directory
of its own, and gives them the same 20 packages, side by side in one run:

* ``sshcluster sync`` (the CLI): the primary's installed builds, packed once and
  streamed to every host at once; then a second sync (nothing to do);
* by hand: ``ssh HOST Rscript -e 'install.packages(<the 20>, repos = "file://...")'``
  from a local source repository, one host after another;
* the same, all hosts at once (``&`` then ``wait``).

The 20 packages are the primary's own: 10 Debian ``r-cran-*`` builds from
/usr/lib/R/site-library (digest, with C code, among them; their sources for the by-hand
runs are the CRAN releases of those very versions, from a local mirror of the
``cran/<name>`` repositories) and 10 built here (5 with C code). Bytes are what left
the primary on the testbed's bridge. Usage::

    .venv/bin/python bench/bench_sync.py --hosts 8 --sources /work/.mirror
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from sshcluster.quoting import shell_quote
from sshcluster.testing import Testbed
from sshcluster.testing.rpackages import build_all, install, wrapper

SITE = Path("/usr/lib/R/site-library")
DEBIAN = ["digest", "globals", "listenv", "parallelly", "future", "future.apply",
          "iterators", "foreach", "doParallel", "progressr"]
OWN = [f"sctbench{i:02d}" for i in range(1, 11)]
COMPILED = set(OWN[:5])


def version(pkg: str) -> str:
    for line in (SITE / pkg / "DESCRIPTION").read_text().splitlines():
        if line.startswith("Version:"):
            return line.split()[1]
    raise SystemExit(f"no version for {pkg}")


def debian_sources(mirror: Path, out: Path, contrib: Path) -> None:
    """Source tarballs of the Debian packages' versions, from the cran/<name> mirrors."""
    for pkg in DEBIAN:
        v = version(pkg)
        repo = mirror / f"cran+{pkg}" / "repo"
        src = out / pkg
        src.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(repo), "archive", v], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        subprocess.run(["R", "CMD", "build", "--no-build-vignettes", "--no-manual",
                        "--no-resave-data", str(src)], cwd=contrib, check=True,
                       capture_output=True)


def bytes_out(bridge: str) -> int:
    return int(Path(f"/sys/class/net/{bridge}/statistics/tx_bytes").read_text())


def timed(argv: list[str] | str, bridge: str, *, shell: bool = False,
          env: dict[str, str] | None = None) -> tuple[float, int, str]:
    b0, t0 = bytes_out(bridge), time.perf_counter()
    done = subprocess.run(argv, shell=shell, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    secs, sent = time.perf_counter() - t0, bytes_out(bridge) - b0
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"failed: {argv if isinstance(argv, list) else argv[:200]}")
    return secs, sent, done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--sources", type=Path, default=Path("/work/.mirror"),
                    help="directory with the cran+<name>/repo git mirrors")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--no-by-hand", action="store_true",
                    help="only sync and the second sync (the by-hand installs take ~20 min)")
    ap.add_argument("--again", type=int, default=1, metavar="N",
                    help="run the second sync N times (each is timed and printed)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp, Testbed(args.hosts) as tb:
        work = Path(tmp)
        built = build_all(work / "own", {p: ("1.0",) for p in OWN}, compiled=COMPILED,
                          repo_versions={p: "1.0" for p in OWN})
        contrib = built.repo / "src" / "contrib"
        if not args.no_by_hand:
            debian_sources(args.sources, work / "debian-src", contrib)
        subprocess.run(["Rscript", "-e", f'tools::write_PACKAGES("{contrib}", type = "source")'],
                       check=True, capture_output=True)
        primary = work / "primary-lib"
        for p in OWN:
            install(built, primary, p, "1.0")
        env = {"R_LIBS": str(primary)}
        inv = tb.write_inventory(work / "hosts.yaml", ncore=1,
                                 extra={"r_packages": [*OWN, "future.apply", "doParallel",
                                                       "progressr"]})
        doc = yaml.safe_load(inv.read_text())
        for i, entry in enumerate(doc["hosts"], 1):
            lib = work / f"h{i}-lib"
            lib.mkdir()
            entry["rscript"] = str(wrapper(work / f"h{i}-Rscript", lib))
            entry["library"] = str(work / f"h{i}-sync")
        inv.write_text(yaml.safe_dump(doc, sort_keys=False))
        bridge = f"{tb.name}-br"
        cli = [sys.executable, "-m", "sshcluster", "sync", str(inv), "--json"]

        first = timed(cli, bridge, env=env)
        report = json.loads(first[2])
        n_pkgs = len(report["reference"]["packages"])
        archive = max(h["sent"] for h in report["hosts"])
        seconds = []
        for _ in range(args.again):
            second = timed(cli, bridge, env=env)
            assert json.loads(second[2])["sent"] == 0
            seconds.append(second[0])
        print(f"{args.hosts} hosts, {n_pkgs} packages, load average "
              f"{os.getloadavg()[0]:.1f}")
        print(f"  sshcluster sync          {first[0]:7.1f} s  {first[1] / 1e6:7.1f} MB out "
              f"(archive {archive / 1e6:.1f} MB per host)")
        print("  second sync              " + ", ".join(f"{s:.2f}" for s in seconds) +
              f" s  {second[1] / 1e6:7.3f} MB out")
        if args.no_by_hand:
            return

        names = DEBIAN + OWN
        r_names = "c(" + ", ".join(f'"{p}"' for p in names) + ")"

        def by_hand(i: int, lib: Path) -> str:
            h = tb.hosts[i]
            code = (f'install.packages({r_names}, lib = "{lib}", repos = "{built.url}", '
                    'dependencies = FALSE, quiet = TRUE)')
            ssh = " ".join(shell_quote(w) for w in tb.ssh_argv(h))
            remote = f"{doc['hosts'][i]['rscript']} -e {shell_quote(code)}"
            return f"mkdir -p {lib} && {ssh} {shell_quote(remote)}"

        seq = timed(" ; ".join(by_hand(i, work / f"seq-h{i}") for i in range(args.hosts)),
                    bridge, shell=True)
        par = timed(" ".join(f"( {by_hand(i, work / f'par-h{i}')} ) &"
                             for i in range(args.hosts)) + " wait", bridge, shell=True)
        for i in range(args.hosts):
            got = {p.name for p in (work / f"seq-h{i}").iterdir()} & set(names)
            assert got == set(names), f"by hand, host {i + 1} lacks {set(names) - got}"
        one_copy = sum(
            int(subprocess.run(["du", "-sb", p], capture_output=True, text=True,
                               check=True).stdout.split()[0])
            for p in (work / "h1-sync").glob("R-*/*/"))
        results = {
            "hosts": args.hosts, "packages": n_pkgs,
            "sync_s": first[0], "sync_bytes": first[1], "archive_bytes": archive,
            "installed_bytes_one_host": one_copy,
            "second_sync_s": second[0], "second_sync_bytes": second[1],
            "by_hand_sequential_s": seq[0], "by_hand_parallel_s": par[0],
            "by_hand_sequential_bytes": seq[1], "by_hand_parallel_bytes": par[1],
        }
        print(f"  installed {one_copy / 1e6:.1f} MB per host")
        print(f"  by hand, host by host    {seq[0]:7.1f} s  ({seq[0] / first[0]:.0f}x sync)")
        print(f"  by hand, all at once     {par[0]:7.1f} s  ({par[0] / first[0]:.0f}x sync)")
        print(f"  bytes out / (archive x hosts) = {first[1] / (archive * args.hosts):.3f}; "
              f"/ (installed x hosts) = {first[1] / (one_copy * args.hosts):.3f}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
