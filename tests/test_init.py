"""``sshcluster init``: an inventory from a host list with ranges or from the ssh config,
ncore: auto everywhere, never replacing a file, and loadable as it is."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sshcluster.cli import cli
from sshcluster.errors import InventoryError
from sshcluster.init import MAX_HOSTS, expand_hosts, ssh_config_aliases
from sshcluster.inventory import load_inventory


@pytest.mark.parametrize(("spec", "names"), [
    ("a,b", ["a", "b"]),
    ("node[01-03]", ["node01", "node02", "node03"]),
    ("n[8-10]", ["n8", "n9", "n10"]),
    ("n[08-10].lan", ["n08.lan", "n09.lan", "n10.lan"]),
    ("n[1-2,7],x", ["n1", "n2", "n7", "x"]),
    ("r[1-2]c[1-2]", ["r1c1", "r1c2", "r2c1", "r2c2"]),
    (" a , a ,10.0.0.[1-2]", ["a", "10.0.0.1", "10.0.0.2"]),
])
def test_host_lists_and_ranges(spec: str, names: list[str]) -> None:
    assert expand_hosts(spec) == names


@pytest.mark.parametrize(("spec", "words"), [
    ("n[3-1]", "counts down"),
    ("n[a-b]", "is not a range such as [01-16]"),
    ("n[1-2", "unbalanced bracket"),
    (f"n[1-{MAX_HOSTS + 1}]", "more than 10,000 hosts"),
    ("n[1-200]m[1-200]", "more than 10,000 hosts"),
    ("a b", "'a b' is not a valid host name"),
    ("-oProxyCommand=x", "is not a valid host name"),
    (",", "no host names given"),
])
def test_bad_host_lists(spec: str, words: str) -> None:
    with pytest.raises(InventoryError, match=words.replace("[", r"\[").replace("]", r"\]")):
        expand_hosts(spec)


def test_init_writes_a_loadable_inventory_and_never_replaces_one(
        tmp_path: Path) -> None:
    out = tmp_path / "hosts.yaml"
    args = ["init", "-o", str(out), "--hosts", "gpu,node[01-03]", "--user", "alice",
            "--identity-file", "~/.ssh/cluster_key"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.stderr == (f"wrote {out}: 4 hosts, ncore: auto "
                             f"(next: sshcluster check {out})\n")
    inv = load_inventory(out)
    assert [h.host for h in inv.hosts] == ["gpu", "node01", "node02", "node03"]
    assert all(h.ncore is None and h.user == "alice" for h in inv.hosts)
    assert inv.hosts[0].identity_file == str(Path.home() / ".ssh" / "cluster_key")
    assert inv.primary.host == "auto"
    before = out.read_text()
    again = CliRunner().invoke(cli, [*args[:3], "--hosts", "other"])
    assert again.exit_code == 2
    assert again.stderr.startswith(f"error: {out} exists; not replaced")
    assert out.read_text() == before


def test_init_prints_with_dash_and_a_bad_list_is_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["init", "-o", "-", "--hosts", "a"])
    assert result.exit_code == 0
    assert "  - host: \"a\"\n    ncore: auto\n" in result.stdout
    bad = CliRunner().invoke(cli, ["init", "-o", str(tmp_path / "h.yaml"), "--hosts", "n[2-1]"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: --hosts: ")
    none = CliRunner().invoke(cli, ["init", "-o", str(tmp_path / "h.yaml")])
    assert none.exit_code == 2 and "no hosts to write" in none.stderr
    assert not (tmp_path / "h.yaml").exists()


def test_init_from_the_ssh_config(tmp_path: Path) -> None:
    extra = tmp_path / "more.conf"
    extra.write_text("Host node3\n  HostName 10.9.0.3\n")
    config = tmp_path / "config"
    config.write_text(
        f"# cluster\nInclude {extra}\nHost node1 node2\n  HostName 10.9.0.1\n  User bob\n"
        "  Port 2222\nHost *.internal !bad gw\n  User admin\nHost=\"node9\"\n"
        "Host *\n  ServerAliveInterval 30\n")
    assert ssh_config_aliases(config) == ["node3", "node1", "node2", "gw", "node9"]
    out = tmp_path / "hosts.yaml"
    result = CliRunner().invoke(cli, ["init", "-o", str(out), "--from-ssh-config", "-F",
                                      str(config), "--match", "node*", "--hosts", "extra"])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert '  - host: "node1"   # ssh -G: bob@10.9.0.1 port 2222\n' in text
    assert '  - host: "node3"   # ssh -G: ' in text and "@10.9.0.3\n" in text
    assert [h.host for h in load_inventory(out).hosts] == ["extra", "node3", "node1",
                                                           "node2", "node9"]
    nothing = CliRunner().invoke(cli, ["init", "-o", str(tmp_path / "x.yaml"),
                                       "--from-ssh-config", "-F", str(config),
                                       "--match", "db*"])
    assert nothing.exit_code == 2 and "no Host alias matching 'db*'" in nothing.stderr


def test_a_user_no_inventory_can_hold_is_named_as_an_option(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["init", "-o", str(tmp_path / "h.yaml"), "--hosts", "a",
                                      "--user", "a b"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: sshcluster init: defaults.user: 'a b' is not a "
                                    "valid user name")
    assert not (tmp_path / "h.yaml").exists()
