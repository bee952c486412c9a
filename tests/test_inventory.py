"""The inventory: the format of hosts.example.yaml and one clear error per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from sshcluster import InventoryError
from sshcluster.bootstrap import RenderOptions, render
from sshcluster.dump import dump_inventory
from sshcluster.errors import RenderError
from sshcluster.inventory import (
    Host,
    Inventory,
    Primary,
    load_inventory,
    parse_inventory,
)

ROOT = Path(__file__).resolve().parent.parent


def test_example_file_reads_as_documented() -> None:
    inv = load_inventory(ROOT / "hosts.example.yaml")
    assert inv.primary == Primary(host="192.168.1.10", user="johnmount")
    assert inv.port == 11234
    assert inv.hosts == (
        Host(host="192.168.1.10", user="johnmount", ncore=4),
        Host(host="192.168.1.11", user="johnmount", ncore=4, ssh_port=2222),
    )
    assert inv.workers == 8


def test_primary_as_plain_string_and_defaults_apply() -> None:
    inv = parse_inventory(
        "primary: 10.0.0.1\n"
        "defaults: {user: bob, ncore: 3}\n"
        "hosts:\n"
        "  - host: a\n"
        "  - host: b\n"
        "    user: carol\n"
        "    ncore: 1\n"
        "  - c.example.org\n"
    )
    assert inv.primary == Primary(host="10.0.0.1")
    assert [(h.host, h.user, h.ncore) for h in inv.hosts] == [
        ("a", "bob", 3), ("b", "carol", 1), ("c.example.org", "bob", 3)]


def test_ipv6_and_auto() -> None:
    inv = parse_inventory(
        "primary: {host: auto}\nhosts:\n  - host: '[fe80::1]'\n    ncore: auto\n  - host: ::1\n")
    assert inv.primary.host == "auto"
    assert inv.hosts[0].host == "fe80::1"
    assert inv.hosts[0].ncore is None
    assert inv.hosts[1].host == "::1"


def test_relative_paths_resolve_against_the_inventory_directory(tmp_path: Path) -> None:
    f = tmp_path / "hosts.yaml"
    f.write_text("primary: p\nknown_hosts: kh\nhosts:\n  - host: a\n    identity_file: keys/id\n")
    inv = load_inventory(f)
    assert inv.known_hosts == str(tmp_path / "kh")
    assert inv.hosts[0].identity_file == str(tmp_path / "keys" / "id")


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        ("primary: p\nhosts:\n  - host: a\n    nocre: 2\n", 4, "hosts[0].nocre",
         "unknown key 'nocre'"),
        ("primary: p\nhostz:\n  - a\n", 2, "hostz", "unknown key 'hostz'"),
        ("primary: p\nhosts:\n  - user: bob\n", 3, "hosts[0]", "'host' is required"),
        ("primary: p\nhosts:\n  - host: a\n    ncore: 0\n", 4, "hosts[0].ncore",
         "positive whole number"),
        ("primary: p\nhosts:\n  - host: a\n    ncore: four\n", 4, "hosts[0].ncore",
         "got 'four'"),
        ("primary: p\nhosts:\n  - host: a\n    ncore: 2.5\n", 4, "hosts[0].ncore", "2.5"),
        ("primary: p\nhosts:\n  - host: a\n    ncore: true\n", 4, "hosts[0].ncore", "yes/no"),
        ("primary: p\nhosts:\n  - host: 'a b'\n", 3, "hosts[0].host", "not a valid host"),
        ("primary: p\nhosts:\n  - host: \"a'b\"\n", 3, "hosts[0].host", "not a valid host"),
        ("primary: p\nhosts:\n  - host: a;rm -rf ~\n", 3, "hosts[0].host", "not a valid host"),
        ("primary: p\nhosts:\n  - host: $(reboot)\n", 3, "hosts[0].host", "not a valid host"),
        ("primary: p\nhosts:\n  - host: -oProxyCommand=evil\n", 3, "hosts[0].host",
         "not a valid host"),
        ("primary: p\nhosts:\n  - host: a\n    user: 'x y'\n", 4, "hosts[0].user",
         "not a valid user"),
        ("primary: p\nhosts:\n  - host: a\n  - host: b\n  - host: a\n", 5, "hosts[2]",
         "listed twice (first at line 3)"),
        ("primary: p\nhosts: []\n", 2, "hosts", "the list is empty"),
        ("primary: p\nhosts:\n", 2, "hosts", "the list is empty"),
        ("primary: p\nhosts:\n  - host: a\n    ssh_port: 70000\n", 4, "hosts[0].ssh_port",
         "TCP port"),
        ("primary: p\nport: http\nhosts: [a]\n", 2, "port", "TCP port"),
        ("primary: p\nr_packages: [data.table, 'not a pkg']\nhosts: [a]\n", 2,
         "r_packages[1]", "not an R package"),
        ("primary: 'bad host'\nhosts: [a]\n", 1, "primary", "not a valid host"),
        ("primary: p\nprimary: q\nhosts: [a]\n", 2, None, "key 'primary' appears twice"),
        ("- just\n- a list\n", 1, "", "expected a mapping"),
        ("primary: p\nlaunch: quick\nhosts: [a]\n", 2, "launch",
         "expected one of fast, classic, got 'quick'"),
        ("primary: p\ntunnel: yes\nhosts: [a]\n", 2, "tunnel", "got true (a yes/no value)"),
        ("primary: p\nhosts: [a]\nregister: future\n", 3, "register",
         "expected a list such as [future, doparallel]"),
        ("primary: p\nregister:\n  - future\n  - foreach\nhosts: [a]\n", 4, "register[1]",
         "expected one of future, doparallel, got 'foreach'"),
        ("primary: p\nsetup_timeout: 0\nhosts: [a]\n", 2, "setup_timeout", "seconds"),
        ("primary: p\nhosts: [a]\nfork: 'no'\n", 3, "fork", "expected true or false, got 'no'"),
        ("primary: p\nlaunch: classic\ntunnel: reverse\nhosts: [a]\n", 3, "tunnel",
         "the classic launch cannot use a reverse tunnel"),
        # A newline at the end of a value (a quoted "\n") is not taken for the end of it
        # (it would break a login shell's command line, and the check's labels).
        ('primary: p\nhosts:\n  - host: "node1\\n"\n', 3, "hosts[0].host",
         "not a valid host"),
        ('primary: p\nhosts:\n  - host: a\n    user: "alice\\n"\n', 4, "hosts[0].user",
         "not a valid user"),
        ('primary: p\nrscript: "/usr/bin/Rscript\\n"\nhosts: [a]\n', 2, "rscript", ""),
        ('primary: p\nr_packages: ["data.table\\n"]\nhosts: [a]\n', 2, "r_packages[0]",
         "not an R package"),
    ],
)
def test_every_mistake_names_file_line_and_field(
    text: str, line: int, field: str | None, words: str
) -> None:
    with pytest.raises(InventoryError) as info:
        parse_inventory(text, "hosts.yaml")
    err = info.value
    assert err.path == "hosts.yaml"
    assert err.line == line
    assert (err.field or None) == (field or None)
    assert words in str(err)
    assert str(err).startswith(f"hosts.yaml line {line}: ")


def test_typo_gets_a_did_you_mean_hint() -> None:
    with pytest.raises(InventoryError) as info:
        parse_inventory("primary: p\nhosts:\n  - host: a\n    ssh_prot: 22\n", "h.yaml")
    assert info.value.hint == "did you mean 'ssh_port'?"


def test_not_yaml() -> None:
    with pytest.raises(InventoryError) as info:
        parse_inventory("primary: [p\nhosts: a\n", "h.yaml")
    assert "not valid YAML" in str(info.value)
    assert info.value.line is not None


def test_empty_file() -> None:
    with pytest.raises(InventoryError, match="the file is empty"):
        parse_inventory("", "h.yaml")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="no such file"):
        load_inventory(tmp_path / "nope.yaml")
    with pytest.raises(InventoryError, match="is a directory"):
        load_inventory(tmp_path)


def test_binary_file(tmp_path: Path) -> None:
    f = tmp_path / "h.yaml"
    f.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InventoryError, match="UTF-8"):
        load_inventory(f)


def test_dump_round_trips() -> None:
    inv = Inventory(
        primary=Primary(host="10.0.0.1", user="me", ssh_port=2200),
        hosts=(Host(host="a", user="u", ncore=2, ssh_port=2222, identity_file="/k",
                    rscript="/opt/R/bin/Rscript"),
               Host(host="b", ncore=None)),
        port=11000, known_hosts="/kh", r_packages=("stats",), launch="fast",
        tunnel="reverse", fork=False, register=("doparallel", "future"), setup_timeout=30,
    )
    text = dump_inventory(inv, header="made by a test\nsecond line")
    assert text.startswith("# made by a test\n# second line\n")
    assert parse_inventory(text) == inv


def test_launch_settings_and_their_defaults() -> None:
    inv = parse_inventory("primary: p\nhosts: [a]\n")
    assert (inv.launch, inv.tunnel, inv.fork, inv.register, inv.setup_timeout) == (
        "fast", None, True, (), 120)
    assert inv.effective_tunnel == "reverse"  # the fast launch's default: through ssh
    inv = parse_inventory("primary: p\nlaunch: classic\nregister: [future, future, doparallel]"
                          "\nsetup_timeout: 30\nfork: false\nhosts: [a]\n")
    assert (inv.launch, inv.fork, inv.register, inv.setup_timeout) == (
        "classic", False, ("future", "doparallel"), 30)
    assert inv.effective_tunnel == "none"  # R's makeCluster: direct only
    assert parse_inventory("primary: p\ntunnel: none\nhosts: [a]\n").effective_tunnel == "none"


def test_launch_typo_gets_a_hint() -> None:
    with pytest.raises(InventoryError) as info:
        parse_inventory("primary: p\ntunnel: revers\nhosts: [a]\n", "h.yaml")
    assert info.value.hint == "did you mean 'reverse'?"


def test_reverse_ssh_is_optional_unless_required() -> None:
    base = "primary: p\nhosts: [a]\n"
    assert parse_inventory(base).reverse_ssh == "optional"
    inv = parse_inventory(base + "reverse_ssh: required\n")
    assert inv.reverse_ssh == "required"
    assert parse_inventory(dump_inventory(inv)).reverse_ssh == "required"
    with pytest.raises(InventoryError, match="line 3: reverse_ssh: expected one of") as e:
        parse_inventory(base + "reverse_ssh: requird\n")
    assert e.value.hint == "did you mean 'required'?"


def test_workdir_shared_dir_and_fanout_are_read_and_dumped_back() -> None:
    text = ("primary: p\nworkdir: data/run1/\nshared_dir: /nfs/team\nfanout: chain\n"
            "hosts: [a]\n")
    inv = parse_inventory(text, "h.yaml")
    # host paths are the hosts': not resolved against this machine's directories
    assert (inv.workdir, inv.shared_dir, inv.fanout) == ("data/run1", "/nfs/team", "chain")
    assert parse_inventory(dump_inventory(inv), "h.yaml") == inv
    assert parse_inventory("primary: p\nhosts: [a]\n").fanout == "direct"


@pytest.mark.parametrize("text, field, line", [
    ("primary: p\nhosts: [a]\nfanout: ring\n", "fanout", 3),
    ("primary: p\nhosts: [a]\nworkdir: ''\n", "workdir", 3),
    ("primary: p\nhosts: [a]\n\nshared_dir: [x]\n", "shared_dir", 4),
])
def test_bad_workdir_shared_dir_fanout(text: str, field: str, line: int) -> None:
    with pytest.raises(InventoryError) as e:
        parse_inventory(text, "h.yaml")
    assert (e.value.field, e.value.line) == (field, line)


def test_primary_may_be_left_out_and_is_then_auto(tmp_path: Path) -> None:
    """The reverse tunnel (the default) needs no address of the primary; left out,
    primary is 'auto': the check finds what the hosts see where something needs it
    (tunnel: none, ssh_back), and a file for tunnel: none without a check says so."""
    inv = parse_inventory("hosts: [a, b]\n")
    assert inv.primary.host == "auto"
    text = render(inv, RenderOptions())
    assert 'primary <- "127.0.0.1"' in text
    with pytest.raises(RenderError, match="auto"):
        render(parse_inventory("hosts: [a, b]\ntunnel: none\n"), RenderOptions())


@pytest.mark.parametrize("value, read", [("~/work/", "work"), ("~", "."), ("~/", "."),
                                         ("~//a/b", "a/b"), ("/srv/x/", "/srv/x"),
                                         ("rel", "rel")])
def test_a_workdir_under_home_reads_as_relative_to_the_login_directory(value: str,
                                                                        read: str) -> None:
    """~/x and x are one place on a host (ssh starts in the home directory): read one
    way, every user of the path (launch, push, results) means the same directory."""
    inv = parse_inventory(f"hosts: [a]\nworkdir: '{value}'\nshared_dir: '{value}'\n")
    assert (inv.workdir, inv.shared_dir) == (read, read)


def test_another_user_s_home_is_refused_with_its_line() -> None:
    with pytest.raises(InventoryError, match="another user's home") as e:
        parse_inventory("hosts: [a]\n\nworkdir: ~bob/work\n", "h.yaml")
    assert (e.value.field, e.value.line) == ("workdir", 3)
