"""push with sources that are not plain: a directory or file this user cannot read, file
names that are not UTF-8 or hold control characters, links that lead out through other
links, empty directories. Each is either pushed whole or refused before anything is
sent, naming the path; never left out while the push says "ok"."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import sshcluster
from sshcluster.inventory import load_inventory
from sshcluster.testing import Testbed
from sshcluster.testing.fixtures import MakeTestbed
from sshcluster.testing.hosts import host_dir

from .helpers import DEST, SSHCLUSTER, cli_env

#: Run a command as this user (root) without the capabilities that let root read what
#: its mode forbids: as any other user would meet an unreadable file.
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
          "--inh-caps=-dac_override,-dac_read_search"]


def _inventory(tb: Testbed, tmp_path: Path, **extra: object) -> Path:
    return tb.write_inventory(tmp_path / "hosts.yaml", extra={"workdir": DEST, **extra})


def _push_cli(inv: Path, *sources: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NO_DAC, *SSHCLUSTER, "push", str(inv), *map(str, sources)],
                          capture_output=True, text=True, timeout=120, env=cli_env())


def _ls(tb: Testbed, host: object, dest: str = DEST) -> str:
    out = subprocess.run(tb.ssh_argv(host, f"cd {dest} 2>/dev/null && find . | sort"),  # type: ignore[arg-type]
                         capture_output=True, text=True, timeout=60)
    return out.stdout


def test_an_unreadable_directory_stops_the_push_before_anything_is_sent(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    tb = make_testbed(1, private_dirs={"/srv": "16m"})
    inv = _inventory(tb, tmp_path)
    data = tmp_path / "src" / "data"
    (data / "locked").mkdir(parents=True)
    (data / "a.csv").write_text("a\n")
    (data / "locked" / "b.csv").write_text("b\n")
    (data / "locked").chmod(0o311)  # searchable, not listable
    try:
        out = _push_cli(inv, data)
    finally:
        (data / "locked").chmod(0o755)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"cannot read the directory {data / 'locked'}: Permission denied" in out.stderr
    assert "Traceback" not in out.stderr
    assert _ls(tb, tb.hosts[0]) == ""


def test_an_unreadable_file_stops_the_push_before_anything_is_sent(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    tb = make_testbed(1, private_dirs={"/srv": "16m"})
    inv = _inventory(tb, tmp_path)
    data = tmp_path / "src" / "data"
    data.mkdir(parents=True)
    (data / "a.csv").write_text("a\n")
    (data / "z.csv").write_text("z\n")
    (data / "z.csv").chmod(0o000)
    out = _push_cli(inv, data)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"cannot read {data / 'z.csv'}: Permission denied" in out.stderr
    assert "Traceback" not in out.stderr
    assert _ls(tb, tb.hosts[0]) == ""  # not a.csv either: nothing was sent


def test_names_that_are_not_utf8_arrive_as_the_same_bytes_and_are_then_unchanged(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    tb = make_testbed(2, private_dirs={"/srv": "16m"})
    inv = load_inventory(_inventory(tb, tmp_path))
    data = tmp_path / "src" / "data"
    (data / os.fsdecode(b"d\xff")).mkdir(parents=True)
    latin1 = data / os.fsdecode(b"caf\xe9.csv")
    latin1.write_text("x\n1\n")
    (data / os.fsdecode(b"d\xff") / "\u00e9t\u00e9.csv").write_text("y\n2\n")

    first = sshcluster.push(inv, [data])
    assert first.ok, first.to_json()
    assert {h.detail for h in first.hosts} == {"2 files, 8 bytes sent"}
    for h in tb.hosts:
        got = subprocess.run(tb.ssh_argv(h, f"cd {DEST} && find data -type f | sort && "
                                            "cat data/caf*.csv"),
                             capture_output=True, timeout=60, check=True).stdout
        assert got == (b"data/caf\xe9.csv\ndata/d\xff/\xc3\xa9t\xc3\xa9.csv\nx\n1\n")
    assert {h.detail for h in sshcluster.push(inv, [data]).hosts} == {"unchanged"}
    # a new mtime: the hosts hash it (its name goes to them and back), then set theirs
    os.utime(latin1, (1_700_000_000, 1_700_000_000))
    again = sshcluster.push(inv, [data])
    assert again.ok and again.bytes_out == 0, again.to_json()
    for h in tb.hosts:
        got = subprocess.run(tb.ssh_argv(h, f"stat -c %Y {DEST}/data/caf*.csv"),
                             capture_output=True, text=True, timeout=60, check=True).stdout
        assert got.strip() == "1700000000"


def test_control_characters_are_refused_and_other_line_breaks_are_just_names(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    tb = make_testbed(1, private_dirs={"/srv": "16m"})
    inv = load_inventory(_inventory(tb, tmp_path))
    data = tmp_path / "src" / "data"
    data.mkdir(parents=True)
    # U+2028, U+2029: no control characters, but Python's splitlines() splits on them
    (data / "a\u2028b.csv").write_text("1\n")
    (data / "c\u2029d.csv").write_text("2\n")
    first = sshcluster.push(inv, [data])
    assert first.ok and first.hosts[0].detail == "2 files, 4 bytes sent", first.to_json()
    assert sshcluster.push(inv, [data]).hosts[0].detail == "unchanged"
    os.utime(data / "a\u2028b.csv", (1_700_000_000, 1_700_000_000))  # hashed, then touched
    again = sshcluster.push(inv, [data])
    assert again.ok and again.bytes_out == 0, again.to_json()
    assert sshcluster.push(inv, [data]).hosts[0].detail == "unchanged"

    # a carriage return: sha256sum would print the name escaped, failing every push
    (data / "e\rf.csv").write_text("3\n")
    with pytest.raises(sshcluster.PushError, match=r"'data/e\\rf\.csv': a file name with a "
                                                   r"control character \('\\r'\)"):
        sshcluster.push(inv, [data])
    assert "e\rf" not in _ls(tb, tb.hosts[0])


def test_what_a_host_says_and_odd_local_names_reach_the_terminal_escaped(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    tb = make_testbed(1, private_dirs={"/srv": "16m"})
    inv = _inventory(tb, tmp_path)
    # the host's own words: its TMPDIR, in the reason it gives for failing
    bashrc = host_dir(tb.workdir, tb.hosts[0]) / "bashrc"
    bashrc.write_text("export TMPDIR=$'/nowhere\\e]0;owned\\a\\e[2J'\n" + bashrc.read_text())
    data = tmp_path / "src" / "data"
    data.mkdir(parents=True)
    (data / "a.csv").write_text("a\n")
    os.symlink("/etc/passwd", data / os.fsdecode(b"caf\xe9"))  # left out, and named
    # (wide: rich would fold a long path, the test's directory under pytest-xdist, mid-word)
    out = subprocess.run([*SSHCLUSTER, "push", str(inv), str(data)], capture_output=True,
                         timeout=120, env={**cli_env(), "COLUMNS": "1000"})
    assert out.returncode == 1, out
    assert b"\x1b" not in out.stdout and b"\x07" not in out.stdout, out.stdout
    text = " ".join(out.stdout.decode().split())  # (rich wraps long lines)
    assert "cannot make a directory in /nowhere\\x1b]0;owned\\x07\\x1b[2J" in text, text
    assert f"skipped {data}/caf\\xe9: a symlink" in text, text


@pytest.mark.parametrize("fanout", ["direct", "chain"])
def test_an_empty_directory_added_later_is_made_and_a_directory_s_mode_follows_ours(
    make_testbed: MakeTestbed, tmp_path: Path, fanout: str
) -> None:
    tb = make_testbed(2, private_dirs={"/srv": "16m"}, mesh=fanout == "chain")
    inv = load_inventory(_inventory(tb, tmp_path, fanout=fanout))
    data = tmp_path / "src" / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "a.csv").write_text("a\n")
    assert sshcluster.push(inv, [data]).ok

    (data / "output" / "plots").mkdir(parents=True)  # where the jobs will write
    for d in (data / "output", data / "output" / "plots"):
        d.chmod(0o755)
    second = sshcluster.push(inv, [data])
    assert [h.detail for h in second.hosts] == ["2 directories made"] * 2, second.to_json()
    (data / "sub").chmod(0o700)
    third = sshcluster.push(inv, [data])
    assert [h.detail for h in third.hosts] == ["1 directory made"] * 2, third.to_json()
    assert {h.via for h in third.hosts} == {fanout}
    for h in tb.hosts:
        got = subprocess.run(tb.ssh_argv(h, f"cd {DEST} && find data -printf '%m %y %p\\n'"
                                            " | sort -k3"),
                             capture_output=True, text=True, timeout=60, check=True).stdout
        assert got.splitlines() == [
            f"{(data.stat().st_mode & 0o777):o} d data", "755 d data/output",
            "755 d data/output/plots", "700 d data/sub", "644 f data/sub/a.csv"], got
    assert {h.detail for h in sshcluster.push(inv, [data]).hosts} == {"unchanged"}
