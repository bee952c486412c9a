"""The same data on 8 hosts: ``sshcluster push`` (chain, tree, direct) against ``scp -r`` to
each host in turn and ``rsync`` to all hosts at once.

Run as root on a machine that can build SSH test hosts (see sshcluster.testing), with
rsync installed (``apt-get install rsync``)::

    .venv/bin/python bench/bench_push.py                  # 256 MiB per data set
    .venv/bin/python bench/bench_push.py --size-mb 1024   # the issue's 1 GiB

Two data sets of ``--size-mb`` each: 2,000 files, and one file. Each host has a tmpfs
of its own at the destination (they all share this machine's disk otherwise), emptied
before every copy; an untimed copy of each data set goes first. Each tool copies each
data set once without a cap and once with the primary's link (the testbed bridge)
capped at 1 Gbit/s by ``tc tbf``. Reported: wall
time, and the bytes that left the primary (the bridge's ``tx_bytes``: host-to-host
traffic in a chain does not cross it). Then the time of a push with nothing changed.
All hosts share this machine's CPUs, so every ssh stream's encryption competes for the
same cores: the chain's advantage on a real network, where each host has its own, is
larger than here. This is a benchmark, not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sshcluster
from sshcluster.inventory import Inventory, load_inventory
from sshcluster.testing import Testbed

HOSTS = 8
DEST = "/srv/bench"
FILES = 2000
#: The tools and data sets, as --tools and --data name them.
TOOLS = {"chain": "push chain", "tree": "push tree", "direct": "push direct",
         "scp": "scp -r, in turn", "rsync": "rsync, all at once"}
DATA = {"many": "2000 files", "one": "1 file"}


def make_data(root: Path, size: int) -> dict[str, Path]:
    """``many/`` (FILES files in 20 directories) and ``one/`` (one file), each ``size``
    bytes of random data."""
    many, one = root / "many" / "data", root / "one" / "data"
    per = size // FILES
    block = os.urandom(per)
    for i in range(FILES):
        d = many / f"d{i % 20:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}.bin").write_bytes(i.to_bytes(8, "big") + block[8:])
    one.mkdir(parents=True)
    with open(one / "big.bin", "wb") as f:
        for _ in range(size // (1 << 20)):
            f.write(os.urandom(1 << 20))
    return {"2000 files": many, "1 file": one}


def load() -> str:
    """The 1-minute load average (other work on the machine skews the times)."""
    return Path("/proc/loadavg").read_text().split()[0]


def tx_bytes(bridge: str) -> int:
    return int(Path(f"/sys/class/net/{bridge}/statistics/tx_bytes").read_text())


def wipe(tb: Testbed) -> None:
    def one(h: object) -> None:
        subprocess.run(tb.ssh_argv(h, f"rm -rf {DEST}/* {DEST}/.s*"),  # type: ignore[arg-type]
                       check=True, timeout=120)
    with ThreadPoolExecutor(HOSTS) as pool:
        list(pool.map(one, tb.hosts))


def ssh_e(tb: Testbed) -> str:
    return " ".join(["ssh", *tb.ssh_options()])


def run_scp(tb: Testbed, src: Path) -> None:
    for h in tb.hosts:
        subprocess.run(["scp", "-r", "-q", *tb.ssh_options(), "-P", str(h.ssh_port),
                        str(src), f"root@{h.address}:{DEST}/"], check=True)


def run_rsync(tb: Testbed, src: Path) -> None:
    procs = [subprocess.Popen(["rsync", "-a", "-e", f"{ssh_e(tb)} -p {h.ssh_port}",
                               str(src), f"root@{h.address}:{DEST}/"]) for h in tb.hosts]
    if any(p.wait() != 0 for p in procs):
        raise RuntimeError("rsync failed")


def run_push(inv: Inventory, src: Path) -> None:
    result = sshcluster.push(inv, [src])
    if not result.ok:
        raise RuntimeError(result.to_json())


def measure(tb: Testbed, what: Callable[[], None]) -> tuple[float, int]:
    bridge = f"{tb.name}-br"
    wipe(tb)
    before = tx_bytes(bridge)
    t0 = time.monotonic()
    what()
    return time.monotonic() - t0, tx_bytes(bridge) - before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=256,
                        help="MiB per data set (the issue's goal: 1024)")
    parser.add_argument("--caps", nargs="+", default=["none", "1gbit"],
                        help="link caps to run with (tc tbf rates, or none)")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS),
                        help="tools to compare (the ratio column needs rsync)")
    parser.add_argument("--data", nargs="+", choices=DATA, default=list(DATA),
                        help="data sets to copy")
    parser.add_argument("--repeat", type=int, default=1,
                        help="copies per tool and data set (the rows in turn, N times)")
    args = parser.parse_args(argv)
    if shutil.which("rsync") is None:
        print("rsync is not installed (apt-get install rsync)", file=sys.stderr)
        return 2
    size = args.size_mb << 20
    tmpfs = f"{(size * 2) // (1 << 20) + 64}m"
    rows: list[tuple[str, str, str, float, int]] = []
    with tempfile.TemporaryDirectory() as tmp, \
            Testbed(HOSTS, private_dirs={"/srv": tmpfs}, mesh=True) as tb:
        data = make_data(Path(tmp), size)
        invs = {fan: load_inventory(tb.write_inventory(
            Path(tmp) / f"{fan}.yaml", extra={"workdir": DEST, "fanout": fan}))
            for fan in ("chain", "tree", "direct")}
        every: dict[str, Callable[[Path], None]] = {
            "chain": lambda src: run_push(invs["chain"], src),
            "tree": lambda src: run_push(invs["tree"], src),
            "direct": lambda src: run_push(invs["direct"], src),
            "scp": lambda src: run_scp(tb, src),
            "rsync": lambda src: run_rsync(tb, src),
        }
        tools = {TOOLS[t]: every[t] for t in TOOLS if t in args.tools}
        data = {DATA[d]: data[DATA[d]] for d in DATA if d in args.data}
        bridge = f"{tb.name}-br"
        for cap in args.caps:
            if cap != "none":
                subprocess.run(["tc", "qdisc", "add", "dev", bridge, "root", "tbf", "rate",
                                cap, "burst", "128kb", "latency", "50ms"], check=True)
            try:
                for label, src in data.items():
                    # An untimed copy first: the first write into the hosts' fresh
                    # tmpfs costs more on this VM (memory it takes back from the
                    # hypervisor), and would fall on whichever tool goes first.
                    wipe(tb)
                    run_push(invs["direct"], src)
                    for _ in range(args.repeat):
                        for tool, run in tools.items():
                            secs, sent = measure(tb, lambda r=run, s=src: r(s))  # type: ignore[misc]
                            rows.append((cap, label, tool, secs, sent))
                            print(f"{cap:6} {label:10} {tool:20} {secs:7.2f} s "
                                  f"{sent / size:5.2f}x data left the primary, load "
                                  f"{load()}", flush=True)
                    # a push (nothing to send after rsync -a), then one with nothing changed
                    run_push(invs["chain"], src)
                    t0 = time.monotonic()
                    run_push(invs["chain"], src)
                    rows.append((cap, label, "push, unchanged", time.monotonic() - t0, 0))
                    print(f"{cap:6} {label:10} {'push, unchanged':20} "
                          f"{rows[-1][3]:7.2f} s", flush=True)
            finally:
                if cap != "none":
                    subprocess.run(["tc", "qdisc", "del", "dev", bridge, "root"], check=False)
        wipe(tb)
    print(f"\n{HOSTS} hosts, {args.size_mb} MiB per data set\n")
    print("| link | data | tool | wall (s) | left the primary | vs rsync |")
    print("|---|---|---|---:|---:|---:|")
    for i, (cap, label, tool, secs, sent) in enumerate(rows):
        # the ratio to the rsync row of the same round (the nearest one before or after)
        refs = [(abs(j - i), r[3]) for j, r in enumerate(rows)
                if r[:2] == (cap, label) and r[2].startswith("rsync")]
        ratio = f"{secs / min(refs)[1]:.2f}" if refs else "-"
        print(f"| {cap} | {label} | {tool} | {secs:.2f} | "
              f"{f'{sent / size:.2f}x' if sent else '-'} | {ratio} |")
    if args.repeat > 1:
        summary(rows)
    return 0


def summary(rows: list[tuple[str, str, str, float, int]]) -> None:
    """Each tool's best and median of its copies, and their ratios to rsync's (this
    machine's times move by tens of percent from one copy to the next)."""
    print("\n| link | data | tool | copies | best (s) | median (s) | best vs rsync's best "
          "| median vs rsync's median |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    groups: dict[tuple[str, str, str], list[float]] = {}
    for cap, label, tool, secs, _ in rows:
        groups.setdefault((cap, label, tool), []).append(secs)
    for (cap, label, tool), times in groups.items():
        ref = next((t for (c, d, name), t in groups.items()
                    if (c, d) == (cap, label) and name.startswith("rsync")), None)
        best, med = min(times), statistics.median(times)
        ratios = (f"{best / min(ref):.2f} | {med / statistics.median(ref):.2f}" if ref
                  else "- | -")
        print(f"| {cap} | {label} | {tool} | {len(times)} | {best:.2f} | {med:.2f} | "
              f"{ratios} |")


if __name__ == "__main__":
    sys.exit(main())
