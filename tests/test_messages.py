"""Messages that point a newcomer the right way: what is wrong, on which line, what to do."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from sshcluster.cli import cli
from sshcluster.inventory import example_inventory, parse_inventory

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


def test_an_empty_file_points_at_example(tmp_path: Path) -> None:
    _, err, code = _render(tmp_path, "")
    assert code == 2
    assert "the file is empty" in err and "sshcluster example" in err
