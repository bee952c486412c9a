"""What a push sends: the local walk, the comparison with a host's listing, and the
archive."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from sshcluster.bootstrap import READ_SCRIPT
from sshcluster.errors import PushError
from sshcluster.push.manifest import changes, local_manifest, needs_hash, parse_listing
from sshcluster.push.stream import B2SUMS, SUMS, tar_stream
from sshcluster.push.transfer import script
from sshcluster.quoting import shell_join, shell_quote


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


def test_a_link_whose_words_stay_inside_but_that_leads_out_through_another_is_left_out(
    tmp_path: Path,
) -> None:
    d = tmp_path / "data"
    (d / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "z").write_text("not data\n")
    os.symlink("..", d / "a" / "b" / "c" / "up")  # d/a/b: inside
    # lexically d/a/z; followed, up is d/a/b, so the three .. climb to tmp_path/z
    os.symlink("a/b/c/up/../../../z", d / "out")
    os.symlink("out", d / "via")  # a chain: via -> out -> outside
    os.symlink("a/b/c/up/../x", d / "in")  # d/a/x: inside both ways
    assert os.path.realpath(d / "out") == str(tmp_path / "z")
    m = local_manifest([d])
    assert [e.rel for e in m.entries if e.kind == "l"] == ["data/in", "data/a/b/c/up"]
    assert sorted(m.skipped) == [str(d / "out"), str(d / "via")]
    # a source reached through a link is judged inside itself, not its link's directory
    os.symlink(d, tmp_path / "alias")
    m = local_manifest([tmp_path / "alias"])
    assert [e.rel for e in m.entries if e.kind == "l"] == ["alias/in", "alias/a/b/c/up"]


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
    (tmp_path / "a" / "bad\nname").unlink()
    for ch, said in [("\r", r"\('\\r'\)"), ("\x1b", r"\('\\x1b'\)"), ("\x0b", r"\('\\x0b'\)"),
                     ("\x85", r"\('\\x85'\)"), ("\x7f", r"\('\\x7f'\)"), ("\\", "a backslash")]:
        (tmp_path / "a" / f"bad{ch}name").write_text("")
        with pytest.raises(PushError, match=f"a/bad.*name': a file name with .*{said}"):
            local_manifest([tmp_path / "a"])
        (tmp_path / "a" / f"bad{ch}name").unlink()


def test_a_listing_is_split_on_newlines_only() -> None:
    names = ["data/a\u2028b", "data/c\u2029d", "data/e\x85f", "data/g\x0ch", "data/i\x1ej"]
    text = "sshcluster-push-hash b2\n" + "".join(f"f 1 2 644 {n}\n" for n in names)
    assert sorted(parse_listing(text)) == sorted(names)


def test_quick_check_then_hash(tmp_path: Path) -> None:
    d = tmp_path / "data"
    d.mkdir()
    for name in ("same", "newer", "bigger", "touched", "mode"):
        (d / name).write_text("12345\n")
        os.utime(d / name, (1_700_000_000, 1_700_000_000))
    m = local_manifest([d])
    listing = (f"d 4096 1700000000.0 {d.stat().st_mode & 0o777:o} data\n"
               "f 6 1700000000.25 644 data/same\n"
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
    # a directory the host lacks, or has with another mode, is sent (an empty one too)
    (d / "out").mkdir()
    m = local_manifest([d])
    assert [e.rel for e in changes(m, remote) if e.kind == "d"] == ["data/out"]
    del remote["data"]
    assert [e.rel for e in changes(m, remote) if e.kind == "d"] == ["data", "data/out"]
    remote["data"] = parse_listing("d 4096 1 700 data")["data"]
    assert [e.rel for e in changes(m, remote) if e.kind == "d"] == (
        ["data/out"] if d.stat().st_mode & 0o777 == 0o700 else ["data", "data/out"])


@pytest.mark.parametrize("b2sums", [True, False])
def test_the_archive_ends_with_the_sums_the_hosts_check(tmp_path: Path, b2sums: bool
                                                        ) -> None:
    """Every file's SHA-256, and its BLAKE2b only when a host checks with b2sum; the
    content as it was, whether a file is bigger than a chunk, smaller, or empty."""
    src = tmp_path / "data"
    src.mkdir()
    files = {"big.bin": os.urandom((1 << 20) + 3000), "small.txt": b"x,y\n1,2\n",
             "mid.bin": os.urandom(200_000), "empty": b""}
    for name, content in files.items():
        (src / name).write_bytes(content)
    manifest = local_manifest([src])
    archive = io.BytesIO()
    tar_stream(manifest.files, [e for e in manifest.entries if e.kind == "d"], archive,
               b2sums)
    archive.seek(0)
    with tarfile.open(fileobj=archive) as tar:
        names = tar.getnames()
        assert names[-1] == SUMS and (B2SUMS in names) == b2sums
        got = {n: tar.extractfile(n).read() for n in names  # type: ignore[union-attr]
               if n.startswith("data/")}
        sums = tar.extractfile(SUMS).read().decode()  # type: ignore[union-attr]
        b2 = tar.extractfile(B2SUMS).read().decode() if b2sums else ""  # type: ignore[union-attr]
    assert got == {f"data/{n}": c for n, c in files.items()}
    for name, content in files.items():
        assert f"{hashlib.sha256(content).hexdigest()}  ./data/{name}\n" in sums
        if b2sums:
            assert f"{hashlib.blake2b(content).hexdigest()}  ./data/{name}\n" in b2


def test_a_source_that_is_a_link_is_followed_as_cp_follows_it(tmp_path: Path) -> None:
    """`push data` where data -> /mnt/big/data sends the data (it used to send nothing
    and every host said it had it all); a file named by a link sends the file; a link
    to nothing is a clear error."""
    real = tmp_path / "big" / "data"
    (real / "sub").mkdir(parents=True)
    (real / "a.csv").write_text("a\n")
    (real / "sub" / "b.csv").write_text("bb\n")
    os.symlink("../sub/b.csv", real / "sub" / "inner")  # (inner links: still links)
    os.symlink(real, tmp_path / "data")
    os.symlink(real / "a.csv", tmp_path / "model.csv")
    os.symlink(tmp_path / "nothing", tmp_path / "dangling")
    m = local_manifest([tmp_path / "data", tmp_path / "model.csv"])
    kinds = {e.rel: e.kind for e in m.entries}
    assert kinds == {"data": "d", "data/a.csv": "f", "data/sub": "d", "data/sub/b.csv": "f",
                     "data/sub/inner": "l", "model.csv": "f"}
    assert m.skipped == () and m.size == 2 + 3 + 2
    with pytest.raises(PushError, match="a link to nothing"):
        local_manifest([tmp_path / "dangling"])


def test_the_host_s_listing_follows_a_destination_that_is_a_link(tmp_path: Path) -> None:
    """On a host, DEST/data may be a link to a directory: its listing shows the files
    there, so what is unchanged is not sent again on every push (a push that has
    something to write there is refused: receive follows no link below DEST).
    (remote.sh's scan run here, as a host's sh runs it.)"""
    dest = tmp_path / "dest"
    (tmp_path / "scratch" / "data").mkdir(parents=True)
    (tmp_path / "scratch" / "data" / "x.csv").write_text("x\n")
    dest.mkdir()
    os.symlink("../scratch/data", dest / "data")
    listed = subprocess.run(
        ["sh", "-c", f"exec sh -c {shell_quote(READ_SCRIPT)} sshcluster-push "
         f"{shell_join(['scan', str(dest), 'data'])}"],
        input=script(), capture_output=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    remote = parse_listing(listed.stdout.decode().split("\n", 1)[1])
    assert set(remote) == {"data", "data/x.csv"}
    assert (remote["data"].kind, remote["data/x.csv"].kind) == ("d", "f")


def test_a_source_named_as_push_s_own_files_in_dest_is_refused(tmp_path: Path) -> None:
    # (DEST/.sshcluster-push.lock is the lock a push holds there: never a user's file)
    lock = tmp_path / ".sshcluster-push.lock"
    lock.write_text("x\n")
    with pytest.raises(PushError, match=r"\.sshcluster-push\.lock is a name push keeps"):
        local_manifest([lock])
