"""The command line: thin, documented, with meaningful exit statuses and no tracebacks."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from sshcluster.bootstrap import render
from sshcluster.cli import cli
from sshcluster.inventory import load_inventory
from sshcluster.testing import STATE_DIR_ENV, Testbed, list_testbeds, remove_testbed
from sshcluster.testing.fixtures import MakeTestbed, fresh_name

ROOT = Path(__file__).resolve().parent.parent


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # (the root's sub-systems load when asked for)
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        full = f"{prefix}{name}"
        found.append((full, cmd))
        if isinstance(cmd, click.Group):
            found += _commands(cmd, f"{full} ")
    return found


COMMANDS = _commands(cli)


def test_there_are_commands() -> None:
    assert "render" in dict(COMMANDS)


@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_command_has_help_and_is_in_the_readme(name: str, cmd: click.Command) -> None:
    assert cmd.help and len(cmd.help.strip()) > 20, f"'{name}' needs help text"
    result = CliRunner().invoke(cli, [*name.split(), "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output
    readme = (ROOT / "README.md").read_text()
    assert f"sshcluster {name}" in readme, f"README does not show 'sshcluster {name}'"


def _readme_command_lines() -> list[str]:
    """Every `sshcluster ...` command the README shows, in code blocks and inline."""
    text = (ROOT / "README.md").read_text()
    found = re.findall(r"`(sshcluster [^`]+)`", text)
    for line in text.splitlines():
        line = line.strip().removeprefix("$ ").split("#")[0]
        found += [part.strip() for part in line.split("&&") if part.strip().startswith(
            "sshcluster ")]
    return sorted(set(found))


def test_every_option_the_readme_shows_exists() -> None:
    lines = _readme_command_lines()
    assert "sshcluster testbed down --dir /tmp/tb" in lines
    for line in lines:
        cmd: click.Command = cli
        for word in shlex.split(line)[1:]:
            if word == "--":  # the rest are the command's arguments (run's ARGS)
                break
            sub = cmd.get_command(click.Context(cmd), word) \
                if isinstance(cmd, click.Group) else None
            if sub is not None:
                cmd = sub
            elif word.startswith("-") and word != "-":
                names = {n for p in cmd.params for n in [*p.opts, *p.secondary_opts]}
                assert word.split("=")[0] in names | {"--help", "-h"}, \
                    f"README: `{line}`: {word} is not an option of that command"


def test_render_to_stdout_is_the_library_output() -> None:
    inv_path = ROOT / "hosts.example.yaml"
    result = CliRunner().invoke(cli, ["render", str(inv_path)])
    assert result.exit_code == 0
    assert result.stdout == render(load_inventory(inv_path))


def test_render_to_file(tmp_path: Path) -> None:
    out = tmp_path / "cluster.R"
    result = CliRunner().invoke(cli, ["render", str(ROOT / "hosts.example.yaml"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text() == render(load_inventory(ROOT / "hosts.example.yaml"))
    assert result.stderr == (f"wrote {out}: 2 hosts, 8 R workers (not checked) "
                             f"(in R: source('{out}'))\n")


def test_render_output_paths(tmp_path: Path) -> None:
    """'-' is stdout; a symlink's target is replaced and the link stays; a path that cannot
    be written is a message and exit 2, with nothing left behind."""
    example = str(ROOT / "hosts.example.yaml")
    expected = render(load_inventory(ROOT / "hosts.example.yaml"))
    result = CliRunner().invoke(cli, ["render", example, "-o", "-"])
    assert result.exit_code == 0 and result.stdout == expected
    assert not Path("-").exists()

    target = tmp_path / "real.R"
    target.write_text("old\n")
    link = tmp_path / "link.R"
    link.symlink_to(target)
    result = CliRunner().invoke(cli, ["render", example, "-o", str(link)])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and target.read_text() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.R", "real.R"]

    missing = tmp_path / "no such dir" / "c.R"
    result = CliRunner().invoke(cli, ["render", example, "-o", str(missing)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: cannot write {missing}: No such file or directory")
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.R", "real.R"]


def test_render_of_unchecked_auto_values_names_the_file(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.yaml"
    inv.write_text("primary: p\nhosts:\n  - host: a\n    ncore: auto\n")
    result = CliRunner().invoke(cli, ["render", str(inv)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {inv} line 4: ncore is 'auto' for a;")
    assert "hint: run 'sshcluster render --check'" in result.stderr


def test_ssh_config_that_does_not_exist_is_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["check", str(ROOT / "hosts.example.yaml"), "-F",
                                      str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_inventory_error_is_a_message_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "hosts.yaml"
    bad.write_text("primary: p\nhosts:\n  - host: a\n    ncore: 0\n")
    result = CliRunner().invoke(cli, ["render", str(bad)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {bad} line 4: hosts[0].ncore: expected a positive whole number "
        "(or 'auto'), got 0\n"
    )
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_missing_file_exit_2_with_hint(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["render", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "no such file" in result.stderr
    assert "hint: write one with 'sshcluster init" in result.stderr
    assert "sshcluster example" in result.stderr
    assert "hosts.example.yaml" not in result.stderr  # not in an installed package


def test_unknown_option_is_exit_2() -> None:
    result = CliRunner().invoke(cli, ["render", "--bogus"])
    assert result.exit_code == 2


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("sshcluster, version ")


# --------------------------------------------------------------------------- testbed


def _cli_up(workdir: Path, *args: str, env: dict[str, str] | None = None
            ) -> tuple[subprocess.CompletedProcess[str], str | None]:
    """`sshcluster testbed up 1 --dir WORKDIR` as a user runs it: in a process of its own,
    which exits and leaves the testbed up. Returns the result and the testbed's name."""
    proc = subprocess.run(
        [sys.executable, "-m", "sshcluster", "testbed", "up", "1", "--dir", str(workdir), *args],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **(env or {})},
    )
    name = re.search(r"down --name (\S+)", proc.stderr)
    return proc, name.group(1) if name else None


def _ssh_with_inventory_files(workdir: Path, address: str) -> subprocess.CompletedProcess[str]:
    """ssh to a host with the key and known_hosts that `testbed up` wrote into workdir."""
    argv = ["ssh", "-F", "none", "-i", str(workdir / "id_ed25519"), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={workdir / 'known_hosts'}", "-o",
            "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-o",
            "BatchMode=yes", f"root@{address}", "hostname"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def _netns() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          check=True).stdout


def test_testbed_down_name_matches_exactly_one_testbed(make_testbed: MakeTestbed) -> None:
    name = fresh_name()
    make_testbed(1, name=name)
    longer = make_testbed(1, name=name + "1")  # `name` is a prefix of its name
    result = CliRunner().invoke(cli, ["testbed", "down", "--name", name])
    assert result.exit_code == 0, result.output
    assert result.stderr == f"removed 1 testbed: {name}\n"
    assert f"{name}-h1 " not in _netns()
    host = longer.hosts[0]
    proc = subprocess.run(longer.ssh_argv(host, "hostname"), capture_output=True, text=True,
                          timeout=60, check=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, "node1"), proc.stderr


def test_testbed_down_name_that_matches_nothing_is_exit_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["testbed", "down", "--name", "nosuch" + os.urandom(2).hex()])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: there is no testbed named 'nosuch")
    assert "removed" not in result.output
    result = CliRunner().invoke(cli, ["testbed", "down", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: there is no testbed with the directory {tmp_path}")


def test_testbed_down_dir_removes_the_testbed_built_there(
    testbed_env: None, tmp_path: Path
) -> None:
    workdir = tmp_path / "tb"
    made, name = _cli_up(workdir)
    assert made.returncode == 0 and name, made.stderr
    try:
        down = CliRunner().invoke(cli, ["testbed", "down", "--dir", str(tmp_path / "." / "tb")])
        assert down.exit_code == 0, down.output
        assert down.stderr == f"removed 1 testbed: {name}\n"
        assert f"{name}-" not in _netns()
        assert (workdir / "hosts.yaml").exists()  # the directory itself stays
        name = None
    finally:
        if name:
            remove_testbed(name)
    again = CliRunner().invoke(cli, ["testbed", "down", "--dir", str(workdir)])
    assert again.exit_code == 1
    assert again.stderr.startswith(f"error: there is no testbed with the directory {workdir}")


def test_testbed_up_refuses_a_dir_that_a_testbed_uses(testbed_env: None, tmp_path: Path) -> None:
    workdir = tmp_path / "tb"
    first, name = _cli_up(workdir)
    assert first.returncode == 0 and name, first.stderr
    try:
        address = first.stdout.split()[1]
        known_hosts = (workdir / "known_hosts").read_text()
        again, again_name = _cli_up(workdir)
        if again_name:  # built after all: remove it (the directory then has both names)
            remove_testbed(again_name)
        assert again.returncode == 1, again.stderr
        assert again.stderr == (
            f"error: the directory {workdir} belongs to testbed {name}, which is still up\n"
            f"hint: remove it first with `sshcluster testbed down --dir {workdir}`, "
            "or choose another directory\n")
        # The first testbed's files are untouched: its inventory still passes host key checks.
        assert (workdir / "known_hosts").read_text() == known_hosts
        proc = _ssh_with_inventory_files(workdir, address)
        assert (proc.returncode, proc.stdout.strip()) == (0, "node1"), proc.stderr
    finally:
        remove_testbed(name)


def test_testbed_down_all_removes_only_testbeds_whose_owner_exited(
    testbed_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Testbeds of their own: a state directory that no other testbed of this machine is in,
    # and beside it another, with a testbed whose owner has exited too.
    env = {STATE_DIR_ENV: str(tmp_path / "state")}
    other_env = {**os.environ, STATE_DIR_ENV: str(tmp_path / "other-state")}
    other, other_name = _cli_up(tmp_path / "other", env=other_env)
    cli_name = None
    try:
        assert other.returncode == 0 and other_name, other.stderr
        monkeypatch.setenv(STATE_DIR_ENV, env[STATE_DIR_ENV])
        made, cli_name = _cli_up(tmp_path / "cli", env=env)  # its owner has exited
        assert made.returncode == 0 and cli_name, made.stderr
        with Testbed(1, name=fresh_name()) as live:  # its owner, this process, runs
            result = CliRunner().invoke(cli, ["testbed", "down", "--all"])
            assert result.exit_code == 0, result.output
            assert result.stderr == f"removed 1 testbed: {cli_name}\n"
            # Nothing outside its own state directory was touched: the other directory's
            # testbed keeps its record and its namespace.
            assert (tmp_path / "other-state" / f"{other_name}.json").exists()
            assert f"{other_name}-" in _netns()
            assert f"{cli_name}-" not in _netns()
            assert [r.name for r in list_testbeds()] == [live.name]
            proc = subprocess.run(live.ssh_argv(live.hosts[0], "true"), timeout=60,
                                  check=False)
            assert proc.returncode == 0
            again = CliRunner().invoke(cli, ["testbed", "down", "--all"])
            assert again.stderr == "removed 0 testbeds\n"
        cli_name = None
    finally:
        try:
            if cli_name:
                remove_testbed(cli_name)
        finally:
            # (its record is in this test's own directory: nothing else would find it)
            if other_name:
                gone = subprocess.run(
                    [sys.executable, "-m", "sshcluster", "testbed", "down", "--name",
                     other_name], env=other_env, capture_output=True, text=True,
                    timeout=120, check=False)
    assert gone.returncode == 0 and f"{other_name}-" not in _netns(), gone.stderr


def test_testbed_down_help_says_what_all_removes() -> None:
    text = " ".join(CliRunner().invoke(cli, ["testbed", "down", "--help"]).output.split())
    assert ("Remove every testbed on this machine whose owner process has exited: that is "
            "every testbed made by `sshcluster testbed up`, anyone's, and the leftovers of "
            "crashed runs. A testbed whose owner still runs (a test run, the demo, a Python "
            "program) is never removed.") in text
    assert "--dir DIR Remove the testbed whose directory is DIR" in text


@pytest.mark.parametrize("args", [[], ["--name", "sc1", "--all"], ["--dir", "/tmp/x", "--name",
                                                                     "sc1"]])
def test_testbed_down_needs_exactly_one_target(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["testbed", "down", *args])
    assert result.exit_code == 2
    assert "give one of --name NAME, --dir DIR or --all" in result.output


@pytest.mark.parametrize(("count", "subnet", "words"), [
    ("1", "foo", "'foo' is not an IPv4 network such as 10.213.5.0/24"),
    ("1", "fd00::/64", "is not an IPv4 network"),
    ("1", "10.213.5.0/33", "is not an IPv4 network"),
    ("6", "10.213.5.0/29", "subnet 10.213.5.0/29 has room for 5 hosts, not 6"),
])
def test_testbed_up_malformed_subnet_is_exit_2(tmp_path: Path, count: str, subnet: str,
                                               words: str) -> None:
    result = CliRunner().invoke(cli, ["testbed", "up", count, "--dir", str(tmp_path / "tb"),
                                      "--subnet", subnet])
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "tb").exists()


def test_testbed_up_subnet_in_use_is_exit_1(testbed: Testbed, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["testbed", "up", "1", "--dir", str(tmp_path / "tb"),
                                      "--subnet", testbed.subnet])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: subnet {testbed.subnet} is in use by another testbed")


def test_testbed_up_has_a_default_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "[default: sshcluster-testbed]" in CliRunner().invoke(
        cli, ["testbed", "up", "--help"]).output
    monkeypatch.chdir(tmp_path)
    # No --dir: the arguments are checked (a malformed subnet, exit 2) and no
    # "Missing option" stops it first.
    result = CliRunner().invoke(cli, ["testbed", "up", "1", "--subnet", "foo"])
    assert result.exit_code == 2 and "is not an IPv4 network" in result.output
    assert "Missing option" not in result.output


def test_the_check_progress_names_the_hosts_it_waits_for() -> None:
    from sshcluster.cli import pending_hosts

    assert pending_hosts(["a", "b"]) == "checking hosts; waiting for a, b"
    assert pending_hosts(["a", "b", "c", "d", "e"]) == (
        "checking hosts; waiting for a, b, c and 2 more")
    assert pending_hosts([]) == "checking hosts"


@pytest.mark.parametrize("case", ["status, no inventory", "push, no inventory",
                                  "sync, no inventory", "run, a host that fails the check",
                                  "jobs fetch, no such job"])
def test_json_is_json_when_the_command_fails(case: str, tmp_path: Path) -> None:
    """--json on stdout when the command fails, as check --json: ok false and the error
    (a script that parses stdout got nothing, or text)."""
    missing = str(tmp_path / "missing.yaml")
    bad = tmp_path / "hosts.yaml"
    # (127.0.0.1 port 1: nothing listens, the check fails at once)
    bad.write_text("hosts:\n  - host: 127.0.0.1\n    ssh_port: 1\n    ncore: 1\n")
    script = tmp_path / "job.R"
    script.write_text("1\n")
    args = {"status, no inventory": ["status", missing, "--json"],
            "push, no inventory": ["push", missing, str(script), "--json"],
            "sync, no inventory": ["sync", missing, "--json"],
            "run, a host that fails the check": ["run", "--json", "--timeout", "10", str(bad),
                                                 str(script)],
            "jobs fetch, no such job": ["fetch", "nosuchjob", "--json"]}[case]
    done = subprocess.run([sys.executable, "-m", "sshcluster", *args], capture_output=True,
                          text=True, timeout=120, env={
                              **os.environ, "NO_COLOR": "1",
                              STATE_DIR_ENV: str(tmp_path / "state"),
                              # (the run's record: not in root's home)
                              "SSHCLUSTER_STATE_DIR": str(tmp_path / "records")})
    assert done.returncode in (1, 2), done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] is False and doc["error"]["message"], doc
    assert "Traceback" not in done.stderr and "error: " in done.stderr
