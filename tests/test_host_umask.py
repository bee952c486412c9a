"""A host whose sessions have umask 002, as Ubuntu's (pam_umask) and Red Hat's
(/etc/bashrc) give them: the launch works there as anywhere, and the directory it makes
for the workers' output (worker_output: DIR) is the user's alone, not refused as one the
group may write; under umask 077 it stays the user's alone. A real account whose login
shell sets that umask, on real test hosts."""

from __future__ import annotations

import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sshcluster.bootstrap import write_bootstrap
from sshcluster.inventory import load_inventory
from sshcluster.testing import Testbed
from sshcluster.testing.accounts import authorize, processes_of, throwaway_account
from sshcluster.testing.fixtures import run_r_in_test
from sshcluster.testing.leftovers import nothing_left


@pytest.fixture(params=["002", "077"])
def umask_user(request: pytest.FixtureRequest) -> Iterator[tuple[str, Path, str]]:
    """An account whose login shell sets the parameter's umask, then is /bin/sh."""
    bin_dir = Path(tempfile.mkdtemp(prefix="sshcluster-umask-"))
    try:
        bin_dir.chmod(0o755)
        shell = bin_dir / f"umask{request.param}-sh"
        shell.write_text(f'#!/bin/sh\numask {request.param}\nexec /bin/sh "$@"\n')
        shell.chmod(0o755)
        with throwaway_account(str(shell), "scumask") as (name, home):
            yield name, home, request.param
    finally:
        for p in bin_dir.iterdir():
            p.unlink()
        bin_dir.rmdir()


def test_worker_output_on_a_host_with_its_own_umask(testbed: Testbed, tmp_path: Path,
                                                    umask_user: tuple[str, Path, str]) -> None:
    """umask 002: the directories are not the group's to write (0755); 077: they stay
    the user's alone (0700), not opened to all."""
    user, home, umask = umask_user
    tb = testbed
    authorize(home, user, tb.identity_file)
    hosts = tb.hosts[:2]
    out_dir = home / "out" / "logs"  # (made by the launch, parents too)
    inv = load_inventory(tb.write_inventory(tmp_path / "hosts.yaml", ncore=2, extra={
        "defaults": {"user": user, "identity_file": str(tb.identity_file), "ncore": 2},
        "hosts": [{"host": h.address, "ssh_port": h.ssh_port} for h in hosts],
        "worker_output": str(out_dir)}))
    cluster_r = tmp_path / "cluster.R"
    write_bootstrap(inv, cluster_r)
    out = run_r_in_test(
        f'source("{cluster_r}")\n'
        "masks <- unlist(parallel::clusterEvalQ(parallelCluster, {\n"
        "  cat('said', Sys.info()[['nodename']], '\\n'); format(Sys.umask()) }))\n"
        "cat('RESULT', masks, '\\n')\n"
        "sshcluster_stop()\n", tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    # (the workers did run with the host's umask 002)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    assert line.split()[1:] == [umask.lstrip("0")] * 4
    for d in (home / "out", out_dir):
        assert stat.S_IMODE(d.stat().st_mode) == (0o755 if umask == "002" else 0o700), \
            oct(d.stat().st_mode)
    for h in hosts:
        assert (out_dir / f"{h.hostname}.log").read_text().count(f"said {h.hostname}") == 2
    deadline = time.monotonic() + 15
    while processes_of(user) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_of(user) == []
    assert nothing_left(tb, marker=tmp_path) == {}
