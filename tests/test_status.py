"""``sshcluster status`` on real test hosts: a live cluster's sessions and workers, a
stray left by a crashed session, and --kill-strays."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sshcluster.bootstrap import RenderOptions, write_bootstrap
from sshcluster.inventory import load_inventory
from sshcluster.status import Process, classify
from sshcluster.status.scan import REMOTE, parse_starts
from sshcluster.testing import Testbed


def _status(inv: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "sshcluster", "status", str(inv), "--json",
                          *extra], capture_output=True, text=True, timeout=120)
    return out.returncode, json.loads(out.stdout)


def test_sessions_workers_and_strays_are_told_apart() -> None:
    worker = "/usr/lib/R/bin/exec/R --no-echo -e (function()~+~{~n~PROOF_MAGIC~+~<-~+~x"
    ps = [Process(10, 1, "sshd: bob@notty"),
          Process(11, 10, "sh -c code=... sshcluster Rscript 127.0.0.1 11000 1 120"),
          Process(12, 11, worker),
          Process(13, 12, worker),
          Process(14, 11, "bash --norc --noprofile -c while ... sshcluster 40 11"),
          # OpenSSH 9.8 and later: the session process is sshd-session
          Process(15, 1, "sshd-session: bob@notty"),
          Process(16, 15, "sh -c code=... sshcluster Rscript 127.0.0.1 11001 1 120"),
          # what a crashed session leaves: a script without its sshd, a worker without
          # its script
          Process(20, 1, "sh -c code=... sshcluster Rscript 127.0.0.1 11000 2 120"),
          Process(21, 1, worker),
          Process(22, 20, "sleep 5"),  # what the stray script runs goes with it
          # the user's own things that merely name sshcluster: never strays
          Process(30, 1, "vim sshcluster.yaml"),
          Process(31, 1, "sh /tmp/sshcluster-ab12/supervisor.sh /tmp/sshcluster-ab12 10 77"),
          Process(32, 31, "ssh -T -o BatchMode=yes host sh -c 'x' sshcluster Rscript"),
          # a worker in a launch's container: the container's, counted with those
          Process(40, 1, "/usr/bin/conmon --api-version 1 -c abc"),
          Process(41, 40, worker)]
    live, workers, strays = classify(ps)
    assert sorted(p.pid for p in live) == [11, 16]
    assert sorted(p.pid for p in workers) == [12, 13, 14]
    assert sorted(p.pid for p in strays) == [20, 21, 22]


def _listing(containers: list[str], live: str) -> str:
    """What a host's status script prints: podman's ``containers`` and one live session
    whose container is ``live``."""
    return ("".join(f"container podman {c}\n" for c in containers) + "self 99\n"
            "10 1 sshd: bob@notty\n"
            "11 10 sh -c code=... sshcluster Rscript 127.0.0.1 11000 1 120 tunnel fork 40 "
            f"SSHCLUSTER_CONTAINER=podman SSHCLUSTER_CONTAINER_NAME={live}\n"
            "98 1 sshd: bob@notty\n"
            "99 98 ps -ww -u 1000 -o pid= -o ppid= -o args=\n")


def test_a_container_no_live_session_names_is_stray() -> None:
    from sshcluster.status.scan import _sorted

    seen = _sorted("h1", _listing(["sshcluster-ab12-h1-1", "sshcluster-cd34-h1-3"],
                                  live="sshcluster-ab12-h1-1"))
    assert seen.containers == ("sshcluster-ab12-h1-1",)
    assert seen.stray_containers == ("podman:sshcluster-cd34-h1-3",)
    assert [p.pid for p in seen.sessions] == [11] and not seen.strays


def test_a_container_whose_name_begins_a_live_one_s_is_still_stray() -> None:
    """Session 1's container, left, while session 12 of the same cluster (after repairs)
    runs: its name is the start of the live one's, and it is still a stray."""
    from sshcluster.status.scan import _sorted

    seen = _sorted("h1", _listing(["sshcluster-ab12-h1-1", "sshcluster-ab12-h1-12"],
                                  live="sshcluster-ab12-h1-12"))
    assert seen.containers == ("sshcluster-ab12-h1-12",)
    assert seen.stray_containers == ("podman:sshcluster-ab12-h1-1",)


def test_status_shows_a_live_cluster_and_ends_a_stray(testbed: Testbed, tmp_path: Path
                                                      ) -> None:
    inv = testbed.write_inventory(tmp_path / "hosts.yaml", ncore=2)
    cluster = tmp_path / "cluster.R"
    write_bootstrap(load_inventory(inv), cluster, RenderOptions())
    go = tmp_path / "go"
    r = subprocess.Popen(["Rscript", "-e", f"source({str(cluster)!r}); cat('UP\\n'); "
                          f"while (!file.exists({str(go)!r})) Sys.sleep(0.1); "
                          "sshcluster_stop()"],
                         stdout=subprocess.PIPE, text=True, start_new_session=True)
    host = testbed.hosts[0]
    try:
        assert r.stdout is not None and r.stdout.readline() == "UP\n"
        code, doc = _status(inv)
        assert code == 0 and doc["strays"] == 0, doc
        for h in doc["hosts"]:
            assert len(h["sessions"]) == 1 and len(h["workers"]) >= 2, h
        assert any(p["command"].split()[1].endswith("supervisor.sh") and
                   p["command"].split()[4] == str(r.pid) for p in doc["primary"]["sessions"])
        # what a crashed session leaves: a launch script whose sshd session is gone
        subprocess.run(testbed.ssh_argv(host, "setsid sh -c 'sleep 300' sshcluster "
                                              "</dev/null >/dev/null 2>&1 &"),
                       check=True, timeout=60)
        time.sleep(0.5)
        code, doc = _status(inv)
        assert code == 1
        strays = doc["hosts"][0]["strays"]
        assert strays[0]["command"] == "sh -c sleep 300 sshcluster", doc
        assert [s["command"] for s in strays[1:]] in ([], ["sleep 300"]), doc
        assert all(not h["strays"] for h in doc["hosts"][1:])
        code, doc = _status(inv, "--kill-strays")
        assert code == 0, doc
        assert doc["hosts"][0]["killed"] == [s["pid"] for s in strays]
        left = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True,
                              text=True, timeout=30).stdout.split()
        for pid in left:  # (the stray and what it ran are gone from the host)
            with contextlib.suppress(OSError):
                assert "sleep\x00300" not in Path(f"/proc/{pid}/cmdline").read_text()
        # the live cluster was left alone
        assert all(len(h["sessions"]) == 1 for h in doc["hosts"])
    finally:
        go.touch()
        try:
            r.wait(timeout=60)
        finally:
            if r.poll() is None:
                os.killpg(r.pid, 9)
    code, doc = _status(inv)
    assert code == 0 and all(not h["sessions"] for h in doc["hosts"]), doc


def test_a_stray_is_ended_only_while_its_pid_is_the_same_process(testbed: Testbed) -> None:
    """--kill-strays names each pid with when that process started: a pid that the
    kernel has given to another process since the look is left alone."""
    host = testbed.hosts[0]

    def remote(*args: str) -> str:
        command = f"sh -c '{REMOTE}' sc-status " + " ".join(f"'{a}'" for a in args)
        return subprocess.run(testbed.ssh_argv(host, command), capture_output=True,
                              text=True, timeout=60, check=True).stdout

    pid = int(subprocess.run(testbed.ssh_argv(
        host, "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!"), capture_output=True,
        text=True, timeout=60, check=True).stdout)
    try:
        stamp = parse_starts(remote())[pid]
        assert stamp.count("_") == 4, stamp
        other = stamp[:-4] + str(int(stamp[-4:]) - 1)  # (the same moment, a year before)
        remote(f"{pid}@{other}", "")
        assert _in_netns(host.netns, pid)  # (another process by now: left alone)
        remote(f"{pid}@{stamp}", "")
        assert not _in_netns(host.netns, pid)
    finally:
        subprocess.run(["ip", "netns", "exec", host.netns, "kill", "-9", str(pid)],
                       capture_output=True, timeout=30)


def _in_netns(netns: str, pid: int) -> bool:
    return str(pid) in subprocess.run(["ip", "netns", "pids", netns], capture_output=True,
                                      text=True, timeout=30).stdout.split()
