"""Workers in a container on real test hosts, with real podman: each host's workers run
in one container of the image, and no container is left on any host after a stop, a
failed launch, a host cut off mid-call, or the primary killed (kill -9, Ctrl-C)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sshcluster.bootstrap import RenderOptions, write_bootstrap
from sshcluster.inventory import load_inventory
from sshcluster.quoting import r_string
from sshcluster.testing import Testbed
from sshcluster.testing.containers import (
    ENGINE_DIRS,
    MARKER_FILE,
    containers_left,
    load_image,
    on_host,
)
from sshcluster.testing.fixtures import build_testbed, run_r_in_test
from sshcluster.testing.leftovers import launch_env, nothing_left

from .helpers import MARKER, Image, container_inventory

#: How many times each case that ends a cluster runs (SSHCLUSTER_CONTAINER_RUNS=20 for a
#: soak by hand; each run a test of its own).
RUNS = range(int(os.environ.get("SSHCLUSTER_CONTAINER_RUNS", "1")))

RUN = """
source({file})
cl <- parallelCluster
cat("n", length(cl), "\\n")
cat("marker", unlist(parallel::clusterEvalQ(cl, readLines({marker}))), "\\n")
cat("nodes", unlist(parallel::clusterEvalQ(cl, Sys.info()[["nodename"]])), "\\n")
cat("pids", unlist(parallel::clusterEvalQ(cl, Sys.getpid())), "\\n")
cat("wd", unique(unlist(parallel::clusterEvalQ(cl, getwd()))), "\\n")
cat("sum", sum(parallel::parSapply(cl, 1:20, function(i) i * i)), "\\n")
sshcluster_stop()
"""


def _left(tb: Testbed, d: Path, wait: float = 20) -> tuple[dict[str, list[str]], dict]:
    """The containers and the processes left, once none are or ``wait`` s passed."""
    deadline = time.monotonic() + wait
    while (left := containers_left(tb)) and time.monotonic() < deadline:
        time.sleep(0.5)
    processes = nothing_left(tb, marker=d, wait=10)
    # (one line per case, for a soak's tally: pytest -s | grep 'containers left')
    print(f"\ncontainers left: {sum(map(len, left.values()))}, processes left: "
          f"{sum(map(len, processes.values()))}")
    return left, processes


def _render(tb: Testbed, d: Path, image: Image, *, fork: bool = True, **kw: object) -> Path:
    inv = container_inventory(tb, d / "hosts.yaml", {"image": image.name, "pull": "never"},
                              workdir="/tmp/sshcluster-wd", **kw)  # type: ignore[arg-type]
    out = d / "cluster.R"
    write_bootstrap(load_inventory(inv), out, RenderOptions(fork=fork))
    return out


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "no-fork"])
@pytest.mark.parametrize("run", RUNS)
def test_workers_run_in_the_container_and_stop_leaves_nothing(
        tb: Testbed, image: Image, tmp_path: Path, fork: bool, run: int) -> None:
    assert containers_left(tb) == {}
    f = _render(tb, tmp_path, image, fork=fork)
    r = run_r_in_test(RUN.format(file=r_string(str(f)), marker=r_string(MARKER_FILE)),
                      tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines() if " " in line)
    assert lines["n"].strip() == "4"
    assert lines["marker"].split() == [MARKER] * 4
    assert lines["nodes"].split() == ["node1", "node1", "node2", "node2"]
    assert lines["wd"].strip() == "/tmp/sshcluster-wd"  # (mounted, and the workers in it)
    # forked from one R in the container, or one Rscript each: four processes (each
    # host's container has a pid namespace of its own, so pids repeat across hosts)
    assert len(set(zip(lines["nodes"].split(), lines["pids"].split(), strict=True))) == 4
    assert lines["sum"].strip() == "2870"
    left, processes = _left(tb, tmp_path)
    assert left == {}
    assert processes == {}


@pytest.mark.parametrize("run", RUNS)
def test_a_failed_launch_leaves_no_container(tb: Testbed, image: Image, tmp_path: Path,
                                             run: int) -> None:
    """node2 has no such image and may not pull it: the launch fails naming node2 and
    what podman said, and node1's container, which had started, is removed too."""
    f = _render(tb, tmp_path, image, per_host={1: {"image": "localhost/absent:1"}})
    r = run_r_in_test(f"source({r_string(str(f))})", tmp_path)
    assert r.returncode != 0
    assert tb.hosts[1].address in r.stderr
    assert "localhost/absent:1" in r.stderr, r.stderr
    left, processes = _left(tb, tmp_path)
    assert left == {}
    assert processes == {}


#: podman 3.x, as far as removal goes: `rm` knows no --time/-t (from podman 4.0 only).
PODMAN3 = """#!/bin/sh
if [ "$1" = rm ]; then
  for a in "$@"; do case $a in -t|-t*|--time|--time=*|-ft*|-tf*)
    echo "Error: unknown shorthand flag: 't' in $a" >&2; exit 125;; esac; done
fi
exec /usr/bin/podman "$@"
"""


@pytest.fixture(scope="module")
def tb3(request: pytest.FixtureRequest, testbed_env: None, image: Image) -> Testbed:
    """Two hosts whose podman refuses `rm -t`, as podman 3 (Debian 11, Ubuntu 22.04)."""
    bed = build_testbed(request, 2, private_dirs={**ENGINE_DIRS, "/usr/local/bin": "1m"})
    load_image(bed, bed.hosts, image.archive)
    shim = bed.workdir / "podman3"
    shim.write_text(PODMAN3)
    for h in bed.hosts:
        out = on_host(bed, h, ["install", "-m", "755", str(shim), "/usr/local/bin/podman"])
        assert out.returncode == 0, out.stderr
        assert on_host(bed, h, ["sh", "-lc", "command -v podman"]).stdout.strip() == \
            "/usr/local/bin/podman"
    return bed


def test_a_podman_without_rm_t_still_has_its_containers_removed(
        tb3: Testbed, image: Image, tmp_path: Path) -> None:
    """Every way out removes the container with `rm -f`, which podman 3 knows (it
    refused `rm -f -t 0`, unseen, and every container stayed)."""
    f = _render(tb3, tmp_path, image)
    r = run_r_in_test(RUN.format(file=r_string(str(f)), marker=r_string(MARKER_FILE)),
                      tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    left, processes = _left(tb3, tmp_path)
    assert left == {}
    assert processes == {}


WAIT_THEN_SLEEP = """
{options}
source({file})
invisible(parallel::clusterEvalQ(parallelCluster, readLines({marker})))
writeLines("up", {flag})
res <- try(parallel::clusterEvalQ(parallelCluster, Sys.sleep(25)))
cat("call ended\\n")
sshcluster_stop()
"""


def _start(tb: Testbed, d: Path, f: Path, options: str = "") -> subprocess.Popen[str]:
    flag = d / "up"
    script = d / "run.R"
    script.write_text(WAIT_THEN_SLEEP.format(file=r_string(str(f)), flag=r_string(str(flag)),
                                             marker=r_string(MARKER_FILE), options=options))
    proc = subprocess.Popen(["Rscript", str(script)], env=launch_env(d), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not flag.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the cluster did not come up:\n{out}\n{err}")
        time.sleep(0.2)
    assert set(containers_left(tb)) == {"node1", "node2"}
    return proc


@pytest.mark.parametrize("how", ["kill-9", "ctrl-c"])
@pytest.mark.parametrize("run", RUNS)
def test_a_dead_primary_leaves_no_container(tb: Testbed, image: Image, tmp_path: Path,
                                            how: str, run: int) -> None:
    f = _render(tb, tmp_path, image)
    proc = _start(tb, tmp_path, f)
    if how == "kill-9":
        proc.kill()
    else:  # (what a terminal's Ctrl-C sends: SIGINT to the whole foreground group)
        os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=60)
    left, processes = _left(tb, tmp_path, wait=30)
    assert left == {}
    assert processes == {}


@pytest.mark.parametrize("run", RUNS)
def test_a_host_cut_off_mid_call_removes_its_container(tb: Testbed, image: Image,
                                                       tmp_path: Path, run: int) -> None:
    """node1 vanishes from the network during a call: its watchdog hears no heartbeat
    and removes the container on its side, while the primary still waits for the call
    (which would end when ssh gives up on node1); then the primary is killed, and
    node2's container goes too."""
    f = _render(tb, tmp_path, image)
    # (a host's watchdog fires after 40 s without a heartbeat, sent every 10 s: too long
    # here; the same proportion, shorter)
    proc = _start(tb, tmp_path, f, "options(sshcluster.heartbeat_seconds = 1, "
                                   "sshcluster.silence_seconds = 5)")
    cut = tb.hosts[0]
    tb.cut_off(cut)
    try:
        deadline = time.monotonic() + 40
        while "node1" in containers_left(tb) and time.monotonic() < deadline:
            time.sleep(0.5)
        # node1's watchdog removed its own; node2, which hears the heartbeat, keeps its
        assert set(containers_left(tb)) == {"node2"}, "node1's watchdog did not remove it"
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.communicate()
        tb.reconnect(cut)
    left, processes = _left(tb, tmp_path)
    assert left == {}
    # (the cut host's sshd still holds the session of a client that vanished, until TCP
    # gives up on it: sshd's, not the launch's)
    cut_sshd = [p for p in processes.pop("node1", []) if "sshd: root@notty" not in p]
    assert cut_sshd == []
    assert processes == {}
