"""The workers' locale: a host that lacks the primary's.

The launch hands each host the primary's ``LANG`` and ``LC_*``. A host that lacks that
locale must give its workers one it has (C.UTF-8, else C), or R warns at every start,
and a ``~/.Rprofile`` with ``options(warn = 2)`` kills every worker. The check starts its
R with the same variables, through the same host script (``R/locale.sh``), so that it
says what the launch will do. The primary's locale here is one no machine has
(``en_ZZ``: no such territory), so the test hosts, which share this machine's files,
lack it too.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from sshcluster.bootstrap import RenderOptions, write_bootstrap
from sshcluster.check.locale import launch_locale
from sshcluster.check.preflight import check
from sshcluster.check.probe import RemoteContext, parse_facts, remote_script, rscript_step
from sshcluster.inventory import Host, load_inventory
from sshcluster.protocol import LOCALE_VARS
from sshcluster.testing import Testbed, free_port
from sshcluster.testing.accounts import authorize, throwaway_account
from sshcluster.testing.fixtures import run_r_in_test, skip_or_fail
from sshcluster.testing.leftovers import nothing_left

MISSING = "en_ZZ.UTF-8"
LOCALE_SH = resources.files("sshcluster").joinpath("R", "locale.sh").read_text("utf-8")
#: A ~/.Rprofile as some users have it, and a line that shows the locale R started in.
RPROFILE = 'options(warn = 2)\ncat("SEEN=", Sys.getenv("LANG"), "\\n", sep = "")\n'


def _have(locale: str) -> bool:
    out = subprocess.run(["locale"], env={**os.environ, "LC_ALL": locale},
                         capture_output=True, text=True, check=False)
    return out.stderr.strip() == ""


@pytest.fixture(scope="module", autouse=True)
def _missing_here() -> None:
    if shutil.which("locale") is None:
        skip_or_fail("needs locale(1) (libc-bin)")
    # (else the host has it, and nothing here could fail)
    assert not _have(MISSING), f"{MISSING} is installed on this machine"


@pytest.mark.parametrize("shell", ["dash", "bash"])
def test_a_locale_the_host_lacks_becomes_one_it_has(shell: str) -> None:
    if shutil.which(shell) is None:
        skip_or_fail(f"needs {shell}")
    argv = [shell, "--posix"] if shell == "bash" else [shell]
    script = (LOCALE_SH + 'sshcluster_locales "$@"\n'
              'printf "LANG<%s> LC_ALL<%s> LC_TIME<%s> OTHER<%s>\\n" '
              '"$LANG" "${LC_ALL-unset}" "$LC_TIME" "$OTHER"\n')
    out = subprocess.run([*argv, "-c", script, "sh", f"LANG={MISSING}", "LC_ALL=",
                          "LC_TIME=C.UTF-8", "OTHER=a b"],
                         env={"PATH": os.environ["PATH"]}, capture_output=True, text=True,
                         check=True)
    stand_in = "C.UTF-8" if _have("C.UTF-8") else "C"
    assert out.stdout.splitlines() == [
        f"LOCALE=LANG {MISSING} {stand_in}",
        f"LANG<{stand_in}> LC_ALL<> LC_TIME<C.UTF-8> OTHER<a b>"]


def test_the_check_sends_what_the_launch_sends() -> None:
    r = resources.files("sshcluster").joinpath("R", "common.R").read_text("utf-8")
    assert all(f'"{name}"' in r for name in LOCALE_VARS)
    assert launch_locale(None, {"LANG": MISSING, "LC_TIME": "x;rm", "LC_ALL": ""}) == [
        f"LANG={MISSING}"]
    # (the inventory's: every other variable emptied, so that none ssh sent wins over it)
    assert launch_locale("C.UTF-8", {"LANG": MISSING}) == [
        "LANG=C.UTF-8", *(f"{name}=" for name in LOCALE_VARS[1:])]
    assert "LC_CTYPE=" in launch_locale("C.UTF-8")


@pytest.mark.parametrize(("environ", "python", "primary"), [
    ({}, "C.UTF-8", "None"), ({"LANG": "C"}, "C.UTF-8", "None"),
    ({"LANG": MISSING}, "C.UTF-8", "None"),
    ({"LANG": "C.UTF-8"}, "None", "None"), ({"LC_ALL": "C.UTF-8"}, "None", "None"),
    ({"LC_CTYPE": "C.UTF-8"}, "C.UTF-8", "C.UTF-8"), ({"LC_CTYPE": "C"}, "C.UTF-8", "C"),
    ({"LC_CTYPE": MISSING}, "C.UTF-8", MISSING)])
def test_the_primarys_locale_is_the_users_not_pythons(environ: dict[str, str], python: str,
                                                        primary: str) -> None:
    """Python started in the C locale puts LC_CTYPE=C.UTF-8 in its own environment (PEP
    538); the primary's R never gets it, so neither the check nor the launch's locale
    counts it. One the user set is kept."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("LC_", "LANG", "PYTHONCOERCE"))}
    out = subprocess.run(
        [sys.executable, "-c", "import os; from sshcluster.ssh.environment import "
         "primary_environ; print(os.environ.get('LC_CTYPE'), "
         "primary_environ().get('LC_CTYPE'))"],
        env={**base, **environ}, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [python, primary]


def test_the_checks_r_starts_in_the_launchs_locale(tmp_path: Path) -> None:
    if shutil.which("Rscript") is None:
        skip_or_fail("needs Rscript")
    (tmp_path / ".Rprofile").write_text(RPROFILE)
    script = remote_script(rscript=None, r_packages=[], primary="127.0.0.1",
                           primary_user="nobody", primary_ssh_port=1, port=0, token="t",
                           budget=5, locale=[f"LANG={MISSING}", "LC_ALL="])
    out = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
                         timeout=60, cwd=tmp_path, check=True)
    facts = parse_facts(out.stdout.splitlines())
    assert facts.get("R_EXIT") == "0", facts.other
    assert facts.get("SEEN") == "C.UTF-8"
    step = rscript_step(facts, RemoteContext(Host("h1", ncore=None)), True)
    assert step.status == "warning"
    assert f"h1 has no locale LANG={MISSING}: its workers run in C.UTF-8" in step.detail
    assert step.hint is not None and f"generate {MISSING} on h1" in step.hint


def test_r_that_dies_of_its_locale_gets_a_hint() -> None:
    facts = parse_facts([
        "RSCRIPT=/usr/bin/Rscript", f"LOCALE=LANG {MISSING} C",
        'Error: (converted from warning) Setting LC_CTYPE failed, using "C"',
        "Execution halted", "R_EXIT=1"])
    step = rscript_step(facts, RemoteContext(Host("h1", ncore=None)), True)
    assert step.status == "failed"
    assert step.hint is not None and f"generate {MISSING} on h1" in step.hint


@pytest.fixture
def warn2_user() -> Iterator[str]:
    """A throwaway account (login shell sh) whose ~/.Rprofile has options(warn = 2), with
    a home of its own that sshd can reach (pytest's temporary directories are root's)."""
    with throwaway_account("/bin/sh", "scloc") as (name, home):
        (home / ".Rprofile").write_text(RPROFILE)
        shutil.chown(home / ".Rprofile", user=name)
        yield name


def test_the_check_warns_and_the_launch_works_where_the_primarys_locale_is_missing(
        testbed: Testbed, tmp_path: Path, warn2_user: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    tb = testbed
    authorize(Path(pwd.getpwnam(warn2_user).pw_dir), warn2_user, tb.identity_file)
    hosts = tb.hosts[:2]
    inv_path = tb.write_inventory(tmp_path / "hosts.yaml", ncore=2, extra={
        "defaults": {"user": warn2_user, "identity_file": str(tb.identity_file), "ncore": 2},
        "hosts": [{"host": h.address, "ssh_port": h.ssh_port} for h in hosts]})
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("Host *\n  GlobalKnownHostsFile /dev/null\n"
                          "  IdentitiesOnly yes\n  IdentityAgent none\n")
    inv = load_inventory(inv_path)
    primary_locale = {"LANG": MISSING, "LC_ALL": ""}
    for name, value in primary_locale.items():
        monkeypatch.setenv(name, value)

    # The check: each host passes, with a warning that names the locale.
    report = check(inv, timeout=30, ssh_config=[str(ssh_config)])
    for h in report.hosts:
        assert h.ok, (h.label, {s: (r.status, r.detail) for s, r in h.checks.items()
                                if r.status == "failed"})
        rs = h.checks["rscript"]
        assert rs.status == "warning", (rs.status, rs.detail)
        assert f"no locale LANG={MISSING}: its workers run in C.UTF-8" in rs.detail
        assert rs.hint is not None and "LANG=C.UTF-8" in rs.hint

    # The launch, from a primary R in that locale: its workers start, in C.UTF-8.
    cluster_r = tmp_path / "cluster.R"
    write_bootstrap(inv, cluster_r)
    out = run_r_in_test(
        f'source("{cluster_r}")\n'
        "got <- parallel::clusterEvalQ(parallelCluster, Sys.getlocale('LC_CTYPE'))\n"
        "cat('RESULT', unique(unlist(got)), length(got), '\\n')\n"
        "sshcluster_stop()\n", tmp_path, env=primary_locale)
    assert out.returncode == 0, out.stderr
    assert "RESULT C.UTF-8 4" in out.stdout, out.stdout
    assert nothing_left(tb, marker=tmp_path) == {}


def test_the_classic_launchs_r_starts_in_what_ssh_sends_and_the_check_starts_in_it_too(
        testbed: Testbed, tmp_path: Path, warn2_user: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The classic launch's workers start R in the session ssh opens: with the primary's
    LANG where ssh sends it (Debian's ssh_config: SendEnv LANG LC_*) and the host's sshd
    takes it (AcceptEnv), so a host that lacks that locale ends every worker whose
    ~/.Rprofile has options(warn = 2), whatever the inventory's locale:. The check's
    session sends what ssh sends, and its R starts as the classic workers' do: it fails
    the host, and its hint does not offer 'locale:'. (The fast launch hands its workers
    the locale before R starts: the test above.)"""
    tb = testbed
    authorize(Path(pwd.getpwnam(warn2_user).pw_dir), warn2_user, tb.identity_file)
    host = tb.hosts[0]
    inv_path = tb.write_inventory(tmp_path / "hosts.yaml", ncore=1, extra={
        "defaults": {"user": warn2_user, "identity_file": str(tb.identity_file), "ncore": 1},
        "hosts": [{"host": host.address, "ssh_port": host.ssh_port}],
        "launch": "classic", "locale": "C.UTF-8", "port": free_port()})
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("Host *\n  GlobalKnownHostsFile /dev/null\n"
                          "  IdentitiesOnly yes\n  IdentityAgent none\n  SendEnv LANG LC_*\n")
    inv = load_inventory(inv_path)
    for name in [n for n in os.environ if n.startswith("LC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LANG", MISSING)

    (h,) = check(inv, timeout=30, ssh_config=[str(ssh_config)]).hosts
    rs = h.checks["rscript"]
    assert rs.status == "failed", (rs.status, rs.detail)
    assert "Setting LC_CTYPE failed" in rs.detail, rs.detail
    assert rs.hint is not None and f"generate the primary's locale on {host.address}" in rs.hint
    assert "'locale:'" not in rs.hint

    # The classic launch, its ssh sending LANG as the check's session did: its worker
    # dies as the check's R did (makeCluster itself waits for it for ever: stopped here).
    cluster_r = tmp_path / "cluster.R"
    write_bootstrap(inv, cluster_r, RenderOptions(extra_ssh_options=("SendEnv=LANG LC_*",)))
    said = tmp_path / "launch.err"
    with said.open("wb") as err, subprocess.Popen(
            ["Rscript", "-e", f'source("{cluster_r}")'], stdout=subprocess.DEVNULL,
            stderr=err, start_new_session=True, env={**os.environ, "LANG": MISSING}) as proc:
        try:
            deadline = time.monotonic() + 60
            while b"Execution halted" not in said.read_bytes() and proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert "(converted from warning) Setting LC_CTYPE failed" in said.read_text(), \
        said.read_text()[-2000:]

    # Without LANG sent, R starts: the check passes the host (the inventory's locale,
    # which the workers take once started, is one the host has).
    ssh_config.write_text(ssh_config.read_text().replace("  SendEnv LANG LC_*\n", ""))
    (h,) = check(inv, timeout=30, ssh_config=[str(ssh_config)]).hosts
    assert h.ok, {s: (r.status, r.detail) for s, r in h.checks.items()}
    assert h.checks["rscript"].status == "ok", h.checks["rscript"].detail
    assert nothing_left(tb, marker=tmp_path) == {}
