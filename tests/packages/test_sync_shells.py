"""sync on a host whose login shell is not a POSIX shell (tcsh, fish): every session's
script reaches sh through stdin, as the check's and the launch's do (a multi-line
script on ssh's command line is read by csh as csh, line by line)."""

from __future__ import annotations

import pwd
import shutil
from pathlib import Path

import pytest
import yaml

import sshcluster
from sshcluster.inventory import load_inventory
from sshcluster.testing import Testbed
from sshcluster.testing.rpackages import PURE, build_all, install
from tests.test_login_shells import shell_user  # noqa: F401  (the fixture)


def test_sync_copies_to_a_host_whose_login_shell_is_not_posix(
        testbed: Testbed, tmp_path: Path, shell_user: str,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    account = pwd.getpwnam(shell_user)
    ssh_dir = Path(account.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "authorized_keys").write_text(Path(f"{testbed.identity_file}.pub").read_text())
    for p in (ssh_dir, ssh_dir / "authorized_keys"):
        shutil.chown(p, user=shell_user)
    built = build_all(tmp_path / "rpkgs", {PURE: ("2.0",)}, compiled=set(),
                      repo_versions={PURE: "2.0"})
    primary_lib = tmp_path / "primary-lib"
    install(built, primary_lib, PURE, "2.0")
    monkeypatch.setenv("R_LIBS", str(primary_lib))
    host = testbed.hosts[0]
    path = testbed.write_inventory(tmp_path / "hosts.yaml", ncore=1, extra={
        "defaults": {"user": shell_user, "identity_file": str(testbed.identity_file),
                     "ncore": 1},
        "hosts": [{"host": host.address, "ssh_port": host.ssh_port}],
        "r_packages": [PURE], "repos": [built.url]})
    doc = yaml.safe_load(path.read_text())
    assert doc["hosts"] == [{"host": host.address, "ssh_port": host.ssh_port}]
    inv = load_inventory(path)

    before = sshcluster.check(inv, timeout=60)
    label = inv.hosts[0].label
    assert before[label].checks["packages"].status == "failed"
    synced = sshcluster.sync(inv, timeout=300)
    assert synced.ok, synced.verdicts()
    assert [h.outcome for h in synced.hosts] in (["copied"], ["installed"])
    after = sshcluster.check(inv, timeout=60)
    assert after[label].checks["packages"].status == "ok", after[label].checks["packages"]
    assert (Path(account.pw_dir) / ".cache" / "sshcluster").is_dir()
