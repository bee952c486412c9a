"""push as an ordinary user (not root) on real SSH test hosts, each with a login
directory of its own (a private tmpfs there, as on real machines): a relative DEST
(``workdir: ~/work``, ``~``, ``.``, ``~/x``) is relative to it."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sshcluster
from sshcluster.inventory import load_inventory
from sshcluster.testing import Testbed
from sshcluster.testing.fixtures import MakeTestbed

from .helpers import local_state, make_tree, remote_state


@pytest.fixture
def host_user(root: None) -> Iterator[tuple[str, Path]]:
    """A throwaway account (login shell /bin/sh) and its login directory's path. The test
    hosts share this machine's accounts; :func:`_testbed` gives each host its own login
    directory there."""
    name = f"scpush{secrets.token_hex(3)}"
    home = Path(tempfile.mkdtemp(prefix=f"sshcluster-{name}-"))
    home.chmod(0o755)  # (the mount point: the account must reach its tmpfs)
    try:
        subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell",
                        "/bin/sh", "--user-group",
                        # no password, but not locked: sshd refuses a locked account ("!")
                        "--password", "*", name], check=True, capture_output=True)
        try:
            yield name, home
        finally:
            # (userdel refuses while a process of the account runs: its sessions end
            # with the testbed's hosts)
            deadline = time.monotonic() + 15
            while _pids(name) and time.monotonic() < deadline:
                time.sleep(0.1)
            for pid in _pids(name):
                subprocess.run(["kill", "-KILL", pid], capture_output=True)
            subprocess.run(["userdel", name], check=True, capture_output=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _pids(user: str) -> list[str]:
    return subprocess.run(["pgrep", "-u", user], capture_output=True, text=True).stdout.split()


def _testbed(make_testbed: MakeTestbed, user: str, home: Path, n: int) -> Testbed:
    """``n`` hosts, each with a login directory of its own for ``user``, which the
    testbed's client key may log in to."""
    tb = make_testbed(n, private_dirs={str(home): "32m"})
    key = Path(f"{tb.identity_file}.pub").read_text()
    for h in tb.hosts:
        subprocess.run(tb.ssh_argv(h, f"mkdir -p {home}/.ssh && cat > {home}/.ssh/"
                                   f"authorized_keys && chown -R {user}: {home}"),
                       input=key, text=True, check=True, timeout=30)
    return tb


def _inventory(tb: Testbed, tmp_path: Path, user: str, **extra: object) -> sshcluster.Inventory:
    return load_inventory(tb.write_inventory(tmp_path / "hosts.yaml", ncore=1, extra={
        "defaults": {"user": user, "identity_file": str(tb.identity_file), "ncore": 1},
        **extra}))


def _on_host(tb: Testbed, host: object, command: str) -> str:
    return subprocess.run(tb.ssh_argv(host, command),  # type: ignore[arg-type]
                          capture_output=True, text=True, timeout=60, check=True).stdout


def test_a_relative_dest_is_in_the_login_directory(
    make_testbed: MakeTestbed, tmp_path: Path, host_user: tuple[str, Path]
) -> None:
    user, home = host_user
    tb = _testbed(make_testbed, user, home, 2)
    inv = _inventory(tb, tmp_path, user, workdir="~/work")
    assert inv.workdir == "work"
    data = make_tree(tmp_path / "src", small=20, big=1 << 20)
    single = tmp_path / "src" / "model.rds"
    single.write_bytes(os.urandom(5000))

    result = sshcluster.push(inv, [data, single])
    assert result.ok, result.to_json()
    digest = hashlib.sha256(single.read_bytes()).hexdigest()
    want = local_state(data) | {"model.rds": ("644", digest)}
    for h in tb.hosts:
        assert remote_state(tb, h, f"{home}/work") == want, h.hostname
    again = sshcluster.push(inv, [data, single])
    assert again.ok and again.bytes_out == 0, again.to_json()

    # ~, ~/x and . through the API: the login directory, and x in it (not a directory
    # named ~ there)
    for dest, rel in (("~", "model.rds"), ("~/x/", "x/model.rds"), (".", "model.rds")):
        result = sshcluster.push(inv, [single], dest=dest)
        assert result.ok, (dest, result.to_json())
        for h in tb.hosts:
            assert _on_host(tb, h, f"sha256sum < {home}/{rel}").split()[0] == digest
            assert "~" not in _on_host(tb, h, f"ls -A {home}").split(), dest
    with pytest.raises(sshcluster.PushError, match="another user's home"):
        sshcluster.push(inv, [single], dest="~root/x")
