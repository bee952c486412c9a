"""Messages that point a newcomer the right way: what is wrong, on which line, what to do."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh
from click.testing import CliRunner

from sshcluster.check.preflight import check_async
from sshcluster.check.report import CheckReport, report_details
from sshcluster.cli import cli
from sshcluster.init import example_inventory
from sshcluster.inventory import load_inventory, parse_inventory
from sshcluster.testing import free_port
from sshcluster.testing.sshserver import LocalServer, keys, server_in_thread

ROOT = Path(__file__).resolve().parent.parent


def _render(tmp_path: Path, text: str) -> tuple[Path, str, int]:
    inv = tmp_path / "hosts.yaml"
    inv.write_text(text)
    result = CliRunner().invoke(cli, ["render", str(inv)])
    return inv, result.stderr, result.exit_code


def test_a_quoted_number_is_called_text(tmp_path: Path) -> None:
    inv, err, code = _render(tmp_path, 'primary: p\nhosts:\n  - host: a\n    ncore: "2"\n')
    assert code == 2
    assert err.startswith(f"error: {inv} line 4: hosts[0].ncore:")
    assert "quoted text (a string), not a number" in err
    assert "hint: write it without quotes: 2" in err


def test_a_quoted_port_is_called_text(tmp_path: Path) -> None:
    _, err, code = _render(tmp_path, "primary: p\nport: '11234'\nhosts: [a]\n")
    assert code == 2
    assert "line 2: port:" in err and "quoted text (a string)" in err


def test_a_word_is_not_called_quoted_text(tmp_path: Path) -> None:
    _, err, code = _render(tmp_path, "primary: p\nhosts:\n  - host: a\n    ncore: four\n")
    assert code == 2
    assert "got 'four'" in err and "quoted text" not in err


def test_a_tab_says_yaml_does_not_allow_tabs(tmp_path: Path) -> None:
    inv, err, code = _render(tmp_path, "primary: p\nhosts:\n  - host: a\n\tncore: 2\n")
    assert code == 2
    assert err.startswith(f"error: {inv} line 4: YAML does not allow tabs")
    assert "indent with spaces" in err
    assert "check the indentation" not in err


def test_a_tab_after_a_key_says_tabs(tmp_path: Path) -> None:
    inv, err, code = _render(tmp_path, "primary: p\nhosts:\n-\thost: a\n")
    assert code == 2
    assert f"{inv} line 3: YAML does not allow tabs" in err


def test_other_yaml_errors_keep_their_message(tmp_path: Path) -> None:
    _, err, code = _render(tmp_path, "primary: p\nhosts: [a\n")
    assert code == 2
    assert "not valid YAML" in err and "tabs" not in err


def test_example_prints_the_shipped_example_which_is_the_repository_file() -> None:
    result = CliRunner().invoke(cli, ["example"])
    assert result.exit_code == 0
    assert result.stdout == example_inventory()
    assert result.stdout == (ROOT / "hosts.example.yaml").read_text()
    inv = parse_inventory(result.stdout, "hosts.yaml")
    assert [h.host for h in inv.hosts] == ["192.168.1.10", "192.168.1.11"]


def test_a_missing_primary_says_what_it_is_for(tmp_path: Path) -> None:
    """Left out, primary is 'auto': the default reverse tunnel needs no address; a
    direct connection does, and the error says so."""
    _, err, code = _render(tmp_path, "hosts:\n  - a\n")
    assert code == 0, err
    inv, err, code = _render(tmp_path, "hosts:\n  - a\ntunnel: none\n")
    assert code == 2
    assert err.startswith(f"error: {inv}: primary is 'auto' (or left out), but with tunnel: "
                          "none the workers connect straight to the primary"), err
    assert "the default reverse tunnel needs no address" in err


def test_an_empty_file_points_at_example(tmp_path: Path) -> None:
    _, err, code = _render(tmp_path, "")
    assert code == 2
    assert "the file is empty" in err and "sshcluster example" in err


def test_render_of_auto_names_the_ncore_lines_also_in_defaults(tmp_path: Path) -> None:
    inv, err, code = _render(tmp_path, "primary: p\ndefaults:\n  ncore: auto\nhosts:\n"
                                       "  - host: a\n  - host: b\n    ncore: 2\n"
                                       "  - host: c\n    ncore: auto\n")
    assert code == 2
    assert err.startswith(f"error: {inv} lines 3, 9: ncore is 'auto' for a, c;")
    assert "hint: run 'sshcluster render --check'" in err


def test_a_host_knows_the_lines_of_its_fields() -> None:
    inv = parse_inventory("primary: p\ndefaults:\n  user: u\nhosts:\n  - host: a\n"
                          "    user: v\n    ssh_port: 2222\n  - b\n", "h.yaml")
    a, b = inv.hosts
    assert (a.line_of("user"), a.line_of("ssh_port"), a.line_of("host")) == (6, 7, 5)
    assert (b.line_of("user"), b.line_of("host"), b.line_of("ncore")) == (3, 8, None)


# --------------------------------------------------------------- failed steps name the line


def _check_yaml(tmp_path: Path, text: str) -> CheckReport:
    """Check the inventory ``text`` (``{port}``, ``{key}``: the local server's) against a
    real SSH server in this process that lets in only the session's client key."""
    async def run() -> CheckReport:
        async with LocalServer(keys().host_key, keys().client_key) as server:
            path = tmp_path / "hosts.yaml"
            path.write_text(text.format(port=server.port, key=wrong_key))
            kh = tmp_path / "known_hosts"
            kh.write_text(f"[127.0.0.1]:{server.port} "
                          f"{keys().host_key.export_public_key().decode().strip()}\n")
            config = tmp_path / "ssh_config"
            config.write_text(f"Host *\n  UserKnownHostsFile {kh}\n  GlobalKnownHostsFile "
                              "/dev/null\n  IdentityAgent none\n")
            return await check_async(load_inventory(path), timeout=8,
                                     ssh_config=[str(config)])

    wrong_key = tmp_path / "wrong"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(wrong_key))
    wrong_key.chmod(0o600)
    report: CheckReport = asyncio.run(run())
    return report


def test_a_refused_login_names_the_user_line_and_the_exact_ssh_command(
        tmp_path: Path) -> None:
    report = _check_yaml(tmp_path, "primary: 127.0.0.1\nhosts:\n  - host: 127.0.0.1\n"
                                   "    ssh_port: {port}\n    user: wronguser\n"
                                   "    identity_file: {key}\n")
    auth = report.hosts[0].checks["auth"]
    assert auth.status == "failed"
    assert (auth.line, auth.field) == (5, "user")
    port = report.hosts[0].host.ssh_port
    assert auth.hint is not None
    assert f"fix 'user: wronguser' on line 5 of {tmp_path}/hosts.yaml" in auth.hint
    assert "'identity_file:' on line 6" in auth.hint
    assert auth.hint.endswith(
        f"test with ssh -o BatchMode=yes -l wronguser -i {tmp_path}/wrong "
        f"-o IdentitiesOnly=yes -p {port} 127.0.0.1 true")
    text = "\n".join(str(t) for t in report_details(report))
    assert "inventory: line 5 (user:)" in text


def test_a_user_from_defaults_is_blamed_on_the_defaults_line(tmp_path: Path) -> None:
    report = _check_yaml(tmp_path, "primary: 127.0.0.1\ndefaults:\n  user: wronguser\n"
                                   "  identity_file: {key}\nhosts:\n  - host: 127.0.0.1\n"
                                   "    ssh_port: {port}\n")
    auth = report.hosts[0].checks["auth"]
    assert (auth.status, auth.line, auth.field) == ("failed", 3, "user")


def test_a_refused_port_is_blamed_on_the_ssh_port_line(tmp_path: Path) -> None:
    report = _check_yaml(tmp_path, "primary: 127.0.0.1\nhosts:\n  - host: 127.0.0.1\n"
                                   f"    ssh_port: {free_port('127.0.0.1')}\n")
    connect = report.hosts[0].checks["connect"]
    assert (connect.status, connect.line, connect.field) == ("failed", 4, "ssh_port")
    assert report.hosts[0].checks["auth"].line is None  # skipped: nothing to blame


def test_accept_new_says_how_many_keys_it_recorded_and_where(tmp_path: Path) -> None:
    key = keys().write_client_key(tmp_path / "id_ed25519")
    recorded = tmp_path / "cluster_known_hosts"
    config = tmp_path / "ssh_config"
    config.write_text("Host *\n  UserKnownHostsFile /dev/null\n  GlobalKnownHostsFile "
                      "/dev/null\n  IdentityAgent none\n")
    with server_in_thread() as server:
        inv = tmp_path / "hosts.yaml"
        inv.write_text(f"primary: 127.0.0.1\nknown_hosts: {recorded}\nhosts:\n"
                       f"  - host: 127.0.0.1\n    ssh_port: {server.port}\n"
                       f"    identity_file: {key}\n")
        args = ["check", str(inv), "-F", str(config), "--timeout", "8", "--accept-new"]
        first = CliRunner().invoke(cli, args)
        again = CliRunner().invoke(cli, args)
    assert f"accept-new: recorded 1 new host key in {recorded}\n" in first.stderr
    assert recorded.read_text().count("\n") == 1
    assert "accept-new: recorded no host key (none was new)" in again.stderr


def test_render_without_check_says_not_checked(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.yaml"
    inv.write_text("primary: p\nhosts:\n  - host: a\n    ncore: 3\n")
    result = CliRunner().invoke(cli, ["render", str(inv), "-o", str(tmp_path / "c.R")])
    assert result.exit_code == 0
    assert result.stderr.startswith(f"wrote {tmp_path}/c.R: 1 host, 3 R workers (not checked)")


# --------------------------------------------------------------- --quiet, NO_COLOR, completion


def test_quiet_leaves_out_notes_but_not_errors(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.yaml"
    inv.write_text("primary: p\nhosts:\n  - host: a\n    ncore: 3\n")
    out = tmp_path / "c.R"
    result = CliRunner().invoke(cli, ["--quiet", "render", str(inv), "-o", str(out)])
    assert (result.exit_code, result.stderr) == (0, "")
    assert out.exists()
    result = CliRunner().invoke(cli, ["-q", "init", "-o", str(tmp_path / "h.yaml"),
                                      "--hosts", "a"])
    assert (result.exit_code, result.stderr) == (0, "")
    bad = CliRunner().invoke(cli, ["-q", "render", str(tmp_path / "none.yaml")])
    assert bad.exit_code == 2 and "error:" in bad.stderr and "hint:" in bad.stderr


def test_quiet_check_prints_what_failed_and_the_summary_not_the_table(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.yaml"
    port = free_port("127.0.0.1")
    inv.write_text(f"primary: 127.0.0.1\nhosts:\n  - host: 127.0.0.1\n    ssh_port: {port}\n")
    loud = CliRunner().invoke(cli, ["check", str(inv), "-F", "none", "--timeout", "5"])
    quiet = CliRunner().invoke(cli, ["-q", "check", str(inv), "-F", "none", "--timeout", "5"])
    assert loud.exit_code == quiet.exit_code == 1
    assert "resolve" in loud.stdout  # the table's header
    lines = quiet.stdout.splitlines()
    assert lines[0].startswith(f"127.0.0.1:{port} connect failed: ")
    assert "inventory: line 4 (ssh_port:)" in quiet.stdout
    assert lines[-1].startswith("0 of 1 host ready") and "resolve " not in quiet.stdout


def test_no_color_turns_colours_off(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.yaml")
    coloured = CliRunner().invoke(cli, ["render", missing], color=True)
    plain = CliRunner().invoke(cli, ["render", missing], color=True, env={"NO_COLOR": "1"})
    assert "\x1b[" in coloured.stderr
    assert plain.exit_code == 2 and "\x1b[" not in plain.stderr
    assert plain.stderr.startswith(f"error: {missing}: no such file")


def test_shell_completion_completes_commands() -> None:
    result = CliRunner().invoke(cli, [], prog_name="sshcluster", env={
        "_SSHCLUSTER_COMPLETE": "bash_complete", "COMP_WORDS": "sshcluster ren",
        "COMP_CWORD": "1"})
    assert result.exit_code == 0
    assert "plain,render" in result.output.splitlines()
    assert "_SSHCLUSTER_COMPLETE=bash_source sshcluster" in (ROOT / "README.md").read_text()
