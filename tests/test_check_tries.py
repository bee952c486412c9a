"""The check tries what the fast launch relies on, with the launch's own code, on real
test hosts: a host the launch would fail on fails the check at the step that says why.

Each case shows the launch failing (the rendered file sourced by real R) and the check
failing that host with the step and the inventory key to change, while a host or an
inventory without the fault passes: the oldest R the workers run on (``R/r_version.R``),
the ``workdir`` (``R/workdir.sh``: made, entered, and R started in it), ``worker_output``
(``R/worker_output.R``), ``lease: true`` (``R/lease.sh``), and ssh settings that break
the launch's ssh while the check's own connection works.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from sshcluster.bootstrap import RenderOptions, write_bootstrap
from sshcluster.check.preflight import check
from sshcluster.check.report import CheckReport, HostReport
from sshcluster.inventory import Inventory, load_inventory
from sshcluster.quoting import r_string
from sshcluster.ssh.command import openssh_version
from sshcluster.testing import Testbed, free_port
from sshcluster.testing.fixtures import run_r_in_test
from sshcluster.testing.leftovers import nothing_left

#: The R that starts a cluster from the rendered file and stops it again.
LAUNCH = """source({file})
got <- parallel::clusterEvalQ(parallelCluster, getwd())
cat("RESULT", unique(unlist(got)), length(got), "\\n")
sshcluster_stop()
"""
#: A site profile that makes this machine's R (4.2) say it is R 4.0.5, to the launch's
#: workers and to the check alike: R older than the workers' minimum cannot be installed
#: here, and only getRversion() is what both ask.
OLD_R = """local({
  b <- baseenv()
  unlockBinding("getRversion", b)
  assign("getRversion", function() package_version("4.0.5"), envir = b)
  lockBinding("getRversion", b)
})
"""
#: A job's lease on a host, as its lease session takes it (jobs/lease.sh): the host's
#: lease file, locked, with the job's line.
HOLD_LEASE = """ldir="$HOME/.cache/sshcluster/leases"
lf="$ldir/$(uname -n)-$(readlink /proc/self/ns/net | tr -dc 0-9).lock"
mkdir -p "$ldir" && exec 9>>"$lf" && flock -n 9 || exit 1
: >"$lf"
"""


def _inventory(tb: Testbed, tmp_path: Path, name: str = "hosts.yaml",
               hosts: list[dict[str, Any]] | None = None, **top: Any) -> Inventory:
    """Two of the testbed's hosts (or ``hosts``), one worker each, ``top`` added."""
    entries = hosts or [{"host": h.address, "ssh_port": h.ssh_port} for h in tb.hosts[:2]]
    path = tb.write_inventory(tmp_path / name, ncore=1,
                              extra={"setup_timeout": 30, "hosts": entries, **top})
    return load_inventory(path)


def _ssh_config(tmp_path: Path, extra: str = "") -> str:
    """A client config that leaves this machine's keys, agent and known hosts out."""
    path = tmp_path / "ssh_config"
    path.write_text("Host *\n  GlobalKnownHostsFile /dev/null\n  IdentitiesOnly yes\n"
                    f"  IdentityAgent none\n{extra}")
    return str(path)


def _check(inv: Inventory, tmp_path: Path, extra: str = "") -> CheckReport:
    return check(inv, timeout=30, ssh_config=[_ssh_config(tmp_path, extra)])


def _launch(inv: Inventory, tmp_path: Path, name: str = "cluster.R",
            options: RenderOptions | None = None) -> subprocess.CompletedProcess[str]:
    cluster_r = tmp_path / name
    write_bootstrap(inv, cluster_r, options)
    return run_r_in_test(LAUNCH.format(file=r_string(str(cluster_r))), tmp_path)


def _by_label(report: CheckReport) -> Mapping[str, HostReport]:
    return {h.label: h for h in report.hosts}


def _said(h: HostReport) -> dict[str, tuple[str, str]]:
    return {s: (r.status, r.detail) for s, r in h.checks.items() if r.status != "ok"}


# --------------------------------------------------------------------------- R < 4.1


def test_a_host_whose_r_is_too_old_for_the_workers_fails_rscript(
        testbed: Testbed, tmp_path: Path) -> None:
    tb = testbed
    profile = tmp_path / "old-r.R"
    profile.write_text(OLD_R)
    old = tmp_path / "Rscript-4.0.5"
    old.write_text(f"#!/bin/sh\nR_PROFILE={profile} exec Rscript \"$@\"\n")
    old.chmod(0o755)
    first, second = tb.hosts[:2]
    inv = _inventory(tb, tmp_path, hosts=[
        {"host": first.address, "ssh_port": first.ssh_port, "rscript": str(old)},
        {"host": second.address, "ssh_port": second.ssh_port}])

    # The launch: the workers of the old R quit at once, saying why.
    out = _launch(inv, tmp_path)
    assert out.returncode != 0, out.stdout
    assert "is 4.0.5; the workers need R 4.1.0 or later" in out.stderr, out.stderr

    # The check: that host fails rscript (naming the version, and rscript: to change);
    # the other passes.
    hosts = _by_label(_check(inv, tmp_path))
    bad, good = hosts[inv.hosts[0].label], hosts[inv.hosts[1].label]
    step = bad.checks["rscript"]
    assert step.status == "failed", _said(bad)
    assert "(R 4.0.5)" in step.detail and "the workers need R 4.1.0 or later" in step.detail
    assert step.hint is not None and "'rscript:'" in step.hint
    assert step.field == "rscript" and step.line is not None
    assert good.ok, _said(good)

    # The classic launch starts R's own workers, which run on an older R: a warning only.
    classic = _by_label(_check(dataclasses.replace(inv, launch="classic"), tmp_path))
    assert classic[inv.hosts[0].label].checks["rscript"].status == "warning"
    assert nothing_left(tb, marker=tmp_path) == {}


# --------------------------------------------------------------------------- workdir


def test_a_workdir_that_cannot_be_made_fails_rscript(testbed: Testbed, tmp_path: Path) -> None:
    tb = testbed
    (tmp_path / "a-file").write_text("")
    blocked = tmp_path / "a-file" / "work"
    inv = _inventory(tb, tmp_path, workdir=str(blocked))

    out = _launch(inv, tmp_path)
    assert out.returncode != 0, out.stdout
    assert f"cannot make or enter workdir {blocked}" in out.stderr, out.stderr

    for h in _check(inv, tmp_path).hosts:
        step = h.checks["rscript"]
        assert step.status == "failed", _said(h)
        assert f"cannot make or enter workdir {blocked}" in step.detail
        assert "Not a directory" in step.detail
        assert step.field == "workdir" and step.hint is not None and "workdir:" in step.hint
    assert nothing_left(tb, marker=tmp_path) == {}


def test_the_checks_r_starts_in_the_workdir_as_the_workers_do(
        testbed: Testbed, tmp_path: Path) -> None:
    """A workdir's .Rprofile (an renv project's, say) runs in every worker: one that
    stops R stops the launch, and now the check's R too."""
    tb = testbed
    project = tmp_path / "project"
    project.mkdir()
    (project / ".Rprofile").write_text('cat("this project stops R\\n")\nquit(status = 7L)\n')
    inv = _inventory(tb, tmp_path, workdir=str(project))

    out = _launch(inv, tmp_path)
    assert out.returncode != 0, out.stdout

    for h in _check(inv, tmp_path).hosts:
        step = h.checks["rscript"]
        assert step.status == "failed", _said(h)
        assert "this project stops R" in step.detail

    # A workdir that can be made: made by the check, and the workers start in it.
    fine = tmp_path / "fine" / "work"
    inv = _inventory(tb, tmp_path, "fine.yaml", workdir=str(fine))
    for h in _check(inv, tmp_path).hosts:
        assert h.ok, _said(h)
    assert fine.is_dir()
    out = _launch(inv, tmp_path, "fine.R")
    assert out.returncode == 0, out.stderr
    assert f"RESULT {fine} 2" in out.stdout
    assert nothing_left(tb, marker=tmp_path) == {}


def test_the_classic_launchs_r_starts_in_the_login_directory_and_the_checks_too(
        testbed: Testbed, tmp_path: Path) -> None:
    """The classic launch's workers start where ssh starts them (the login directory) and
    move to the workdir once started: a workdir's .Rprofile that stops R (see above) does
    not run in them, and the check's R for the classic launch starts there too, and passes
    the host (it failed it, as for the fast launch)."""
    tb = testbed
    project = tmp_path / "project"
    project.mkdir()
    (project / ".Rprofile").write_text('cat("this project stops R\\n")\nquit(status = 7L)\n')
    inv = _inventory(tb, tmp_path, workdir=str(project), launch="classic", port=free_port())
    for h in _check(inv, tmp_path).hosts:
        assert h.ok, _said(h)
    out = _launch(inv, tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"RESULT {project} 2" in out.stdout
    assert nothing_left(tb, marker=tmp_path) == {}


# --------------------------------------------------------------------------- worker_output


def test_a_worker_output_the_workers_refuse_fails_worker_output(
        testbed: Testbed, tmp_path: Path) -> None:
    tb = testbed
    shared = tmp_path / "everyones"
    shared.mkdir()
    shared.chmod(0o777)  # (no sticky bit: anyone could put a link to anywhere there)
    inv = _inventory(tb, tmp_path, worker_output=str(shared))

    out = _launch(inv, tmp_path)
    assert out.returncode != 0, out.stdout
    assert "others may write that directory" in out.stderr, out.stderr

    for h in _check(inv, tmp_path).hosts:
        step = h.checks["worker_output"]
        assert step.status == "failed", _said(h)
        assert f"will not write the workers' output to {shared}/" in step.detail
        assert "others may write that directory" in step.detail
        assert step.field == "worker_output"
        assert step.hint is not None and "'worker_output:'" in step.hint
    assert not list(shared.iterdir())  # (the check writes no output file)

    own = tmp_path / "own" / "logs"
    inv = _inventory(tb, tmp_path, "own.yaml", worker_output=str(own))
    for h in _check(inv, tmp_path).hosts:
        assert h.ok, _said(h)
        assert h.checks["worker_output"].detail.startswith(f"the workers write to {own}/")
    assert nothing_left(tb, marker=tmp_path) == {}


# --------------------------------------------------------------------------- lease


JOB = "R-elsewhere"


@contextlib.contextmanager
def held_lease(tb: Testbed, tmp_path: Path) -> Iterator[None]:
    """The first host's lease, held by job JOB of someone else's (its lease line, as a
    job's lease session writes it) until its ssh's stdin ends."""
    script = tmp_path / "hold.sh"  # (the hosts share this machine's files)
    script.write_text(HOLD_LEASE +
                      f'printf "%s\\t%s\\t%s\\t%s\\n" {JOB} someone@there now fit.R >&9\n'
                      "echo took\nread _\n")
    holder = subprocess.Popen(tb.ssh_argv(tb.hosts[0], "sh", str(script)),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "took\n"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_host_leased_to_another_job_fails_lease(testbed: Testbed, tmp_path: Path) -> None:
    tb = testbed
    inv = _inventory(tb, tmp_path, lease=True)
    first, second = (h.label for h in inv.hosts)
    with held_lease(tb, tmp_path):
        # (the check first: the failed launch's session on the other host holds that
        # host's lease until the session has ended, a moment after the launch)
        hosts = _by_label(_check(inv, tmp_path))
        out = _launch(inv, tmp_path)
    assert out.returncode != 0, out.stdout
    assert f"is leased to job {JOB} (someone@there" in out.stderr, out.stderr

    leased, free = hosts[first], hosts[second]
    step = leased.checks["lease"]
    assert step.status == "failed", _said(leased)
    assert step.detail.startswith(f"{first} is leased to job {JOB} "
                                  "(someone@there, since now, script fit.R)")
    assert step.field == "lease" and step.hint is not None and "'lease: false'" in step.hint
    assert free.ok, _said(free)
    assert free.checks["lease"].detail.startswith("the host's lease is free")

    # Let go: the check passes the host, and has not kept its lease (a launch takes it).
    (h,) = _check(_inventory(tb, tmp_path, "one.yaml", lease=True, hosts=[
        {"host": tb.hosts[0].address, "ssh_port": tb.hosts[0].ssh_port}]), tmp_path).hosts
    assert h.ok, _said(h)
    out = _launch(_inventory(tb, tmp_path, "one.yaml", lease=True, hosts=[
        {"host": tb.hosts[0].address, "ssh_port": tb.hosts[0].ssh_port}]), tmp_path, "one.R")
    assert out.returncode == 0, out.stderr
    assert nothing_left(tb, marker=tmp_path) == {}


# --------------------------------------------------------------------------- ssh config


@pytest.mark.parametrize("setting", ["StdinNull", "ForkAfterAuthentication"])
def test_an_ssh_setting_for_interactive_use_is_set_back(
        testbed: Testbed, tmp_path: Path, setting: str) -> None:
    """StdinNull or ForkAfterAuthentication in a user's config (for interactive use) would
    break the launch (the host's script on ssh's stdin, ssh in the background): the
    launch's ssh sets them back (its -o comes before the config), and the check resolves
    the host as that ssh does, and passes it (it failed the host before;
    tests/test_same_verdict.py runs the launch with them in a user's own ~/.ssh/config)."""
    if openssh_version() < (8, 7):
        pytest.skip("OpenSSH 8.7 or later knows these settings")
    tb = testbed
    inv = _inventory(tb, tmp_path, hosts=[{"host": tb.hosts[0].address,
                                           "ssh_port": tb.hosts[0].ssh_port}])
    (h,) = _check(inv, tmp_path, f"  {setting} yes\n").hosts
    assert h.ok, _said(h)
    assert h.checks["resolve"].status == "ok", _said(h)
    assert nothing_left(tb, marker=tmp_path) == {}


def test_a_forward_of_the_ssh_config_is_named_behind_the_reverse_tunnel(
        testbed: Testbed, tmp_path: Path) -> None:
    """A LocalForward of the user's config is made by the launch's ssh too. Behind the
    reverse tunnel (ExitOnForwardFailure) the launch fails when that port is taken (an
    open ssh of the user's, or the session to another host): the check warns, naming the
    forward (and passes the host: the port may well be free then). Without the tunnel, a
    forward that fails is only a warning of ssh's, and the check says nothing."""
    tb = testbed
    host = {"host": tb.hosts[0].address, "ssh_port": tb.hosts[0].ssh_port}
    inv = _inventory(tb, tmp_path, hosts=[host])
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out = _launch(inv, tmp_path, options=RenderOptions(
            extra_ssh_options=(f"LocalForward=127.0.0.1:{port} 127.0.0.1:22",)))
        assert out.returncode != 0, out.stdout
        assert f"{port}" in out.stderr, out.stderr
        (h,) = _check(inv, tmp_path, f"  LocalForward 127.0.0.1:{port} 127.0.0.1:22\n").hosts
    assert h.ok, _said(h)
    step = h.checks["resolve"]
    assert step.status == "warning", _said(h)
    assert "localforward" in step.detail and f"{port}" in step.detail, step.detail
    assert step.hint is not None and "tunnel: none" in step.hint
    direct = _inventory(tb, tmp_path, "direct.yaml", hosts=[host], tunnel="none")
    (h,) = _check(direct, tmp_path, "  LocalForward 1 127.0.0.1:22\n").hosts
    assert h.ok and h.checks["resolve"].status == "ok", _said(h)
    assert nothing_left(tb, marker=tmp_path) == {}


def test_clear_all_forwardings_fails_resolve_behind_the_reverse_tunnel(
        testbed: Testbed, tmp_path: Path) -> None:
    """ClearAllForwardings yes drops the reverse tunnel's -R: the launch fails, and so does
    the check's resolve. (It is not set back, as the two above are: that would bring back
    the forwards of the user's config that it clears.)"""
    tb = testbed
    inv = _inventory(tb, tmp_path, hosts=[{"host": tb.hosts[0].address,
                                           "ssh_port": tb.hosts[0].ssh_port}])
    out = _launch(inv, tmp_path, options=RenderOptions(
        extra_ssh_options=("ClearAllForwardings=yes",)))
    assert out.returncode != 0, out.stdout
    (h,) = _check(inv, tmp_path, "  ClearAllForwardings yes\n").hosts
    step = h.checks["resolve"]
    assert step.status == "failed", _said(h)
    assert "ClearAllForwardings yes" in step.detail
    assert step.hint is not None and "ssh config" in step.hint
    (h,) = _check(inv, tmp_path).hosts
    assert h.ok, _said(h)
    assert nothing_left(tb, marker=tmp_path) == {}
