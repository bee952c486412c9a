"""What a push sends: the local walk, and the comparison with a host's listing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sshcluster.errors import PushError
from sshcluster.push.manifest import changes, local_manifest, needs_hash, parse_listing


def test_walk_keeps_modes_and_inner_links_and_leaves_out_links_that_lead_outside(
    tmp_path: Path,
) -> None:
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "a.csv").write_text("a\n")
    (d / "sub" / "a.csv").chmod(0o640)
    os.symlink("sub/a.csv", d / "ok")
    os.symlink("../sub/a.csv", d / "sub" / "ok2")
    os.symlink("../../elsewhere", d / "sub" / "climbs")
    os.symlink(str(d / "sub" / "a.csv"), d / "absolute")  # inside here, not on a host
    os.symlink("sub", d / "dirlink")
    m = local_manifest([d])
    kinds = {e.rel: (e.kind, e.mode if e.kind != "l" else e.target) for e in m.entries}
    assert kinds == {"data": ("d", d.stat().st_mode & 0o777),
                     "data/sub": ("d", (d / "sub").stat().st_mode & 0o777),
                     "data/sub/a.csv": ("f", 0o640), "data/ok": ("l", "sub/a.csv"),
                     "data/sub/ok2": ("l", "../sub/a.csv"), "data/dirlink": ("l", "sub")}
    assert sorted(m.skipped) == sorted([str(d / "absolute"), str(d / "sub" / "climbs")])
    assert m.size == 2


def test_a_single_file_lands_under_its_name_and_two_sources_may_not_collide(
    tmp_path: Path,
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for p in (tmp_path / "a" / "x.csv", tmp_path / "b" / "x.csv"):
        p.write_text("1\n")
    assert [e.rel for e in local_manifest([tmp_path / "a" / "x.csv"]).entries] == ["x.csv"]
    with pytest.raises(PushError, match=r"land at x\.csv"):
        local_manifest([tmp_path / "a" / "x.csv", tmp_path / "b" / "x.csv"])
    with pytest.raises(PushError, match="cannot read"):
        local_manifest([tmp_path / "missing"])
    (tmp_path / "a" / "bad\nname").write_text("")
    with pytest.raises(PushError, match="newline"):
        local_manifest([tmp_path / "a"])


def test_quick_check_then_hash(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    for name in ("same", "newer", "bigger", "touched", "mode"):
        (d / name).write_text("12345\n")
        os.utime(d / name, (1_700_000_000, 1_700_000_000))
    m = local_manifest([d])
    listing = ("f 6 1700000000.25 644 data/same\n"
               "f 6 1700000000.0 644 data/newer\n"
               "f 7 1700000000.0 644 data/bigger\n"
               "f 6 1600000000.0 644 data/touched\n"
               "f 6 1700000000.0 600 data/mode\n"
               "garbage\n")
    remote = parse_listing(listing)
    assert "garbage" not in remote and remote["data/same"].mtime == 1_700_000_000
    (d / "newer").touch()
    m = local_manifest([d])
    assert sorted(e.rel for e in needs_hash(m, remote)) == ["data/newer", "data/touched"]
    assert sorted(e.rel for e in changes(m, remote)) == [
        "data/bigger", "data/mode", "data/newer", "data/touched"]
    assert sorted(e.rel for e in changes(m, remote, ["data/touched"])) == [
        "data/bigger", "data/mode", "data/newer"]
