"""The CLI and ``import sshcluster`` print only sshcluster's own words.

These run real processes with the installed dependencies (the lock's versions, the
newest that pip resolved when it was last refreshed): a third party's import-time
warning (asyncssh's imports touch cryptography's deprecated DSA names, 10 lines with
cryptography >= 48) must never reach a user's terminal. Without the filter in
``sshcluster/quiet.py`` these tests fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

#: The installed ``sshcluster`` command, beside this interpreter.
SSHCLUSTER = str(Path(sys.executable).with_name("sshcluster"))

#: The environment a user's shell gives: no PYTHONWARNINGS of pytest's or anyone's.
ENV = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, env=ENV, timeout=60,
                          check=False)


@pytest.mark.parametrize("argv", [["--help"], ["check", "--help"], ["render", "--help"],
                                  ["ec2", "--help"], ["testbed", "--help"]])
def test_help_writes_nothing_to_stderr(argv: list[str]) -> None:
    out = _run(SSHCLUSTER, *argv)
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout
    assert out.stderr == ""


def test_a_failing_render_prints_only_its_own_error(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.yaml"
    inv.write_text("primary: auto\nhosts:\n  - host: a\n    ncore: 0\n")
    out = _run(SSHCLUSTER, "render", str(inv), "-o", str(tmp_path / "c.R"))
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert lines, "render said nothing about the error"
    assert lines[0].startswith(f"error: {inv} line 4: hosts[0].ncore"), out.stderr
    # every line is one of ours: the error, and its hint
    assert all(line.startswith(("error: ", "hint: ")) for line in lines), out.stderr
    assert "Warning" not in out.stderr


def test_import_sshcluster_is_silent() -> None:
    # (the API's names are imported on first use: asking for them imports asyncssh)
    out = _run(sys.executable, "-c", "import sshcluster, sshcluster.ec2, sshcluster.cli\n"
                                     "sshcluster.check, sshcluster.push, sshcluster.run")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout == ""


def test_other_warnings_still_show() -> None:
    # The filter is narrow: the same category raised from elsewhere is not hidden.
    code = ("import warnings, sshcluster\n"
            "from cryptography.utils import CryptographyDeprecationWarning\n"
            "warnings.warn('mine', CryptographyDeprecationWarning)\n")
    out = _run(sys.executable, "-c", code)
    assert out.returncode == 0, out.stderr
    assert "CryptographyDeprecationWarning: mine" in out.stderr
