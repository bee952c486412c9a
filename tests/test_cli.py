"""The command line: thin, documented, with meaningful exit statuses and no tracebacks."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from sshcluster.bootstrap import render
from sshcluster.cli import cli
from sshcluster.inventory import load_inventory

ROOT = Path(__file__).resolve().parent.parent


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, cmd in sorted(group.commands.items()):
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
    assert result.stderr == f"wrote {out}: 2 hosts, 8 R workers (in R: source('{out}'))\n"


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
    assert result.stderr.startswith(f"error: {inv}: ncore is 'auto' for a;")
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
    assert "hint: copy hosts.example.yaml" in result.stderr


def test_unknown_option_is_exit_2() -> None:
    result = CliRunner().invoke(cli, ["render", "--bogus"])
    assert result.exit_code == 2


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("sshcluster, version ")
