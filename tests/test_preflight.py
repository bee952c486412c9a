"""``sshcluster check`` against real SSH test hosts, with real faults.

Every fault is made for real on one host of a local testbed (iptables in its network
namespace, a stopped sshd, a wrong key, a replaced host key, a missing Rscript or R
package, a firewall between it and the primary); the check must report it at the right
step, keep the other hosts ok, and end within its deadline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from sshcluster.check.preflight import check, verified_inventory
from sshcluster.check.report import STEPS, CheckReport
from sshcluster.cli import cli
from sshcluster.errors import CheckFailed
from sshcluster.inventory import Inventory, load_inventory
from sshcluster.testing import Testbed, TestHost, free_port
from sshcluster.testing.fixtures import build_testbed, squatter

#: A hang guard, not a speed test: a run ends within its timeout, and a test fails only
#: past this many times it (a busy 2-core machine can be slow; timings are benchmarks').
GUARD = 3


@pytest.fixture(scope="module")
def tb(request: pytest.FixtureRequest, testbed_env: None) -> Iterator[Testbed]:
    """Four SSH hosts for this module (its own: some tests change host keys)."""
    yield build_testbed(request, 4)


@pytest.fixture(scope="module")
def known_hosts(tb: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's known_hosts (a copy: tests that change host keys keep it up to date)."""
    path = tmp_path_factory.mktemp("kh") / "known_hosts"
    shutil.copy(tb.known_hosts, path)
    return path


def ssh_config_of(inventory: Path | str) -> Path:
    """The ssh config written next to an inventory by :func:`write_inventory`."""
    return Path(inventory).with_suffix(".ssh_config")


def write_inventory(tb: Testbed, path: Path, known_hosts: Path, *, ncore: Any = 2,
                    port: int | None = None, hosts: dict[int, dict[str, Any]] | None = None,
                    identity_in_config: bool = True, **extra: Any) -> Inventory:
    """Write an inventory for ``tb`` (per-host overrides in ``hosts``) and load it.

    As a user keeps them: the host keys (``known_hosts``) and the identity in an ssh
    config of this test's own (next to the inventory, for ``check -F``), not in the
    inventory; with ``identity_in_config=False`` the inventory names the identity. The
    workers call back directly (``tunnel: none``) unless ``extra`` says otherwise: these
    tests are about what the network between them and the primary does."""
    tb.write_inventory(path, ncore=2, port=port)
    doc = yaml.safe_load(path.read_text())
    del doc["known_hosts"]
    if identity_in_config:
        del doc["defaults"]["identity_file"]
    doc["defaults"]["ncore"] = ncore
    for i, fields in (hosts or {}).items():
        doc["hosts"][i].update(fields)
    doc["tunnel"] = "none"
    doc.update(extra)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    identity = f"  IdentityFile {tb.identity_file}\n" if identity_in_config else ""
    ssh_config_of(path).write_text(
        f"Host *\n  UserKnownHostsFile {known_hosts}\n  GlobalKnownHostsFile /dev/null\n"
        f"{identity}  IdentitiesOnly yes\n  IdentityAgent none\n  HashKnownHosts no\n")
    return load_inventory(path)


def run_check(inv: Inventory, timeout: float = 8.0, **kwargs: Any) -> CheckReport:
    t0 = time.monotonic()
    assert inv.path is not None
    report = check(inv, timeout=timeout, ssh_config=[str(ssh_config_of(inv.path))], **kwargs)
    elapsed = time.monotonic() - t0
    assert elapsed < GUARD * timeout, f"the check took {elapsed:.1f} s, deadline {timeout} s"
    return report


def iptables(host: TestHost, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", host.netns, "iptables", "-w", "5", *args],
                   check=True, capture_output=True)


def assert_only(report: CheckReport, bad: int, step: str) -> None:
    """Host ``bad`` failed exactly at ``step`` (later dependent steps skipped); others ok."""
    for i, h in enumerate(report.hosts):
        if i == bad:
            assert h.failed == [step], (h.label, {s: h.checks[s] for s in STEPS})
        else:
            assert h.ok, (h.label, {s: h.checks[s] for s in STEPS if h.checks[s].status
                                    == "failed"})
    assert not report.ok


# --------------------------------------------------------------------------- all good


def test_all_hosts_ok(tb: Testbed, known_hosts: Path, tmp_path: Path) -> None:
    inv = write_inventory(tb, tmp_path / "inv.yaml", known_hosts, r_packages=["parallel"])
    report = run_check(inv)
    assert report.ok, report.summary()
    assert report.primary == tb.primary_address
    assert 11000 <= report.port <= 11999
    for h in report.hosts:
        assert all(h.checks[s].status in ("ok", "warning") for s in STEPS)
        assert h.rscript and h.rscript.endswith("Rscript")
        assert h.r_version and h.r_version.count(".") == 2
        assert h.seen_primary == tb.primary_address
        assert "nonce checked" in h.checks["callback"].detail
    doc = json.loads(report.to_json())
    assert doc["ok"] is True and [h["host"] for h in doc["hosts"]] == [
        h.address for h in tb.hosts]


# --------------------------------------------------------------------------- fault matrix


def test_black_holed_ssh_port_fails_connect_within_deadline(
        tb: Testbed, known_hosts: Path, tmp_path: Path) -> None:
    host = tb.hosts[0]
    rule = ["INPUT", "-p", "tcp", "--dport", str(host.ssh_port), "-j", "DROP"]
    iptables(host, "-I", *rule)
    try:
        report = run_check(write_inventory(tb, tmp_path / "i.yaml", known_hosts), timeout=4)
    finally:
        iptables(host, "-D", *rule)
    assert_only(report, 0, "connect")
    assert "deadline" in report.hosts[0].checks["connect"].detail


def test_stopped_sshd_is_refused(tb: Testbed, known_hosts: Path, tmp_path: Path) -> None:
    tb.stop_sshd(tb.hosts[1])
    try:
        report = run_check(write_inventory(tb, tmp_path / "i.yaml", known_hosts))
    finally:
        tb.start_sshd(tb.hosts[1])
    assert_only(report, 1, "connect")
    assert "refused" in report.hosts[1].checks["connect"].detail.lower()


def test_wrong_client_key_fails_auth(tb: Testbed, known_hosts: Path, tmp_path: Path) -> None:
    key = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    inv = write_inventory(tb, tmp_path / "i.yaml", known_hosts, identity_in_config=False,
                          hosts={2: {"identity_file": str(key)}})
    report = run_check(inv)
    assert_only(report, 2, "auth")
    auth = report.hosts[2].checks["auth"]
    assert "permission denied" in auth.detail.lower() and auth.hint


def test_rscript_that_does_not_exist(tb: Testbed, known_hosts: Path, tmp_path: Path) -> None:
    inv = write_inventory(tb, tmp_path / "i.yaml", known_hosts,
                          hosts={3: {"rscript": "/opt/nowhere/bin/Rscript"}})
    report = run_check(inv)
    assert_only(report, 3, "rscript")
    bad = report.hosts[3]
    assert bad.checks["packages"].status == "skipped"
    assert bad.checks["callback"].status == "skipped"
    assert bad.checks["reverse_ssh"].status == "ok"  # does not need R
    assert "/opt/nowhere/bin/Rscript" in bad.checks["rscript"].detail


def test_missing_r_package(tb: Testbed, known_hosts: Path, tmp_path: Path) -> None:
    # All test hosts share one R install, so host 0 gets an Rscript that cannot see the
    # site library, where the Debian r-cran-* packages live.
    wrapper = tmp_path / "Rscript-bare"
    wrapper.write_text(f"#!/bin/sh\nR_LIBS_SITE=/nonexistent exec {shutil.which('Rscript')} "
                       '"$@"\n')
    wrapper.chmod(0o755)
    inv = write_inventory(tb, tmp_path / "i.yaml", known_hosts, r_packages=["parallelly"],
                          hosts={0: {"rscript": str(wrapper)}})
    report = run_check(inv)
    assert_only(report, 0, "packages")
    assert "parallelly" in report.hosts[0].checks["packages"].detail
    # (a warning where this machine's resolver is slow to name the host: R's accept
    # would wait for it too; tests/test_callback_lookup.py)
    assert report.hosts[0].checks["callback"].status in ("ok", "warning")


@pytest.mark.parametrize("action", ["REJECT", "DROP"])
def test_callback_blocked(action: str, tb: Testbed, known_hosts: Path,
                          tmp_path: Path) -> None:
    port = free_port()
    host = tb.hosts[1]
    tb.reject(host, port, action=action)  # type: ignore[arg-type]
    try:
        report = run_check(write_inventory(tb, tmp_path / "i.yaml", known_hosts, port=port),
                           timeout=6)
    finally:
        tb.allow(host, port)
    assert report.port == port
    assert_only(report, 1, "callback")
    cb = report.hosts[1].checks["callback"]
    assert ("refused" in cb.detail) if action == "REJECT" else ("no answer" in cb.detail)
    assert cb.hint and "--tunnel reverse" in cb.hint


def test_callback_through_the_reverse_tunnel(tb: Testbed, known_hosts: Path,
                                            tmp_path: Path) -> None:
    """With tunnel: reverse the check calls back as the launch will: through an ssh
    reverse forward. A host whose direct path is blocked passes; a host where someone
    already listens on 127.0.0.1:PORT fails, naming the tunnel, and is never hijacked."""
    port = free_port()
    blocked, squatted = tb.hosts[1], tb.hosts[2]
    tb.reject(blocked, port)
    try:
        with squatter(squatted, port):
            inv = write_inventory(tb, tmp_path / "i.yaml", known_hosts, port=port,
                                  tunnel="reverse")
            report = run_check(inv, timeout=6)
            direct = run_check(inv, timeout=6, tunnel=False)
    finally:
        tb.allow(blocked, port)
    assert_only(report, 2, "callback")
    assert "through the reverse tunnel" not in report.hosts[2].checks["callback"].detail
    assert report.hosts[2].checks["callback"].detail.startswith(
        f"the reverse tunnel cannot listen on 127.0.0.1:{port} on {squatted.address}")
    assert "(the reverse tunnel)" in report.hosts[1].checks["callback"].detail
    # The same inventory checked without the tunnel: the blocked host fails, as it would.
    assert [h.host.host for h in direct.failed] == [blocked.address]


#: A stranger on the network: floods the check's callback port with long lines, many
#: lines, garbage and connections that stall, from several threads, for a while.
ATTACKER = r"""
import os, socket, sys, threading, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + seconds
made = [0]
held = []
def flood(kind):
    while time.monotonic() < end:
        try:
            s = socket.create_connection((host, port), timeout=1)
        except OSError:
            time.sleep(0.01)
            continue
        made[0] += 1
        try:
            if kind == "long":
                s.sendall(b"A" * (1 << 18))
            elif kind == "lines":
                s.sendall((b"B" * 1000 + b"\n") * 100)
            elif kind == "garbage":
                s.sendall(os.urandom(4096))
            else:
                s.sendall(b"ab")  # and nothing more
                held.append(s)
                continue
        except OSError:
            pass
        s.close()
threads = [threading.Thread(target=flood, args=(kind,), daemon=True)
           for kind in ("long", "lines", "garbage", "stall") for _ in range(2)]
for t in threads:
    t.start()
print("up", flush=True)
for t in threads:
    t.join()
print(made[0], flush=True)
"""


def test_a_stranger_flooding_the_callback_port(tb: Testbed, known_hosts: Path,
                                               tmp_path: Path) -> None:
    """A real attacker process on another test host floods the port the workers call back
    to, for the whole check: the genuine hosts pass, nothing prints a traceback, the run
    keeps its deadline, and the report counts what was turned away."""
    port = free_port()
    attacker_host = tb.hosts[3]
    path = tmp_path / "i.yaml"
    write_inventory(tb, path, known_hosts, port=port)
    doc = yaml.safe_load(path.read_text())
    doc["hosts"] = doc["hosts"][:3]  # the attacker's host is not checked
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    attacker = subprocess.Popen(
        ["ip", "netns", "exec", attacker_host.netns, "python3", "-c", ATTACKER,
         tb.primary_address, str(port), "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert attacker.stdout is not None and attacker.stdout.readline() == "up\n"
        t0 = time.monotonic()
        # It floods a closed port until the check listens: the flood meets it from the start.
        proc = subprocess.run(
            [sys.executable, "-m", "sshcluster", "check", str(path), "--timeout", "10",
             "-F", str(ssh_config_of(path))],
            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
        took = time.monotonic() - t0
    finally:
        attacker.kill()
        attacker.communicate(timeout=10)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 of 3 hosts ready" in proc.stdout
    for word in ("Traceback", "Exception", "exception", "Task was destroyed"):
        assert word not in proc.stdout + proc.stderr
    assert took < GUARD * 10
    assert re.search(rf"turned away \d+ connections without a valid nonce \("
                     rf"{re.escape(attacker_host.address)}: \d+\)", proc.stdout)


def test_callback_port_taken_on_the_primary(tb: Testbed, known_hosts: Path,
                                            tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        report = run_check(write_inventory(tb, tmp_path / "i.yaml", known_hosts, port=port))
    for h in report.hosts:
        assert h.failed == ["callback"]
        cb = h.checks["callback"]
        assert f"cannot listen on port {port}" in cb.detail and cb.hint


def test_ssh_back_to_primary_refused(tb: Testbed, known_hosts: Path, tmp_path: Path) -> None:
    """No launch logs in from a worker to the primary: a refused reverse ssh is a
    warning with its hint, unless the inventory says reverse_ssh: required."""
    host = tb.hosts[2]
    tb.reject(host, tb.primary_ssh_port)
    try:
        optional = run_check(write_inventory(tb, tmp_path / "i.yaml", known_hosts))
        required = run_check(write_inventory(tb, tmp_path / "r.yaml", known_hosts,
                                             reverse_ssh="required"))
    finally:
        tb.allow(host, tb.primary_ssh_port)
    assert optional.ok, optional.summary()
    warned = optional.hosts[2].checks["reverse_ssh"]
    assert warned.status == "warning" and "refused" in warned.detail and warned.hint
    assert "the launch does not need it" in warned.detail
    assert "ssh back to" in optional.hosts[0].checks["reverse_ssh"].detail
    assert "the launch does not need it" in optional.hosts[0].checks["reverse_ssh"].detail
    assert_only(required, 2, "reverse_ssh")
    assert "required by the inventory" in required.hosts[2].checks["reverse_ssh"].detail


def test_unknown_host_key_fails_unless_accept_new(tb: Testbed, known_hosts: Path,
                                                  tmp_path: Path) -> None:
    partial = tmp_path / "known_hosts"
    shutil.copy(known_hosts, partial)
    host = tb.hosts[0]
    subprocess.run(["ssh-keygen", "-R", host.address, "-f", str(partial)], check=True,
                   capture_output=True)
    inv = write_inventory(tb, tmp_path / "i.yaml", partial)
    report = run_check(inv)
    assert_only(report, 0, "hostkey")
    hk = report.hosts[0].checks["hostkey"]
    assert "not in known_hosts" in hk.detail and hk.hint and "--accept-new" in hk.hint
    assert host.address not in partial.read_text()

    report = run_check(inv, accept_new=True)
    assert report.ok, report.summary()
    assert "recorded" in report.hosts[0].checks["hostkey"].detail
    assert any(line.startswith(host.address + " ssh-ed25519 ")
               for line in partial.read_text().splitlines())
    assert run_check(inv).ok  # recorded for good


def test_replaced_host_key_fails_loudly_even_with_accept_new(
        tb: Testbed, known_hosts: Path, tmp_path: Path) -> None:
    host = tb.hosts[3]
    tb.replace_host_key(host)
    inv = write_inventory(tb, tmp_path / "i.yaml", known_hosts)
    for accept_new in (False, True):
        report = run_check(inv, accept_new=accept_new)
        assert_only(report, 3, "hostkey")
        hk = report.hosts[3].checks["hostkey"]
        assert "HOST KEY CHANGED" in hk.detail
        assert hk.hint and f"ssh-keygen -R '{host.address}' -f {known_hosts}" in hk.hint
    # What the hint says, then accept-new: the module's known_hosts is right again.
    subprocess.run(["ssh-keygen", "-R", host.address, "-f", str(known_hosts)], check=True,
                   capture_output=True)
    assert run_check(inv, accept_new=True).ok


# --------------------------------------------------------------------------- features


def test_ncore_auto_is_detected_and_filled_in(tb: Testbed, known_hosts: Path,
                                              tmp_path: Path) -> None:
    inv = write_inventory(tb, tmp_path / "i.yaml", known_hosts, ncore="auto")
    assert all(h.ncore is None for h in inv.hosts)
    report = run_check(inv)
    assert report.ok
    cpus = len(os.sched_getaffinity(0))
    assert [h.ncore for h in report.hosts] == [cpus] * len(tb.hosts)
    assert [h["ncore"] for h in report.to_dict()["hosts"]] == [cpus] * len(tb.hosts)
    ready = verified_inventory(report, inv)
    assert [h.ncore for h in ready.hosts] == [cpus] * len(tb.hosts)


def test_declared_ncore_above_detected_is_a_warning(tb: Testbed, known_hosts: Path,
                                                    tmp_path: Path) -> None:
    inv = write_inventory(tb, tmp_path / "i.yaml", known_hosts, ncore=999)
    report = run_check(inv)
    assert report.ok
    assert all(h.checks["cores"].status == "warning" for h in report.hosts)


def test_primary_auto_is_detected(tb: Testbed, known_hosts: Path, tmp_path: Path) -> None:
    inv = write_inventory(tb, tmp_path / "i.yaml", known_hosts,
                          primary={"host": "auto", "user": "root",
                                   **({"ssh_port": tb.primary_ssh_port}
                                      if tb.primary_ssh_port != 22 else {})})
    report = run_check(inv)
    assert report.ok, report.summary()
    assert report.primary == tb.primary_address
    assert report.to_dict()["primary"] == tb.primary_address
    assert verified_inventory(report, inv).primary.host == tb.primary_address


def test_ssh_config_alias(tb: Testbed, known_hosts: Path, tmp_path: Path) -> None:
    inv = write_inventory(tb, tmp_path / "i.yaml", known_hosts)
    doc = yaml.safe_load((tmp_path / "i.yaml").read_text())
    doc["hosts"] = [h.hostname for h in tb.hosts]  # the config's IdentityFile is used
    (tmp_path / "i.yaml").write_text(yaml.safe_dump(doc))
    inv = load_inventory(tmp_path / "i.yaml")
    # The testbed's aliases, with this module's known_hosts first (some tests replace keys).
    config = tmp_path / "config"
    config.write_text(f"Host *\n  UserKnownHostsFile {known_hosts}\n"
                      f"Include {tb.ssh_config}\n")
    report = check(inv, timeout=8, ssh_config=[str(config)])
    assert report.ok, report.summary()
    first = report.hosts[0].checks["resolve"].detail
    assert tb.hosts[0].hostname in first and tb.hosts[0].address in first


def test_concurrency_bound(tb: Testbed, known_hosts: Path, tmp_path: Path) -> None:
    inv = write_inventory(tb, tmp_path / "i.yaml", known_hosts)
    assert run_check(inv, concurrency=1).ok
    # One slot, held by a black-holed host until the deadline: the others never start.
    host = tb.hosts[0]
    rule = ["INPUT", "-p", "tcp", "--dport", str(host.ssh_port), "-j", "DROP"]
    iptables(host, "-I", *rule)
    try:
        report = run_check(inv, concurrency=1, timeout=3)
    finally:
        iptables(host, "-D", *rule)
    assert report.hosts[0].failed == ["connect"]
    for h in report.hosts[1:]:
        assert h.failed == ["resolve"] and "slots" in h.checks["resolve"].detail


def test_allow_partial_drops_failed_hosts(tb: Testbed, known_hosts: Path,
                                          tmp_path: Path) -> None:
    inv = write_inventory(tb, tmp_path / "i.yaml", known_hosts,
                          hosts={1: {"rscript": "/nonexistent/Rscript"}})
    report = run_check(inv)
    with pytest.raises(CheckFailed) as e:
        verified_inventory(report, inv)
    assert e.value.report is report
    ready = verified_inventory(report, inv, allow_partial=True)
    assert [h.host for h in ready.hosts] == [h.address for i, h in enumerate(tb.hosts)
                                            if i != 1]


# --------------------------------------------------------------------------- the command


def test_cli_exit_statuses_and_json(tb: Testbed, known_hosts: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"HOME": str(tmp_path)}  # not the machine's own ~/.ssh
    good = tmp_path / "good.yaml"
    write_inventory(tb, good, known_hosts)
    config = ["-F", str(ssh_config_of(good))]
    result = runner.invoke(cli, ["check", str(good), *config], env=env)
    assert result.exit_code == 0, result.output
    assert "4 of 4 hosts ready" in result.output

    result = runner.invoke(cli, ["check", str(good), "--json", *config], env=env)
    assert result.exit_code == 0
    doc = json.loads(result.stdout)  # nothing but the document
    assert doc["ok"] is True and len(doc["hosts"]) == 4

    bad = tmp_path / "bad.yaml"
    write_inventory(tb, bad, known_hosts, hosts={0: {"rscript": "/nonexistent/Rscript"}})
    result = runner.invoke(cli, ["check", str(bad), "--json", "--timeout", "8", *config],
                           env=env)
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["hosts"][0]["failed"] == ["rscript"]
    result = runner.invoke(cli, ["check", str(bad), *config], env=env)
    assert result.exit_code == 1
    assert "rscript failed: no executable file /nonexistent/Rscript" in result.output

    broken = tmp_path / "broken.yaml"
    broken.write_text("primary: 10.0.0.1\nhosts: []\n")
    result = runner.invoke(cli, ["check", str(broken)], env=env)
    assert result.exit_code == 2 and "hosts" in result.output
    result = runner.invoke(cli, ["check", str(good), "--timeout", "0"], env=env)
    assert result.exit_code == 2
    result = runner.invoke(cli, ["check", str(tmp_path / "missing.yaml")], env=env)
    assert result.exit_code == 2
