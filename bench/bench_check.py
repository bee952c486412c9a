"""Benchmark ``sshcluster check`` against the usual ways of doing the same work.

Builds N local SSH test hosts (``sshcluster.testing``; needs root) and times, side by
side in one run, interleaved over a few rounds (the median is reported):

* ``sshcluster check`` (the CLI, all ten steps, ``--json``);
* background OpenSSH doing the same two-way work: for every host at once,
  ``ssh HOST 'Rscript -e "<R version, packages>"; nproc; ssh -o BatchMode=yes PRIMARY true' &``;
* the forward part only: a sequential loop of ``ssh HOST 'Rscript --version; nproc'``,
  the same loop in the background, and ``ansible all -m raw -f 32`` when ansible is
  installed in the benchmark's own venv (``bench/.venv``: ``pip install ansible-core``).

"CPU" is the whole machine's busy CPU time (``/proc/stat``) during the run: the hosts
share this machine, so it counts sshd, R and the client alike. Usage::

    sudo .venv/bin/python bench/bench_check.py --hosts 32 128 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sshcluster.quoting import shell_join
from sshcluster.testing import Testbed

HERE = Path(__file__).resolve().parent
R_PACKAGES = ["parallel"]
TWO_WAY_R = ('cat(as.character(getRversion()), '
             f'all(nzchar(find.package(c({", ".join(repr(p) for p in R_PACKAGES)}), '
             'quiet = TRUE))), "\\n")')


def busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], bool]) -> tuple[float, float, bool]:
    c0, t0 = busy_seconds(), time.perf_counter()
    ok = fn()
    return time.perf_counter() - t0, busy_seconds() - c0, ok


def run_all(argvs: Sequence[Sequence[str]], *, background: bool) -> bool:
    """Run every command; all at once (``&`` then ``wait``) or one after another."""
    ok = True
    if background:
        procs = [subprocess.Popen(a, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT) for a in argvs]
        for p in procs:
            p.communicate()
            ok &= p.returncode == 0
    else:
        for a in argvs:
            ok &= subprocess.run(a, stdin=subprocess.DEVNULL, capture_output=True).returncode == 0
    return ok


def methods(tb: Testbed, inv: Path, home: Path, ansible: str | None
            ) -> dict[str, Callable[[], bool]]:
    n = len(tb.hosts)
    ssh = ["ssh", *tb.ssh_options()]
    primary = ["ssh", "-o", "BatchMode=yes", "-p", str(tb.primary_ssh_port),
               f"{tb.user}@{tb.primary_address}", "true"]
    two_way = f"Rscript -e {shell_join([TWO_WAY_R])}; nproc; {shell_join(primary)}"
    forward = "Rscript --version; nproc"

    def argv(host_cmd: str) -> list[list[str]]:
        return [[*ssh, "-p", str(h.ssh_port), f"{tb.user}@{h.address}", host_cmd]
                for h in tb.hosts]

    def check() -> bool:
        env = {**os.environ, "HOME": str(home)}
        out = subprocess.run(  # -F none: no ssh config, as the OpenSSH methods below
            [sys.executable, "-m", "sshcluster", "check", str(inv), "--json",
             "--timeout", "120", "-F", "none"],  # default --concurrency
            capture_output=True, text=True, env=env)
        try:
            doc = json.loads(out.stdout)
        except ValueError:
            print(out.stdout, out.stderr, file=sys.stderr)
            return False
        if not doc["ok"]:
            bad = [(h["host"], h["failed"]) for h in doc["hosts"] if not h["ok"]]
            print(f"  check: failed hosts: {bad[:5]}", file=sys.stderr)
        return bool(doc["ok"])

    out: dict[str, Callable[[], bool]] = {
        "sshcluster check (all 10 steps)": check,
        "OpenSSH two-way, background": lambda: run_all(argv(two_way), background=True),
        "OpenSSH forward, sequential": lambda: run_all(argv(forward), background=False),
        "OpenSSH forward, background": lambda: run_all(argv(forward), background=True),
    }
    if ansible:
        ini = home / "ansible.ini"
        lines = ["[all]"] + [f"h{h.index} ansible_host={h.address} ansible_port={h.ssh_port}"
                             for h in tb.hosts]
        common = " ".join(tb.ssh_options()[2:])  # without -F none
        lines += ["[all:vars]", f"ansible_user={tb.user}",
                  f"ansible_ssh_common_args='{common}'"]
        ini.write_text("\n".join(lines) + "\n")

        def run_ansible(forks: int) -> Callable[[], bool]:
            def go() -> bool:
                with tempfile.TemporaryDirectory() as cp:  # no ControlPersist reuse
                    env = {**os.environ, "HOME": str(home), "ANSIBLE_HOST_KEY_CHECKING": "True",
                           "ANSIBLE_SSH_CONTROL_PATH_DIR": cp, "ANSIBLE_LOCAL_TEMP": cp}
                    r = subprocess.run([ansible, "all", "-i", str(ini), "-m", "raw", "-a",
                                        forward, "-f", str(forks)],
                                       capture_output=True, text=True, env=env)
                    if r.returncode != 0:
                        print(r.stdout[-500:], file=sys.stderr)
                    return r.returncode == 0
            return go

        out["ansible -m raw -f 32 (forward)"] = run_ansible(32)
        if n > 32:
            out[f"ansible -m raw -f {n} (forward)"] = run_ansible(n)
    return out


def bench(n: int, rounds: int, ansible: str | None) -> None:
    with Testbed(n, name="scb" + secrets.token_hex(2)) as tb, \
            tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        inv = tb.write_inventory(home / "hosts.yaml", ncore=1,
                                 extra={"r_packages": R_PACKAGES})
        ms = methods(tb, inv, home, ansible)
        results: dict[str, list[tuple[float, float, bool]]] = {k: [] for k in ms}
        for name, fn in ms.items():  # warm-up: page cache, first-time key loading
            if not fn():
                print(f"  warm-up: {name} reported a failure", file=sys.stderr)
        for _ in range(rounds):
            for name, fn in ms.items():
                results[name].append(timed(fn))
        wall = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
        cpu = {k: statistics.median(r[1] for r in v) for k, v in results.items()}
        base = wall["OpenSSH two-way, background"]
        check_wall = wall["sshcluster check (all 10 steps)"]
        print(f"\n{n} hosts, {rounds} rounds (median), {os.cpu_count()} CPUs, "
              f"load before {os.getloadavg()[0]:.1f}")
        print(f"{'method':38} {'wall s':>7} {'CPU s':>7} {'check/this':>10}  ok")
        for k in ms:
            ok = all(r[2] for r in results[k])
            print(f"{k:38} {wall[k]:7.2f} {cpu[k]:7.2f} {check_wall / wall[k]:10.2f}  "
                  f"{'yes' if ok else 'NO'}")
        print(f"goal: check <= 0.6 x OpenSSH two-way background: "
              f"{check_wall / base:.2f} x")
        for k in ms:
            if k.startswith("ansible"):
                print(f"goal: check <= {k}: {check_wall:.2f} s vs {wall[k]:.2f} s")


def main() -> None:
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the test hosts are torn down.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, nargs="+", default=[32])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ansible", default=str(HERE / ".venv" / "bin" / "ansible"),
                    help="ansible executable (default: bench/.venv/bin/ansible)")
    args = ap.parse_args()
    ansible = args.ansible if os.access(args.ansible, os.X_OK) else shutil.which("ansible")
    if not ansible:
        print("ansible is not installed (python3 -m venv bench/.venv && "
              "bench/.venv/bin/pip install ansible-core): its row is left out")
    for n in args.hosts:
        bench(n, args.rounds, ansible)


if __name__ == "__main__":
    main()
