"""The setup's apt, run for real on a local SSH test host dressed as a fresh instance
(see :mod:`tests.ec2.test_userdata_real`): apt stand-ins that behave as apt does at
first boot, when the image's own apt job still holds the lists lock."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sshcluster import ec2
from sshcluster.ec2.ready import STATUS_COMMAND
from sshcluster.ec2.userdata import CRAN_KEYS, SETUP_LOG, STATUS_FILE

from .test_userdata_real import FakeInstance, spec_for

#: A tiny R package the stand-in apt-get "installs" (R CMD INSTALL into a tmpfs that
#: covers the site library in the test host's mount namespace only).
PACKAGE = "aptlockprobe"
LOCK = "/var/lib/apt/lists/lock"

#: apt-get as apt behaves: 'update' takes the lists lock and fails at once if it is held
#: (apt's fcntl lock stands in for flock here; holder and stand-in agree on it).
APT_GET = f"""\
case " $* " in
*" update "*)
  mkdir -p {LOCK.rsplit("/", 1)[0]}
  exec 9> {LOCK}
  if ! flock -n 9; then
    echo "E: Could not get lock {LOCK}. It is held by process 4242 (apt-get)" >&2
    exit 100
  fi
  exit 0;;
*" install "*)
  for p in "$@"; do
    case $p in r-cran-*) R CMD INSTALL -l /usr/local/lib/R/site-library "$SRC/${{p#r-cran-}}" \\
      || exit 100;; esac
  done
  exit 0;;
esac
exit 1
"""


def r_package(where: Path) -> Path:
    src = where / PACKAGE
    src.mkdir(parents=True)
    (src / "DESCRIPTION").write_text(
        f"Package: {PACKAGE}\nVersion: 0.1\nTitle: Probe\nDescription: A probe.\n"
        "License: MIT\nAuthor: t\nMaintainer: t <t@example.org>\n")
    (src / "NAMESPACE").write_text("")
    return where


@pytest.fixture
def locked(make_testbed: Any, tmp_path: Path) -> Iterator[tuple[FakeInstance, int]]:
    """A fresh instance whose lists lock an apt job holds until the test lets it go
    (at most 120 s); the pid of that holder (its own session)."""
    tb = make_testbed(1)
    src = r_package(tmp_path / "src")
    machine = FakeInstance(
        tb, tb.hosts[0], tmp_path / "node",
        fakes={"apt-get": f"SRC={src}\n{APT_GET}", "apt-cache": "exit 0\n"},
        mounts="mount -t tmpfs tmpfs /usr/local/lib/R/site-library")
    pid = int(machine.inside(
        f"mkdir -p {LOCK.rsplit('/', 1)[0]}; setsid flock {LOCK} sleep 120 "
        "< /dev/null > /dev/null 2>&1 & echo $!").strip())
    try:
        # (the holder runs in the background: on a busy machine it may not hold the lock
        # yet when the test first looks)
        deadline = time.monotonic() + 20
        while machine.inside(f"flock -n {LOCK} true && echo free || echo held").strip() == "free":
            assert time.monotonic() < deadline, "the apt job did not take the lock in 20 s"
            time.sleep(0.1)
        yield machine, pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)


@pytest.mark.slow
def test_the_setup_waits_for_the_apt_lists_lock_and_succeeds(
        locked: tuple[FakeInstance, int]) -> None:
    machine, holder = locked
    assert machine.inside(f"flock -n {LOCK} true || echo held").strip() == "held"
    spec = spec_for(machine.testbed, "ami-0123456789abcdef0", "", r_packages=(PACKAGE,))
    machine.boot(ec2.user_data(spec, ec2.utcnow() + timedelta(hours=1)))
    waiting = f"{LOCK} is held by another apt process; retrying in 5 s"
    deadline = time.monotonic() + 100  # (hang guards; the holder ends by itself at 120 s)
    while waiting not in machine.read(SETUP_LOG):  # the setup found the lock held...
        assert time.monotonic() < deadline and not machine.read(STATUS_FILE).startswith(
            ("ready", "failed")), machine.read(SETUP_LOG)
        time.sleep(0.5)
    os.killpg(holder, signal.SIGTERM)  # ...and the apt job that held it ends
    deadline = time.monotonic() + 100
    while not machine.read(STATUS_FILE).startswith(("ready", "failed")):
        assert time.monotonic() < deadline, machine.read(SETUP_LOG)
        time.sleep(1)
    log = machine.read(SETUP_LOG)
    assert machine.read(STATUS_FILE).startswith("ready R version 4."), log
    asked = machine.asked.read_text().splitlines()
    updates = [x for x in asked if x.startswith("apt-get") and x.endswith(" update")]
    assert len(updates) >= 2  # refused while the lock was held, then done
    assert any(x.endswith(f"install --no-install-recommends r-cran-{PACKAGE}") for x in asked)


@pytest.mark.parametrize("schedules", [True, False])
def test_the_status_shows_whether_the_shutdown_is_scheduled(
        make_testbed: Any, tmp_path: Path, schedules: bool) -> None:
    tb = make_testbed(1)
    # 'shutdown' (a link to systemctl) that schedules, or one that refuses as a host
    # without systemd would; apt installs nothing
    systemctl = 'case $(basename "$0") in shutdown) exit 0;; esac\nexit 1\n'
    machine = FakeInstance(tb, tb.hosts[0], tmp_path / "node", fakes={
        "systemctl": systemctl if schedules else "exit 1\n"})
    spec = spec_for(tb, "ami-0123456789abcdef0", "")
    machine.boot(ec2.user_data(spec, ec2.utcnow() + timedelta(hours=1)))
    status = ec2.SetupStatus.parse(machine.inside(STATUS_COMMAND))
    assert status.state in ("running", "ready")
    assert "shutdown -h +" in machine.asked.read_text()
    assert status.armed is schedules


def test_packages_built_from_cran_ask_for_r_recommended_first(
        make_testbed: Any, tmp_path: Path) -> None:
    tb = make_testbed(1)
    # apt that installs nothing: refreshes, knows no r-cran-aptlockprobe, refuses installs
    machine = FakeInstance(tb, tb.hosts[0], tmp_path / "node", fakes={
        "apt-get": 'case " $* " in *" update "*) exit 0;; esac\n'
                   'echo "E: Unable to locate package r-recommended" >&2\nexit 100\n'})
    spec = spec_for(tb, "ami-0123456789abcdef0", "", r_packages=(PACKAGE,))
    data = ec2.user_data(spec, ec2.utcnow() + timedelta(hours=1))
    # the binary repository is only written into the user data, never fetched here
    assert "repos=binaries" in data
    assert 'https://packagemanager.posit.co/cran/__linux__/$codename/$snapshot' in data
    machine.boot(data)
    deadline = time.monotonic() + 60
    while not machine.read(STATUS_FILE).startswith(("ready", "failed")):
        assert time.monotonic() < deadline, machine.read(SETUP_LOG)
        time.sleep(0.5)
    assert machine.read(STATUS_FILE).strip() == (
        f"failed: installing r-base-dev r-recommended (to build {PACKAGE})")
    asked = machine.asked.read_text()
    assert f"apt-cache show r-cran-{PACKAGE}" in asked
    assert "install --no-install-recommends r-base-dev r-recommended" in asked


def _signing_key(where: Path) -> tuple[str, str]:
    """A fresh OpenPGP key (no passphrase) in its own GnuPG home: (fingerprint, the
    armored public key), standing in for CRAN's signing key on the keyserver."""
    home = where / "gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    subprocess.run(["gpg", "--batch", "--quiet", "--passphrase", "", "--quick-gen-key",
                    "CRAN stand-in <cran@example.org>", "ed25519", "sign", "1d"],
                   env=env, check=True, capture_output=True, timeout=60)
    colons = subprocess.run(["gpg", "--batch", "--with-colons", "--fingerprint"], env=env,
                            check=True, capture_output=True, text=True, timeout=60).stdout
    fpr = next(line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:"))
    armored = subprocess.run(["gpg", "--batch", "--armor", "--export", fpr], env=env,
                             check=True, capture_output=True, text=True, timeout=60).stdout
    # (the key's generation started a gpg-agent for that home: it must not outlive the test)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], env=env,
                   check=True, capture_output=True, timeout=60)
    return fpr, armored


@pytest.mark.parametrize("genuine", [True, False], ids=["cran-key", "another-key"])
def test_r_version_cran_adds_crans_repository_with_its_checked_key(
        make_testbed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        genuine: bool) -> None:
    """r_version: cran on a Debian instance: the signing key is fetched by fingerprint
    and checked, the repository is written with that key alone (signed-by), and R comes
    from it; a key with another fingerprint stops the setup before apt trusts anything."""
    fpr, armored = _signing_key(tmp_path)
    expected = fpr if genuine else "0" * 40
    monkeypatch.setitem(CRAN_KEYS, "debian", expected)
    served = tmp_path / "key.asc"
    served.write_text(armored)
    tb = make_testbed(1)
    node = tmp_path / "node"
    # (apt's own configuration is a tmpfs in the test host's mount namespace only)
    machine = FakeInstance(tb, tb.hosts[0], node, fakes={
        "apt-get": "exit 0\n", "curl": f"cat {served}\n"},
        mounts=f"mount -t tmpfs tmpfs /etc/apt; mount --bind {node}/curl /usr/bin/curl")
    spec = spec_for(tb, "ami-0123456789abcdef0", "", r_version="cran")
    machine.boot(ec2.user_data(spec, ec2.utcnow() + timedelta(hours=1)))
    deadline = time.monotonic() + 60
    while not machine.read(STATUS_FILE).startswith(("ready", "failed")):
        assert time.monotonic() < deadline, machine.read(SETUP_LOG)
        time.sleep(0.5)
    log, asked = machine.read(SETUP_LOG), machine.asked.read_text().splitlines()
    assert any(x.startswith("curl ") and x.endswith(f"search=0x{expected}") for x in asked)
    listing = machine.read("/etc/apt/sources.list.d/sshcluster-cran.list")
    if not genuine:
        assert machine.read(STATUS_FILE).strip() == (
            f"failed: the key fetched from https://keyserver.ubuntu.com is not CRAN's "
            f"signing key {expected}"), log
        assert listing == "" and not any("r-base-core" in x for x in asked)
        return
    assert machine.read(STATUS_FILE).startswith("ready R version 4."), log
    assert listing == ("deb [signed-by=/etc/apt/keyrings/sshcluster-cran.gpg] "
                       "https://cloud.r-project.org/bin/linux/debian bookworm-cran40/\n")
    home = tmp_path / "gnupg"
    keyring = machine.inside(f"GNUPGHOME={home} gpg --batch --with-colons --show-keys "
                             f"/etc/apt/keyrings/sshcluster-cran.gpg; gpgconf --homedir {home} "
                             "--kill all")
    assert next(ln.split(":")[9] for ln in keyring.splitlines() if ln.startswith("fpr:")) == fpr
    # R is installed after the update that reads the new repository
    updates = [i for i, x in enumerate(asked) if x.endswith(" update")]
    install = asked.index("apt-get -q -y -o DPkg::Lock::Timeout=600 install "
                          "--no-install-recommends r-base-core r-recommended")
    assert updates and updates[-1] < install
