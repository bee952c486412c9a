"""``R/sync.sh`` run here, as a host runs it, at the moment two syncs of one library
finish together: the other sync's copy is put in place just before this one's rename
(faked: a ``mv`` first on the PATH, and a profile of the host's R, do it then)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from sshcluster.packages import Reference, RPackage
from sshcluster.packages.sync import _SH, _VERIFY_R, _WHERE_R
from sshcluster.quoting import shell_quote
from sshcluster.testing.rpackages import PURE, build_all, install, wrapper

# The other sync's copy, whole, at the target (the first of the arguments that is a
# .incoming- directory, and the target after it): as its rename would leave it.
_OTHER_MV = """#!/bin/sh
case $1 in */.incoming-*)
  [ -e "$2" ] || { cp -R "$1" "$2.other" && rm -f "$2.other/.verified" &&
                   touch "$2.other/OTHER" && %(mv)s "$2.other" "$2"; };;
esac
exec %(mv)s "$@"
"""
_OTHER_R = """local({
  a <- commandArgs(TRUE)
  if (length(a) >= 2 && grepl("/[.]incoming-", a[[1]]) && !file.exists(a[[2]]) &&
      !grepl("[.]verified$", a[[1]])) {
    other <- paste0(a[[2]], ".other")
    dir.create(other)
    file.copy(list.files(a[[1]], full.names = TRUE), other, recursive = TRUE)
    file.create(file.path(other, "OTHER"))
    invisible(file.rename(other, a[[2]]))
  }
})
"""


def _reference_and_archive(tmp_path: Path) -> tuple[Reference, Path]:
    """The primary's reference for PURE 2.0 and the archive a sync sends of it."""
    built = build_all(tmp_path / "rpkgs", {PURE: ("2.0",)}, compiled=set(),
                      repo_versions={PURE: "2.0"})
    primary = tmp_path / "primary-lib"
    install(built, primary, PURE, "2.0")
    ref = Reference("the primary", "4.2.2", (RPackage(PURE, "2.0", str(primary / PURE)),))
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(primary / PURE, arcname=PURE)
    return ref, archive


def test_the_second_of_two_syncs_finishing_together_discards_its_copy(tmp_path: Path) -> None:
    ref, archive = _reference_and_archive(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mv").write_text(_OTHER_MV % {"mv": shutil.which("mv")})
    (bin_dir / "mv").chmod(0o755)
    (tmp_path / "own").mkdir()
    rscript = wrapper(tmp_path / "Rscript", tmp_path / "own", profile=_OTHER_R)
    root = tmp_path / "lib"
    data = {"mode": "receive", "rscript": str(rscript), "root": str(root),
            "digest": ref.digest, "token": "0123456789abcdef", "manifest": PURE,
            "where_r": _WHERE_R, "verify_r": _VERIFY_R, "install_r": "", "repos": "",
            "pins": f"{PURE}=2.0"}
    script = tmp_path / "sync.sh"
    script.write_text("".join(f"{k}={shell_quote(v)}\n" for k, v in data.items()) + _SH)
    with archive.open("rb") as stdin:
        done = subprocess.run(["sh", str(script)], stdin=stdin, capture_output=True,
                              text=True, timeout=120,
                              env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert done.returncode == 0, done
    assert "STATE=there" in done.stdout.splitlines(), done.stdout
    [target] = root.glob(f"R-*/*/*/{ref.digest}")
    assert (target / "OTHER").exists()  # the other's copy, left as it was
    assert sorted(p.name for p in target.iterdir()) == ["OTHER", "SSHCLUSTER-MANIFEST", PURE]
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # ours discarded


def test_a_sync_sweeps_only_the_copies_no_sync_may_still_be_writing(tmp_path: Path) -> None:
    """Each sync's .incoming- directory says until when its sync may still write it: a
    second sync removes those past it (and, from syncs before this scheme, those an hour
    old), never a live one of a sync with a long --timeout, however old."""
    ref, archive = _reference_and_archive(tmp_path)
    root = tmp_path / "lib"
    bin_dir = tmp_path / "bin"  # (a mktemp that notes the names asked for)
    bin_dir.mkdir()
    (bin_dir / "mktemp").write_text(
        f'#!/bin/sh\necho "$@" >>{shell_quote(str(tmp_path / "mktemp.log"))}\n'
        f'exec {shell_quote(shutil.which("mktemp") or "mktemp")} "$@"\n')
    (bin_dir / "mktemp").chmod(0o755)

    def sync_sh(mode: str, lifetime: int, stdin: Path | None = None) -> str:
        data = {"mode": mode, "rscript": shutil.which("Rscript") or "Rscript",
                "root": str(root), "digest": ref.digest, "token": "0123456789abcdef",
                "manifest": PURE, "where_r": _WHERE_R, "verify_r": _VERIFY_R,
                "install_r": "", "repos": "", "pins": f"{PURE}=2.0",
                "lifetime": str(lifetime)}
        script = tmp_path / "sync.sh"
        script.write_text("".join(f"{k}={shell_quote(v)}\n" for k, v in data.items()) + _SH)
        with (stdin or Path(os.devnull)).open("rb") as f:
            done = subprocess.run(["sh", str(script)], stdin=f, capture_output=True,
                                  text=True, timeout=120,
                                  env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
        assert done.returncode == 0, done
        return done.stdout

    [target] = [line.split("=", 1)[1] for line in sync_sh("probe", 60).splitlines()
                if line.startswith("LIBRARY=")]
    base = Path(target).parent
    now = int(time.time())
    hours_ago = now - 2 * 3600
    planted = {  # name: (its mtime, whether a sync now may remove it)
        f".incoming-{ref.digest}-until{now + 3 * 3600}-live01": (hours_ago, False),
        f".incoming-{ref.digest}-until{now - 5}-dead01": (now, True),
        f".incoming-{ref.digest}-old001": (hours_ago, True),  # (from before: its age)
        f".incoming-{ref.digest}-new001": (now, False),
        f".broken-{ref.digest}-0123456789abcdef": (hours_ago, True),
    }
    for name, (mtime, _) in planted.items():
        (base / name).mkdir()
        (base / name / "x").write_text("x")
        os.utime(base / name, (mtime, mtime))
    before = int(time.time())
    assert "STATE=complete" in sync_sh("receive", 7200, archive).splitlines()
    after = int(time.time())
    left = {p.name for p in base.iterdir()}
    assert left == {Path(target).name} | {n for n, (_, gone) in planted.items() if not gone}
    # (and its own copy's name said how long it might take: a sweep left it alone)
    [template] = [a for a in (tmp_path / "mktemp.log").read_text().split() if "incoming" in a]
    until = int(template.rsplit("-until", 1)[1].split("-")[0])
    assert before + 7200 <= until <= after + 7200
