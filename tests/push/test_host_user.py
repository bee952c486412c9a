"""push as an ordinary user (not root) on real SSH test hosts, each with a login
directory of its own (a private tmpfs there, as on real machines): a relative DEST
(``workdir: ~/work``, ``~``, ``.``, ``~/x``) is relative to it, and a source's read-only
directories arrive with their modes, take a changed file the next time, and leave no
staging directory behind, also when the push fails."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import sshcluster
from sshcluster.inventory import load_inventory
from sshcluster.push.manifest import local_manifest
from sshcluster.push.stream import tar_stream
from sshcluster.push.transfer import Session, script, verdicts
from sshcluster.testing import Testbed
from sshcluster.testing.accounts import throwaway_account
from sshcluster.testing.fixtures import MakeTestbed

from .helpers import local_state, make_tree, remote_state


@pytest.fixture
def host_user(root: None) -> Iterator[tuple[str, Path]]:
    """A throwaway account (login shell /bin/sh) and its login directory's path. The test
    hosts share this machine's accounts; :func:`_testbed` gives each host its own login
    directory there."""
    with throwaway_account("/bin/sh", "scpush") as account:
        yield account


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


def test_read_only_directories_arrive_and_take_changes(
    make_testbed: MakeTestbed, tmp_path: Path, host_user: tuple[str, Path]
) -> None:
    user, home = host_user
    tb = _testbed(make_testbed, user, home, 2)
    inv = _inventory(tb, tmp_path, user, workdir=f"{home}/work")
    data = make_tree(tmp_path / "src", small=20, big=1 << 20)
    for d in (data / "d3" / "e1", data / "d3", data):
        d.chmod(0o555)

    def dir_modes(h: object) -> dict[str, str]:
        out = _on_host(tb, h, f"cd {home}/work && find data -type d -printf '%m %p\\n'")
        return {p: m for m, p in (line.split(" ", 1) for line in out.splitlines())}

    want_dirs = {str(p.relative_to(data.parent)): oct(p.stat().st_mode & 0o777)[2:]
                 for p in [data, *data.rglob("*")] if p.is_dir()}
    for _ in range(2):  # the second push: into read-only directories already there
        result = sshcluster.push(inv, [data])
        assert result.ok, result.to_json()
        for h in tb.hosts:
            assert remote_state(tb, h, f"{home}/work") == local_state(data), h.hostname
            assert dir_modes(h) == want_dirs
            assert ".sshcluster-push" not in _on_host(tb, h, f"ls -A {home}/work")
        f = data / "d3" / "e1" / "f10.csv"
        (data / "d3" / "e1").chmod(0o755)
        f.write_text("changed\n")
        os.utime(f, (time.time() + 5, time.time() + 5))
        (data / "d3" / "e1").chmod(0o555)
    assert result.hosts[0].detail == "1 file, 8 bytes sent"


def test_a_failed_push_of_read_only_directories_leaves_no_staging(
    make_testbed: MakeTestbed, tmp_path: Path, host_user: tuple[str, Path]
) -> None:
    # An archive whose content does not match its sums (one byte flipped), fed to
    # remote.sh as the primary would: verification fails, and the staging directory,
    # with its 0555 directories, must go.
    user, home = host_user
    tb = _testbed(make_testbed, user, home, 1)
    inv = _inventory(tb, tmp_path, user)
    data = make_tree(tmp_path / "src", small=5, big=1 << 20)
    for d in (data / "d3" / "e0", data):
        d.chmod(0o555)
    manifest = local_manifest([data])
    archive = io.BytesIO()
    tar_stream(manifest.files, [e for e in manifest.entries if e.kind == "d"], archive)
    raw = bytearray(archive.getvalue())
    raw[raw.find((data / "big.bin").read_bytes()[:4096]) + 1000] ^= 0xFF
    head = inv.hosts[0]
    proc = Session(inv, head).popen(["receive", "work", head.label])
    out, err = proc.communicate(script() + bytes(raw), timeout=120)
    assert _on_host(tb, tb.hosts[0], f"ls -A {home}/work") == "", err
    ok, why = verdicts(out)[head.label]
    assert not ok and why.startswith("verification failed: ./data/big.bin: FAILED"), why
