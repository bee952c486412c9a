"""Workers whose login shell is not a POSIX shell: csh (tcsh) and fish.

ssh hands every remote command to the account's login shell. The check sends its script
on stdin, so it passes on such hosts; the launch must then work there too (a check that
passes where the launch fails is a false verdict). Each case is a real account with that
login shell on real test hosts: the check, a real R computation across the cluster, and
a clean stop.
"""

from __future__ import annotations

import json
import pwd
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sshcluster.bootstrap import write_bootstrap
from sshcluster.check.preflight import check
from sshcluster.inventory import load_inventory
from sshcluster.testing import Testbed
from sshcluster.testing.accounts import authorize, processes_of, throwaway_account
from sshcluster.testing.fixtures import run_r_in_test, skip_or_fail
from sshcluster.testing.leftovers import nothing_left

SHELLS = ["tcsh", "fish"]


@pytest.fixture(params=SHELLS)
def shell_user(request: pytest.FixtureRequest) -> Iterator[str]:
    """A throwaway account whose login shell is the parameter's shell, with a home of
    its own that sshd can reach (pytest's temporary directories are root's alone)."""
    shell = shutil.which(request.param)
    if shell is None:
        skip_or_fail(f"{request.param} is not installed (scripts/setup.sh installs it)")
    with throwaway_account(shell, f"sc{request.param[:4]}") as (name, _):
        yield name


def test_the_check_and_the_launch_agree_on_a_non_posix_login_shell(
        testbed: Testbed, tmp_path: Path, shell_user: str) -> None:
    tb = testbed
    account = pwd.getpwnam(shell_user)
    assert account.pw_shell.endswith(("tcsh", "fish"))
    # The testbed's client key may log in to that account (its hosts' sshd reads
    # ~/.ssh/authorized_keys).
    authorize(Path(account.pw_dir), shell_user, tb.identity_file)
    hosts = tb.hosts[:2]
    inv_path = tb.write_inventory(tmp_path / "hosts.yaml", ncore=2, extra={
        "defaults": {"user": shell_user, "identity_file": str(tb.identity_file),
                     "ncore": 2},
        "hosts": [{"host": h.address, "ssh_port": h.ssh_port} for h in hosts]})
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("Host *\n  GlobalKnownHostsFile /dev/null\n"
                          "  IdentitiesOnly yes\n  IdentityAgent none\n")
    inv = load_inventory(inv_path)

    report = check(inv, timeout=30, ssh_config=[str(ssh_config)])
    for h in report.hosts:
        assert h.ok, (h.label, {s: (r.status, r.detail) for s, r in h.checks.items()
                                if r.status == "failed"})

    cluster_r = tmp_path / "cluster.R"
    write_bootstrap(inv, cluster_r)
    out = run_r_in_test(
        f'source("{cluster_r}")\n'
        "who <- parallel::parLapply(parallelCluster, 1:8, function(i)\n"
        "  list(i = i * i, user = Sys.info()[['effective_user']],\n"
        "       host = Sys.info()[['nodename']]))\n"
        "cat(paste0('RESULT ', paste(vapply(who, function(w)\n"
        "  paste(w$i, w$user, w$host, sep = ','), ''), collapse = ';'), '\\n'))\n"
        "sshcluster_stop()\n", tmp_path)
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    rows = [row.split(",") for row in line.removeprefix("RESULT ").split(";")]
    assert [int(r[0]) for r in rows] == [i * i for i in range(1, 9)]
    assert {r[1] for r in rows} == {shell_user}
    assert {r[2] for r in rows} == {h.hostname for h in hosts}

    # Nothing of that account's is left running on any host.
    deadline = time.monotonic() + 15
    while processes_of(shell_user) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_of(shell_user) == [], json.dumps(processes_of(shell_user))
    assert nothing_left(tb, marker=tmp_path) == {}
