"""push with sources that are not plain: a directory or file this user cannot read, file
names that are not UTF-8 or hold control characters, links that lead out through other
links, empty directories. Each is either pushed whole or refused before anything is
sent, naming the path; never left out while the push says "ok"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sshcluster.testing import Testbed
from sshcluster.testing.fixtures import MakeTestbed

from .helpers import DEST

#: Run a command as this user (root) without the capabilities that let root read what
#: its mode forbids: as any other user would meet an unreadable file.
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
          "--inh-caps=-dac_override,-dac_read_search"]


def _inventory(tb: Testbed, tmp_path: Path, **extra: object) -> Path:
    return tb.write_inventory(tmp_path / "hosts.yaml", extra={"workdir": DEST, **extra})


def _push_cli(inv: Path, *sources: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NO_DAC, sys.executable, "-m", "sshcluster", "push", str(inv),
                           *map(str, sources)], capture_output=True, text=True, timeout=120)


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
