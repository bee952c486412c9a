"""Running R with a deadline (the demo's and the tests' one way to run an R script)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from sshcluster.errors import SshclusterError
from sshcluster.testing import RTimeout, run_r, run_r_code
from sshcluster.testing.fixtures import skip_or_fail


@pytest.fixture
def need_r() -> None:
    if shutil.which("Rscript") is None:
        skip_or_fail("needs Rscript")


@pytest.mark.usefixtures("need_r")
def test_run_r_returns_what_r_printed_and_its_status(tmp_path: Path) -> None:
    out = run_r_code('cat("out\\n"); message("err"); quit(status = 3)', tmp_path, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (3, "out\n", "err\n")


@pytest.mark.usefixtures("need_r")
def test_a_hang_is_killed_at_the_deadline_and_says_what_ran(tmp_path: Path) -> None:
    # The launcher's per-host files of a launch that hangs, in R's session tempdir.
    code = ('d <- file.path(tempdir(), "sshcluster-1"); dir.create(d)\n'
            'writeLines("started", file.path(d, "10.0.0.2.status"))\n'
            'cat("before\\n"); flush(stdout()); Sys.sleep(60)\n')
    t0 = time.monotonic()
    with pytest.raises(RTimeout) as e:
        # (long enough for R to start and print on a busy machine; 3 s was not)
        run_r_code(code, tmp_path, timeout=10)
    assert time.monotonic() - t0 < 50  # a hang guard
    assert e.value.message.startswith("R did not finish within 10 s")
    assert e.value.stdout == "before\n"
    assert "10.0.0.2.status: 'started'" in e.value.launcher_files
    assert f"--file={e.value.script}" in e.value.processes  # R, its whole command line
    assert "launcher files:\n" in e.value.diagnostics()


def test_no_rscript_is_an_error_that_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", os.fspath(tmp_path))
    with pytest.raises(SshclusterError, match="Rscript is not installed") as e:
        run_r(tmp_path / "x.R", timeout=5)
    assert e.value.hint is not None and "r-base-core" in e.value.hint
