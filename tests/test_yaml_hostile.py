"""Hostile YAML: every bomb is a clear exit-2 error, never a traceback or a memory blow-up.

Each case runs the real CLI in a separate process under an address-space limit
(``RLIMIT_AS``), for the inventory (``render``) and the EC2 spec (``ec2 up --dry-run``:
the spec is refused before any AWS call).
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from sshcluster.errors import InventoryError
from sshcluster.inventory import parse_inventory

#: The limit the CLI runs under: plenty for sshcluster, far too little for any bomb.
MEMORY_LIMIT = 1024 * 1024 * 1024

_LAUGHS = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))

BOMBS = {
    "billion laughs": (_LAUGHS + "primary: 10.0.0.1\nhosts: *a9\n", "expands to more than"),
    "laughs in a key": (_LAUGHS + "primary: 10.0.0.1\nhosts:\n  - host: 10.0.0.2\n"
                        "    rscript: *a9\n", "expands to more than"),
    "self reference": ("primary: 10.0.0.1\nhosts: &h [*h]\n", "refers to the value"),
    "deep nesting": ("primary: 10.0.0.1\nhosts: " + "[" * 50_000 + "]" * 50_000 + "\n",
                     "nested more than"),
    "deep block nesting": ("primary: 10.0.0.1\nhosts:\n" + "".join(
        "  " * i + "- \n" for i in range(200)), "nested more than"),
    "huge number": ("primary: 10.0.0.1\nhosts:\n  - host: 10.0.0.2\n    ncore: "
                    + "9" * 100_000 + "\n", "number with"),
    "huge port": ("primary: 10.0.0.1\nport: 0x" + "f" * 50_000 + "\nhosts: [a]\n",
                  "number with"),
    "huge string in an error": ("primary: 10.0.0.1\nhosts:\n  - host: '" + "$" * 1_000_000
                                + "'\n", "is not a valid host name"),
}


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sshcluster", *args], capture_output=True,
                          text=True, timeout=120, preexec_fn=_limited)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BOMBS))
def test_inventory_bomb_is_a_clear_error(name: str, tmp_path: Path) -> None:
    text, expected = BOMBS[name]
    path = tmp_path / "hosts.yaml"
    path.write_text(text)
    out = _cli("render", str(path))
    assert out.returncode == 2, out.stderr[-2000:]
    assert expected in out.stderr
    assert "Traceback" not in out.stderr and "MemoryError" not in out.stderr
    assert len(out.stderr) < 2000  # no huge value is printed


def test_file_far_larger_than_an_inventory(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yaml"
    path.write_text("primary: 10.0.0.1\nhosts: [a]\n# " + "x" * (8 * 1024 * 1024) + "\n")
    out = _cli("render", str(path))
    assert out.returncode == 2 and "larger than" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("lifetime", ["99999999999999999999d", "9" * 5000 + "h",
                                      "999999999d"])
def test_spec_lifetime_that_overflows(lifetime: str, tmp_path: Path) -> None:
    spec = tmp_path / "ec2.yaml"
    spec.write_text(
        "ec2:\n  name: rwork\n  region: us-east-1\n  image: ami-0123456789abcdef0\n"
        "  instance_type: t3.micro\n  count: 1\n  user: admin\n"
        f"  max_lifetime: '{lifetime}'\n  ssh_cidr: 10.0.0.0/8\n")
    out = _cli("ec2", "up", str(spec), "-o", str(tmp_path / "hosts.yaml"), "--dry-run")
    assert out.returncode == 2, out.stderr[-2000:]
    assert "max_lifetime" in out.stderr and "Traceback" not in out.stderr


def test_spec_bomb(tmp_path: Path) -> None:
    spec = tmp_path / "ec2.yaml"
    spec.write_text(_LAUGHS + "ec2:\n  name: *a9\n")
    out = _cli("ec2", "up", str(spec), "-o", str(tmp_path / "hosts.yaml"), "--dry-run")
    assert out.returncode == 2 and "expands to more than" in out.stderr
    assert "Traceback" not in out.stderr


def test_aliases_of_reasonable_size_still_work() -> None:
    """Anchors and aliases are a normal YAML feature: a small document using them loads."""
    inv = parse_inventory("defaults: &d {user: alice, ncore: 2}\nprimary: 10.0.0.1\n"
                          "hosts:\n  - {host: a, <<: *d}\n  - {host: b, <<: *d}\n")
    assert [(h.host, h.user, h.ncore) for h in inv.hosts] == [("a", "alice", 2),
                                                               ("b", "alice", 2)]


def test_error_value_is_shortened() -> None:
    with pytest.raises(InventoryError) as e:
        parse_inventory("primary: 10.0.0.1\nhosts:\n  - host: 10.0.0.2\n    user: '"
                        + "é" * 10_000 + "'\n")
    assert len(str(e.value)) < 400 and "..." in str(e.value)


@pytest.mark.parametrize("raw, line, says", [
    (b"hosts:\n  - host: a\n\x1a", 3, "U+001A"),  # a Ctrl-Z at the end
    (b"hosts:\n  - host: a\x1b[0m\n", 2, "U+001B"),  # a colour pasted from a terminal
    (b"hosts:\n  - host: a\n  - host: b\x00\n", 3, "U+0000"),
    (b"hosts:\n  - host: a\n  - host: caf\xe9\n", 3, "not a UTF-8 text file (byte 0xe9)"),
])
def test_a_character_yaml_refuses_is_named_with_its_line(raw: bytes, line: int, says: str,
                                                         tmp_path: Path) -> None:
    path = tmp_path / "hosts.yaml"
    path.write_bytes(raw)
    for args in (["render", str(path), "-o", str(tmp_path / "c.R")],
                 ["check", str(path), "--json"]):
        out = _cli(*args)
        assert out.returncode == 2, out.stderr[-2000:]
        assert "Traceback" not in out.stderr
        assert f"{path} line {line}" in out.stderr + out.stdout and says in out.stderr + out.stdout


@pytest.mark.parametrize("text, line, says", [
    ("hosts:\n  - host: 1:2:3:4:5:6:7:8\n", 2, "base 60"),  # an IPv6 address, unquoted
    ("hosts:\n  - host: a\n    ssh_port: 1:00\n", 3, "base 60"),
    ("hosts:\n  - host: 010\n", 2, "read as a number or a date"),  # (octal 8)
    ("hosts:\n  - host: 2024-01-02\n", 2, "read as a number or a date"),
    ("hosts: [a, 10.10]\n", 1, "read as a number or a date"),
])
def test_what_yaml_makes_a_number_is_never_taken_for_a_host(text: str, line: int,
                                                            says: str) -> None:
    """010 would be host 8, 1:00 port 60, 1:2:3:4:5:6:7:8 a 13-digit host: each is refused
    with its line and a hint to quote it."""
    with pytest.raises(InventoryError, match=says) as e:
        parse_inventory(text, "h.yaml")
    assert e.value.line == line and "quote" in str(e.value.hint)


def test_a_merged_key_is_overridden_by_the_mapping_s_own() -> None:
    """<<: *base, then host: of its own: YAML's rule (the mapping's own key wins); the
    same key twice in the mapping itself is still a mistake."""
    inv = parse_inventory("hosts:\n  - &gpu\n    host: g1\n    ncore: 8\n"
                          "  - <<: *gpu\n    host: g2\n"
                          "  - {<<: [*gpu, {user: bob}], host: g3, ncore: 4}\n")
    assert [(h.host, h.ncore, h.user) for h in inv.hosts] == [("g1", 8, None), ("g2", 8, None),
                                                              ("g3", 4, "bob")]
    with pytest.raises(InventoryError, match="'host' appears twice") as e:
        parse_inventory("hosts:\n  - &gpu\n    host: g1\n  - <<: *gpu\n    host: g2\n"
                        "    host: g3\n", "h.yaml")
    assert e.value.line == 6
