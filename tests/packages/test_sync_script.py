"""``R/sync.sh`` run here, as a host runs it, at the moment two syncs of one library
finish together: the other sync's copy is put in place just before this one's rename
(faked: a ``mv`` first on the PATH, and a profile of the host's R, do it then)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
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


def test_the_second_of_two_syncs_finishing_together_discards_its_copy(tmp_path: Path) -> None:
    built = build_all(tmp_path / "rpkgs", {PURE: ("2.0",)}, compiled=set(),
                      repo_versions={PURE: "2.0"})
    primary = tmp_path / "primary-lib"
    install(built, primary, PURE, "2.0")
    ref = Reference("the primary", "4.2.2", (RPackage(PURE, "2.0", str(primary / PURE)),))
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(primary / PURE, arcname=PURE)
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
