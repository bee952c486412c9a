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
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sshcluster.bootstrap import write_bootstrap
from sshcluster.check.preflight import check
from sshcluster.inventory import load_inventory
from sshcluster.testing import Testbed
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
    name = f"sc{request.param[:4]}{secrets.token_hex(2)}"
    home = Path(tempfile.mkdtemp(prefix=f"sshcluster-{name}-"))
    try:
        subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell",
                        shell, "--user-group",
                        # no password, but not locked: sshd refuses a locked account ("!")
                        "--password", "*", name],
                       check=True, capture_output=True)
        try:
            shutil.chown(home, user=name)
            home.chmod(0o755)
            yield name
        finally:
            # (userdel refuses while a process of the account runs)
            deadline = time.monotonic() + 15
            while _processes_of(name) and time.monotonic() < deadline:
                subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
                time.sleep(0.1)
            subprocess.run(["userdel", name], check=True, capture_output=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _processes_of(user: str) -> list[str]:
    out = subprocess.run(["pgrep", "-a", "-u", user], capture_output=True, text=True)
    return out.stdout.splitlines()


def test_the_check_and_the_launch_agree_on_a_non_posix_login_shell(
        testbed: Testbed, tmp_path: Path, shell_user: str) -> None:
    tb = testbed
    account = pwd.getpwnam(shell_user)
    assert account.pw_shell.endswith(("tcsh", "fish"))
    # The testbed's client key may log in to that account (its hosts' sshd reads
    # ~/.ssh/authorized_keys).
    ssh_dir = Path(account.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    pub = Path(f"{tb.identity_file}.pub").read_text()
    (ssh_dir / "authorized_keys").write_text(pub)
    for p in (ssh_dir, ssh_dir / "authorized_keys"):
        shutil.chown(p, user=shell_user)
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
    while _processes_of(shell_user) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_of(shell_user) == [], json.dumps(_processes_of(shell_user))
    assert nothing_left(tb, marker=tmp_path) == {}
