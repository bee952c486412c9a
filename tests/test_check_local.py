"""The check's connection steps against a real SSH server in this process, on 127.0.0.1:0
(see tests/sshserver.py): resolve, connect, hostkey, auth, accept-new and a changed key,
without root or network namespaces."""

from __future__ import annotations

import asyncio
import getpass
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from sshcluster.check.preflight import check_async
from sshcluster.check.report import CheckReport
from sshcluster.connections import host_links, workers_note
from sshcluster.inventory import Host, Inventory, Primary
from sshcluster.testing import free_port
from sshcluster.testing.sshserver import LocalServer, keys

CONNECTION_STEPS = ("resolve", "connect", "hostkey", "auth")


def key_line(port: int, key: asyncssh.SSHKey) -> str:
    return f"[127.0.0.1]:{port} {key.export_public_key().decode().strip()}\n"


@pytest.fixture
def client_key(tmp_path: Path) -> Path:
    return keys().write_client_key(tmp_path / "id_ed25519")


def inventory(port: int, identity: Path, known_hosts: Path | None = None,
              host: str = "127.0.0.1") -> Inventory:
    return Inventory(
        # nobody there: reverse_ssh fails
        primary=Primary("127.0.0.1", ssh_port=free_port("127.0.0.1")),
        hosts=(Host(host, user=getpass.getuser(), ncore=1, ssh_port=port,
                    identity_file=str(identity)),),
        known_hosts=str(known_hosts) if known_hosts else None)


def config_for(user_known_hosts: Path) -> str:
    """An ssh config of this test's own: its known_hosts, no agent, no system files."""
    path = user_known_hosts.with_name("ssh_config")
    path.write_text(f"Host *\n  UserKnownHostsFile {user_known_hosts}\n"
                    "  GlobalKnownHostsFile /dev/null\n  IdentityAgent none\n"
                    "  HashKnownHosts no\n")
    return str(path)


def run(coro: Any) -> CheckReport:
    report: CheckReport = asyncio.run(coro)
    return report


async def check_server(host_key: asyncssh.SSHKey, identity: Path, user_known_hosts: Path,
                       *, known: asyncssh.SSHKey | bool | None = True,
                       inventory_known_hosts: Path | None = None,
                       **kwargs: Any) -> CheckReport:
    """Check a fresh server with ``host_key``; the user's known_hosts lists ``known`` for
    it (True: the session's host key; None: nothing)."""
    if known is True:
        known = keys().host_key
    async with LocalServer(host_key, keys().client_key) as server:
        inv = inventory(server.port, identity, inventory_known_hosts)
        user_known_hosts.write_text(
            key_line(server.port, known) if isinstance(known, asyncssh.SSHKey) else "")
        return await check_async(inv, timeout=8, ssh_config=[config_for(user_known_hosts)],
                                 **kwargs)


def statuses(report: CheckReport, steps: tuple[str, ...] = CONNECTION_STEPS) -> list[str]:
    return [report.hosts[0].checks[s].status for s in steps]


def test_every_connection_step_passes(client_key: Path, tmp_path: Path) -> None:
    report = run(check_server(keys().host_key, client_key, tmp_path / "known_hosts"))
    host = report.hosts[0]
    assert statuses(report) == ["ok"] * 4, host.checks
    assert host.checks["hostkey"].detail.endswith(f"matches {tmp_path}/known_hosts line 1")
    assert host.checks["auth"].detail == f"logged in as {getpass.getuser()}"
    # the remote script ran for real on this machine
    assert host.checks["cores"].status == "ok" and host.ncore
    assert host.seen_primary == "127.0.0.1"


def test_unknown_key_fails_and_accept_new_records_it(client_key: Path,
                                                     tmp_path: Path) -> None:
    user_file = tmp_path / "known_hosts"
    recorded = tmp_path / "inventory_known_hosts"
    report = run(check_server(keys().host_key, client_key, user_file, known=None,
                              inventory_known_hosts=recorded))
    hk = report.hosts[0].checks["hostkey"]
    assert statuses(report) == ["ok", "ok", "failed", "skipped"]
    assert "is not in known_hosts" in hk.detail and hk.hint and "--accept-new" in hk.hint
    assert f"looked in {user_file}, /dev/null" in hk.detail
    assert not recorded.exists()

    report = run(check_server(keys().host_key, client_key, user_file, known=None,
                              inventory_known_hosts=recorded, accept_new=True))
    assert statuses(report) == ["ok"] * 4
    assert f"recorded in {recorded}" in report.hosts[0].checks["hostkey"].detail
    line = recorded.read_text()
    assert line.startswith("[127.0.0.1]:") and keys().host_key.export_public_key().decode(
        ).split()[1] in line
    assert user_file.read_text() == ""  # the user's own file is left alone


def test_changed_key_fails_even_with_accept_new(client_key: Path, tmp_path: Path) -> None:
    user_file = tmp_path / "known_hosts"
    for accept_new in (False, True):
        report = run(check_server(keys().other_host_key, client_key, user_file,
                                  accept_new=accept_new))
        hk = report.hosts[0].checks["hostkey"]
        assert statuses(report) == ["ok", "ok", "failed", "skipped"]
        assert "HOST KEY CHANGED" in hk.detail and hk.hint and "ssh-keygen -R" in hk.hint
    assert user_file.read_text().count("\n") == 1  # nothing recorded


def test_wrong_client_key_fails_auth(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(wrong))
    wrong.chmod(0o600)
    report = run(check_server(keys().host_key, wrong, tmp_path / "known_hosts"))
    assert statuses(report) == ["ok", "ok", "ok", "failed"]
    auth = report.hosts[0].checks["auth"]
    assert "permission denied" in auth.detail.lower() and auth.hint
    assert all(report.hosts[0].checks[s].status == "skipped" for s in ("rscript", "cores"))


def test_refused_port_fails_connect(client_key: Path, tmp_path: Path) -> None:
    inv = inventory(free_port("127.0.0.1"), client_key)
    report = run(check_async(inv, timeout=5, ssh_config=[config_for(tmp_path / "kh")]))
    connect = report.hosts[0].checks["connect"]
    assert statuses(report) == ["ok", "failed", "skipped", "skipped"]
    assert "refused" in connect.detail.lower() and connect.hint


def test_unresolvable_name_fails_resolve(client_key: Path, tmp_path: Path) -> None:
    # A label longer than 63 characters: refused before any name server is asked.
    inv = inventory(22, client_key, host="x" * 64 + ".example")
    report = run(check_async(inv, timeout=5, ssh_config=[config_for(tmp_path / "kh")]))
    assert statuses(report) == ["failed", "skipped", "skipped", "skipped"]
    assert "cannot resolve" in report.hosts[0].checks["resolve"].detail


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_server_that_never_speaks_fails_hostkey_at_the_deadline(
        silent_server: int, client_key: Path, tmp_path: Path) -> None:
    inv = inventory(silent_server, client_key)
    report = run(check_async(inv, timeout=2, ssh_config=[config_for(tmp_path / "kh")]))
    hk = report.hosts[0].checks["hostkey"]
    assert statuses(report) == ["ok", "ok", "failed", "skipped"]
    assert "deadline" in hk.detail and hk.hint and report.seconds < 3 * 2  # (a hang guard)


@pytest.mark.timeout(25)
def test_a_hanging_match_exec_fails_resolve_at_the_deadline(client_key: Path,
                                                            tmp_path: Path) -> None:
    """An ssh config whose Match exec never returns: the run's deadline cuts ssh -G off,
    resolve fails with the reason and where to look, and what ssh -G started for the
    Match exec is ended with it."""
    seconds = f"30.{secrets.randbelow(10**9):09d}"  # names this test's sleep
    config = tmp_path / "ssh_config"
    config.write_text(f'Match exec "sleep {seconds}; true"\n  Port 2222\n')
    inv = inventory(22, client_key)
    report = run(check_async(inv, timeout=2, ssh_config=[str(config)]))
    resolve = report.hosts[0].checks["resolve"]
    assert statuses(report) == ["failed", "skipped", "skipped", "skipped"]
    assert "deadline" in resolve.detail and "Match exec" in (resolve.hint or "")
    assert report.seconds < 3 * 2  # (a hang guard)
    # The shell ssh -G ran for Match exec, and its sleep, ended with it.
    left = subprocess.run(["pgrep", "-f", f"sleep {seconds}"], capture_output=True)
    assert left.returncode == 1, left.stdout


def test_cli_ssh_config_files(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sshcluster.cli import cli

    inv = tmp_path / "hosts.yaml"
    inv.write_text(f"primary: 127.0.0.1\nhosts:\n  - host: 127.0.0.1\n"
                   f"    ssh_port: {free_port('127.0.0.1')}\n")
    runner = CliRunner()
    result = runner.invoke(cli, ["check", str(inv), "-F", "none", "--json", "--timeout", "5"])
    assert result.exit_code == 1, result.output
    assert "Connection refused" in result.stdout
    for bad in (["-F", str(tmp_path / "missing")], ["-F", "none", "-F", str(inv)]):
        result = runner.invoke(cli, ["check", str(inv), *bad])
        assert result.exit_code == 2 and "-F" in result.output


def test_more_workers_than_r_connections_is_a_note(client_key: Path, tmp_path: Path) -> None:
    """The check says when the inventory needs more R connections than the primary's R
    allows (R before 4.4: 128 in all), with the numbers and what to do: with a
    connection per worker (relay: false; behind the relays 200 workers on a host take
    two, see test_a_host_behind_relays_takes_a_connection_per_100_workers)."""
    async def main() -> CheckReport:
        async with LocalServer(keys().host_key, keys().client_key) as server:
            inv = inventory(server.port, client_key)
            inv = Inventory(primary=inv.primary, relay=False, hosts=tuple(
                Host(h.host, user=h.user, ncore=200, ssh_port=h.ssh_port,
                     identity_file=h.identity_file) for h in inv.hosts))
            known = tmp_path / "known_hosts"
            known.write_text(key_line(server.port, keys().host_key))
            return await check_async(inv, timeout=8, ssh_config=[config_for(known)])

    report = run(main())
    note = next(n for n in report.notes if "R connections" in n)
    assert note.startswith("200 workers need 207 R connections on the primary")
    assert "--max-connections=207" in note and "at most 121 workers" in note
    if report.primary_r_version and report.primary_r_version < "4.4":
        assert f"this primary has R {report.primary_r_version}" in note


def test_a_host_behind_relays_takes_a_connection_per_100_workers() -> None:
    """What the check and render count on the primary, as R/launch/session.R decides: a
    relay per host (per 100 workers), not with relay: false, fresh workers or one worker,
    and one relay at most with lease: true (its one session holds the lease)."""
    assert [host_links(n) for n in (1, 2, 100, 101, 200, 250)] == [1, 1, 1, 2, 2, 3]
    assert host_links(200, relay=False) == host_links(200, fork=False) == 200
    assert host_links(200, lease=True) == 200 and host_links(50, lease=True) == 1
    assert workers_note(500, "4.2.2", links=25) is None
    note = workers_note(500, "4.2.2", links=130)
    assert note and note.startswith("500 workers need 137 R connections")


def test_a_path_the_launch_cannot_carry_fails_resolve(tmp_path: Path) -> None:
    """An identity file whose path ssh's command line cannot carry (a double quote) is
    the host's failed resolve step, with the reason, not an unexpected error."""
    odd = tmp_path / 'id"key'
    inv = inventory(free_port("127.0.0.1"), odd)
    report = run(check_async(inv, timeout=8, ssh_config=[config_for(tmp_path / "kh")]))
    resolve = report.hosts[0].checks["resolve"]
    assert resolve.status == "failed"
    assert "unexpected" not in resolve.detail and '"' in resolve.detail, resolve.detail
