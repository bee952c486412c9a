"""What the check's container sees and shows, on real test hosts with podman.

The check's R runs in a container that mounts exactly what the launch's container
mounts (the workdir, made as the launch makes it; else the login directory), so a
package that only a directory elsewhere under the login directory holds is missing for
the check as it is for the workers. While the check's R runs, its nonce is on no
command line and not in the container's configuration, the container carries the
check's label, and ``sshcluster status`` calls it neither a worker's nor a stray.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from sshcluster.check import check
from sshcluster.check.callback import CallbackListener
from sshcluster.check.report import CheckReport
from sshcluster.cli import cli
from sshcluster.inventory import load_inventory
from sshcluster.quoting import r_string
from sshcluster.status.scan import status
from sshcluster.testing import Testbed
from sshcluster.testing.containers import containers_left, on_host
from sshcluster.testing.fixtures import run_r_in_test
from sshcluster.testing.leftovers import launch_env, nothing_left

from .helpers import Image, container_inventory

HAS_FOREACH = """
source({file})
cl <- parallelCluster
cat("has", unlist(parallel::clusterEvalQ(cl, nzchar(system.file(package = "foreach")))),
    "\\n")
sshcluster_stop()
"""

#: A site profile (R_PROFILE) that holds the check's R until the test writes ``go`` in
#: the workdir, after saying so with a file of its own (the hosts share one filesystem).
WAIT = """local({
  writeLines("", basename(tempfile("waiting-")))
  n <- 0
  while (!file.exists("go") && n < 900) { Sys.sleep(0.1); n <- n + 1 }
})
"""


def _login_directory(tb: Testbed) -> Path:
    out = subprocess.run(tb.ssh_argv(tb.hosts[0], "pwd -P"), capture_output=True, text=True,
                         check=True, timeout=60)
    return Path(out.stdout.strip())


def test_a_library_under_the_login_directory_the_launch_does_not_mount_is_missing_for_both(
        tb: Testbed, image: Image, tmp_path: Path) -> None:
    # foreach, in a library under the login directory (not in the image); the container
    # names it (R_LIBS); the workdir is not there yet, so the launch will make it and
    # mount only it
    home = _login_directory(tb)
    scratch = home / ".cache" / f"sshcluster-test-{secrets.token_hex(4)}"
    lib = scratch / "lib"
    workdir = tmp_path / "wd-not-yet"
    try:
        lib.mkdir(parents=True)
        for pkg in ("foreach", "iterators"):  # (and what foreach needs)
            found = subprocess.run(["Rscript", "-e", f'cat(find.package("{pkg}"))'],
                                   capture_output=True, text=True, check=True).stdout
            shutil.copytree(found, lib / pkg)
        inv = container_inventory(tb, tmp_path / "hosts.yaml",
                                  {"image": image.name, "pull": "never",
                                   "options": ["--env", f"R_LIBS={lib}"]},
                                  r_packages=["foreach"], workdir=str(workdir))
        report = check(load_inventory(inv), ssh_config=[], timeout=60)
        verdicts = {r.label: r.checks["packages"] for r in report.hosts}
        for label, step in verdicts.items():
            assert step.status == "failed", (label, step)
            assert step.detail.startswith(f"in {image.name}: not installed: foreach"), \
                (label, step)
        assert workdir.is_dir()  # (made as the launch makes it)
        assert containers_left(tb) == {}
        # the launch: the workers in the image do not have foreach either
        out = tmp_path / "cluster.R"
        result = CliRunner().invoke(cli, ["render", str(inv), "-o", str(out)])
        assert result.exit_code == 0, result.output
        r = run_r_in_test(HAS_FOREACH.format(file=r_string(str(out))), tmp_path,
                          env=launch_env(tmp_path))
        assert r.returncode == 0, r.stdout + r.stderr
        has = next(line for line in r.stdout.splitlines() if line.startswith("has ")).split()
        assert has[1:] == ["FALSE"] * 4
        assert nothing_left(tb, marker=tmp_path, wait=10) == {}
        assert containers_left(tb) == {}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _cmdlines() -> list[bytes]:
    """Every process's command line on this machine (the test hosts' too: they share
    its pid namespace)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                out.append((d / "cmdline").read_bytes())
    return out


def test_while_the_checks_r_runs_its_nonce_is_in_no_command_line_nor_the_container(
        tb: Testbed, image: Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = tmp_path / "wd"
    workdir.mkdir()
    (workdir / "wait.R").write_text(WAIT)
    nonces: list[str] = []
    expect = CallbackListener.expect

    def recording(self: CallbackListener, nonce: str, label: str) -> None:
        nonces.append(nonce)
        expect(self, nonce, label)

    monkeypatch.setattr(CallbackListener, "expect", recording)
    inv = container_inventory(tb, tmp_path / "hosts.yaml",
                              {"image": image.name, "pull": "never",
                               "options": ["--env", f"R_PROFILE={workdir / 'wait.R'}"]},
                              workdir=str(workdir))
    inventory = load_inventory(inv)
    done: list[CheckReport] = []
    runner = threading.Thread(target=lambda: done.append(
        check(inventory, ssh_config=[], timeout=90)))
    runner.start()
    try:
        deadline = time.monotonic() + 80
        while len(list(workdir.glob("waiting-*"))) < len(tb.hosts):
            assert runner.is_alive() and time.monotonic() < deadline, done
            time.sleep(0.2)
        assert len(nonces) == len(tb.hosts) and all(len(n) >= 16 for n in nonces)
        # on no process's command line (the hosts', the engine's, R's in the container)
        lines = _cmdlines()
        assert lines
        for n in nonces:
            assert not [c for c in lines if n.encode() in c]
        # status: the check's container is neither a worker's nor a stray
        for hs in status(inventory).hosts:
            assert hs.error is None, hs
            assert (hs.containers, hs.stray_containers, hs.strays) == ((), (), ()), hs
        # two containers per host (R's, and the launch's keeper tried beside it), each
        # labelled as the check's, without the nonce
        for h in tb.hosts:
            while True:  # (the keeper's `run -d` goes on in the background while R runs)
                ids = on_host(tb, h, ["podman", "ps", "-q", "--filter",
                                      "label=sshcluster=check", "--filter",
                                      "label=sshcluster.user=0"]).stdout.split()
                if len(ids) == 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert len(ids) == 2, (h.hostname, ids)
            for one in ids:
                seen = on_host(tb, h, ["podman", "inspect", one])
                assert seen.returncode == 0 and '"sshcluster": "check"' in seen.stdout
                assert not [n for n in nonces if n in seen.stdout]
    finally:
        (workdir / "go").write_text("")
        runner.join(120)
    assert not runner.is_alive()
    for r in done[0].hosts:
        assert r.ok, (r.label, r.checks)
        assert r.checks["callback"].detail.startswith(f"R in {image.name} reached")
    assert containers_left(tb) == {}


def test_a_workdir_that_cannot_be_made_fails_rscript_as_it_fails_the_launch(
        tb: Testbed, image: Image, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    workdir = tmp_path / "a-file" / "wd"
    inv = container_inventory(tb, tmp_path / "hosts.yaml",
                              {"image": image.name, "pull": "never"}, workdir=str(workdir))
    report = check(load_inventory(inv), ssh_config=[], timeout=60)
    for r in report.hosts:
        assert r.failed == ["rscript"], (r.label, r.checks)
        step = r.checks["rscript"]
        assert step.detail.startswith(f"Rscript does not start in {image.name}: "), step
        assert f"sshcluster: cannot make or enter workdir {workdir} on " in step.detail
        assert step.hint and step.hint.startswith("make the workdir"), step
    assert containers_left(tb) == {}
