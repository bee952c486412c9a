"""The remote probe script, run here under a real sh with real R, and its verdicts."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sshcluster.check.callback import callback_verdict
from sshcluster.check.probe import (
    VERDICTS,
    Facts,
    RemoteContext,
    found,
    packages_step,
    parse_facts,
    remote_script,
)
from sshcluster.check.report import StepResult
from sshcluster.check.steps import STEPS
from sshcluster.inventory import Host
from sshcluster.testing.fixtures import skip_or_fail

HAVE_R = shutil.which("Rscript") is not None


def need_r() -> None:
    if not HAVE_R:
        skip_or_fail("needs Rscript")


def verdicts(host: Host, facts: Facts, *, complete: bool = True,
             primary_r_version: str | None = None, callback_timeout: float = 0,
             port: int = 11000, confirmed: bool = True) -> dict[str, StepResult]:
    """Every remote step's verdict on ``facts`` (the runner's skipping aside)."""
    ctx = RemoteContext(host, primary_r_version)
    out = {name: verdict(facts, ctx, complete) for name, verdict in VERDICTS.items()}
    out["callback"] = callback_verdict(
        facts, complete=complete, target=f"{facts.get('PRIMARY')}:{port}", listen_error=None,
        tunnel=False, timeout=callback_timeout, confirmed=confirmed)
    return out


HOSTILE = "a'b\"c $(touch /tmp/pwned) `x` ; \\ \n"


class Listener:
    """A one-shot callback listener on 127.0.0.1 that answers ok to ``token``."""

    def __init__(self, token: str) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.port = self.sock.getsockname()[1]
        self.token = token
        self.got: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return  # closed with nobody calling back (tests where nobody should)
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(1024)
                if not chunk:
                    break
                data += chunk
            line = data.decode().rstrip("\n")
            self.got.append(line)
            conn.sendall(b"ok\n" if line == self.token else b"no\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a pending accept()
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener("tok123")
    yield lst
    lst.close()


def run_script(script: str, tmp_path: Path) -> Facts:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           "SSH_CONNECTION": "127.0.0.1 40000 127.0.0.1 22"}
    out = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True,
                         env=env, timeout=30, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return parse_facts(out.stdout.splitlines())


def test_script_reports_everything_and_calls_back(listener: Listener, tmp_path: Path) -> None:
    need_r()
    script = remote_script(rscript=None, r_packages=["parallel", "surelynotapkg"],
                           primary=None, primary_user="nobody", primary_ssh_port=1,
                           port=listener.port, token="tok123", budget=5)
    facts = run_script(script, tmp_path)
    assert facts.get("DONE") == "1"
    assert facts.get("PRIMARY") == "127.0.0.1"  # from SSH_CONNECTION
    assert facts.get("RSCRIPT") == shutil.which("Rscript")
    assert facts.get("R_MISSING") == "surelynotapkg"
    assert facts.get("CALLBACK") == "ok"
    assert listener.got == ["tok123"]
    assert int(facts.get("NPROC") or 0) >= 1
    assert (facts.get("REVERSE") or "").split()[0] == "255"  # nothing listens on port 1
    steps = verdicts(Host("h", ncore=None), facts, port=listener.port)
    assert steps["rscript"].status == "ok"
    assert steps["packages"].status == "failed"
    assert "surelynotapkg" in steps["packages"].detail
    assert steps["callback"].status == "ok"
    assert steps["reverse_ssh"].status == "warning"  # no launch needs it
    assert steps["cores"].status == "ok"
    what = found(facts)
    assert what.ncore == int(facts.get("NPROC") or 0) and what.seen_primary == "127.0.0.1"


def test_the_packages_a_registration_loads_are_looked_for(tmp_path: Path) -> None:
    """``register: [future, doparallel]``: the script looks for future, doParallel and
    foreach besides ``r_packages``, and the verdict names the registration that needs
    each (here an R that sees only its own library lacks all three)."""
    need_r()
    bare = tmp_path / "Rscript"
    bare.write_text("#!/bin/sh\nexport R_LIBS_SITE=/nonexistent R_LIBS_USER=/nonexistent\n"
                    f'exec {shutil.which("Rscript")} "$@"\n')
    bare.chmod(0o755)
    script = remote_script(rscript=str(bare), r_packages=["parallel", "foreach"],
                           primary="127.0.0.1", primary_user="nobody", primary_ssh_port=1,
                           port=0, token="t", budget=20, register=("future", "doparallel"))
    facts = run_script(script, tmp_path)
    assert facts.get("R_MISSING") == "foreach,future,doParallel"
    ctx = RemoteContext(Host("h"), register=("future", "doparallel"))
    step = packages_step(facts, ctx, True)
    assert step.status == "failed"
    assert step.detail == ("not installed: foreach, future, doParallel (register: future "
                           "needs future; register: doparallel needs doParallel and "
                           "foreach)"), step
    # without the registrations, only what r_packages names
    alone = run_script(remote_script(
        rscript=str(bare), r_packages=["parallel"], primary="127.0.0.1",
        primary_user="nobody", primary_ssh_port=1, port=0, token="t", budget=20), tmp_path)
    assert alone.get("R_MISSING") == ""
    assert packages_step(alone, RemoteContext(Host("h")), True).status == "ok"


def test_a_registered_package_that_is_there_but_does_not_load_is_named(
        tmp_path: Path) -> None:
    """Found is not loadable: a future whose directory is there (a DESCRIPTION only, as
    a package whose build is for another R or lacks a dependency looks to find.package)
    fails the step with R's own reason, as the launch's loadNamespace would fail."""
    need_r()
    lib = tmp_path / "lib"
    (lib / "future").mkdir(parents=True)
    (lib / "future" / "DESCRIPTION").write_text("Package: future\nVersion: 9.9\n")
    bare = tmp_path / "Rscript"
    bare.write_text(f"#!/bin/sh\nexport R_LIBS_SITE=/nonexistent R_LIBS_USER=/nonexistent "
                    f"R_LIBS={lib}\nexec {shutil.which('Rscript')} \"$@\"\n")
    bare.chmod(0o755)
    script = remote_script(rscript=str(bare), r_packages=[], primary="127.0.0.1",
                           primary_user="nobody", primary_ssh_port=1, port=0, token="t",
                           budget=20, register=("future",))
    facts = run_script(script, tmp_path)
    assert facts.get("R_MISSING") == ""  # (found)
    step = packages_step(facts, RemoteContext(Host("h"), register=("future",)), True)
    assert step.status == "failed", step
    assert step.detail.startswith("future does not load: "), step
    assert step.detail.endswith("(register: future needs future)"), step
    assert "install.packages" in (step.hint or "")


def test_the_nonce_is_on_no_command_line(tmp_path: Path) -> None:
    # What any user of the host could read with ps: the script comes on stdin, and the
    # nonce reaches R in its environment.
    script = remote_script(rscript=None, r_packages=[], primary="127.0.0.1",
                           primary_user="nobody", primary_ssh_port=1, port=1,
                           token="secretnonce42", budget=5)
    argv_words = [line for line in script.splitlines() if "secretnonce42" in line]
    assert argv_words == ["nonce=secretnonce42"]  # a shell variable, set from stdin
    assert "SSHCLUSTER_NONCE=$nonce" in script


def test_hostile_strings_stay_data(listener: Listener, tmp_path: Path) -> None:
    need_r()
    listener.token = HOSTILE.replace("\n", "")  # a line-based protocol: no newline inside
    script = remote_script(rscript=HOSTILE, r_packages=[], primary="127.0.0.1",
                           primary_user="nobody", primary_ssh_port=1, port=listener.port,
                           token=listener.token, budget=5)
    facts = run_script(script, tmp_path)
    assert not Path("/tmp/pwned").exists()
    assert not (tmp_path / "x").exists()
    assert "RSCRIPT_ERR" in facts  # no such Rscript, and nothing ran
    assert facts.get("DONE") == "1"


def test_token_with_quotes_reaches_the_primary_intact(tmp_path: Path) -> None:
    need_r()
    token = "x'\"$y`z\\"
    lst = Listener(token)
    try:
        script = remote_script(rscript=None, r_packages=[], primary="127.0.0.1",
                               primary_user="nobody", primary_ssh_port=1, port=lst.port,
                               token=token, budget=5)
        facts = run_script(script, tmp_path)
    finally:
        lst.close()
    assert lst.got == [token]
    assert facts.get("CALLBACK") == "ok"


def test_nothing_listening_fails_callback_fast(tmp_path: Path) -> None:
    need_r()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # now nothing listens there
    script = remote_script(rscript=None, r_packages=[], primary="127.0.0.1",
                           primary_user="nobody", primary_ssh_port=1, port=port,
                           token="t", budget=5)
    facts = run_script(script, tmp_path)
    cb = verdicts(Host("h"), facts, callback_timeout=4, port=port)["callback"]
    assert cb.status == "failed" and "refused" in cb.detail
    assert cb.hint and "--tunnel reverse" in cb.hint


# --------------------------------------------------------------------------- verdicts only


def facts_of(**values: str) -> Facts:
    return parse_facts(f"{k}={v}" for k, v in values.items())


BASE = {
    "SSH_CONNECTION": "10.0.0.1 5000 10.0.0.2 22", "PRIMARY": "10.0.0.1", "NPROC": "4",
    "LOADAVG": "0.5 0.4 0.3", "MEM_TOTAL_KB": "8000000", "MEM_AVAIL_KB": "6000000",
    "T_LOCAL": "1.00 1.00", "RSCRIPT": "/usr/bin/Rscript", "T_LOOKUP": "1.00 1.01",
    "R_VERSION": "4.2.2", "T_RSTART": "0.02", "R_MISSING": "", "T_PACKAGES": "0.001",
    "CALLBACK": "ok", "T_CALLBACK": "0.01", "R_EXIT": "0", "REVERSE": "0 1.00 1.10",
    "DONE": "1",
}


def test_all_good() -> None:
    facts = facts_of(**BASE)
    out = verdicts(Host("h", ncore=2), facts, primary_r_version="4.2.2")
    assert {s: r.status for s, r in out.items()} == dict.fromkeys(
        ("rscript", "packages", "cores", "load", "reverse_ssh", "callback"), "ok")
    what = found(facts)
    assert (what.ncore, what.rscript, what.r_version, what.seen_primary) == (
        4, "/usr/bin/Rscript", "4.2.2", "10.0.0.1")
    assert out["reverse_ssh"].seconds == pytest.approx(0.1)


def test_warnings() -> None:
    f = facts_of(**{**BASE, "LOADAVG": "4.5 1 1", "MEM_AVAIL_KB": "100000"})
    out = verdicts(Host("h", ncore=8), f, primary_r_version="4.3.1")
    assert out["rscript"].status == "warning" and "4.3.1" in out["rscript"].detail
    assert out["cores"].status == "warning" and "8 declared" in out["cores"].detail
    load = out["load"]
    assert load.status == "warning" and "busy" in load.detail and "low memory" in load.detail


def test_what_needs_r_is_skipped_without_it() -> None:
    needs = {s.name: s.needs for s in STEPS}
    assert needs["packages"] == ("rscript",) and needs["callback"] == ("rscript",)
    assert {needs[s] for s in ("cores", "load", "reverse_ssh", "rscript")} == {("auth",)}
    f = {k: v for k, v in BASE.items() if not k.startswith(("R_", "T_P", "CALLBACK", "T_C"))}
    f.update(RSCRIPT="", RSCRIPT_ERR="no executable file /opt/R/bin/Rscript")
    out = verdicts(Host("h"), facts_of(**f))
    assert out["rscript"].status == "failed"
    assert out["cores"].status == "ok" and out["reverse_ssh"].status == "ok"


def test_cut_off_by_the_deadline() -> None:
    f = {k: v for k, v in BASE.items() if k not in ("CALLBACK", "T_CALLBACK", "R_EXIT",
                                                     "REVERSE", "DONE")}
    out = verdicts(Host("h"), facts_of(**f), complete=False)
    assert out["callback"].status == "failed"
    assert "deadline" in out["callback"].detail
    assert out["reverse_ssh"].status == "warning"
    assert out["packages"].status == "ok"


def test_a_callback_the_listener_did_not_see_fails() -> None:
    out = verdicts(Host("h"), facts_of(**BASE), confirmed=False)
    assert out["callback"].status == "failed"
    assert "did not see its nonce" in out["callback"].detail


def test_reverse_ssh_hints() -> None:
    f = {**BASE, "REVERSE": "255 1 2"}
    facts = facts_of(**f)
    facts.add("REVERSE_ERR=root@10.0.0.1: Permission denied (publickey).")
    r = verdicts(Host("h"), facts)["reverse_ssh"]
    assert r.status == "warning" and "Permission denied" in r.detail
    assert "the launch does not need it" in r.detail
    assert r.hint and "authorized_keys" in r.hint
    required = RemoteContext(Host("h"), reverse_ssh_required=True)
    r = VERDICTS["reverse_ssh"](facts, required, True)
    assert r.status == "failed" and "required by the inventory" in r.detail


def test_dropped_callback_is_told_apart_from_refused() -> None:
    dropped = facts_of(**{**BASE, "CALLBACK": "10.0.0.1:11000 cannot be opened",
                          "T_CALLBACK": "4.0"})
    out = verdicts(Host("h"), dropped, callback_timeout=4, port=11000)
    assert "no answer from 10.0.0.1:11000 within 4 s" in out["callback"].detail
    refused = facts_of(**{**BASE, "CALLBACK": "10.0.0.1:11000 cannot be opened",
                          "T_CALLBACK": "0.01"})
    out = verdicts(Host("h"), refused, callback_timeout=4, port=11000)
    assert "refused" in out["callback"].detail


def test_facts_parsing() -> None:
    f = parse_facts(["A=1", "A=2", "junk line", "", "B=x=y\r\n"])
    assert f.get("A") == "2" and f.all("A") == ["1", "2"] and f.get("B") == "x=y"
    assert f.other == ["junk line"]
    assert f.number("A") == 2.0 and f.number("B") is None and f.get("C") is None


@pytest.mark.parametrize(("says", "status"), [
    ("subsystem request failed on channel 0", "ok"),
    ("root@10.0.0.1: Permission denied (publickey).", "warning"),
])
def test_reverse_ssh_login_without_a_remote_shell(says: str, status: str,
                                                   tmp_path: Path) -> None:
    # An ssh stand-in that answers like OpenSSH does after the login (the subsystem does
    # not exist) or before it (refused key), and records its arguments.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ssh"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\necho "{says}" >&2\nexit 255\n')
    fake.chmod(0o755)
    script = remote_script(rscript="/nonexistent", r_packages=[], primary="10.0.0.1",
                           primary_user="alice", primary_ssh_port=2222, port=0, token="t",
                           budget=5)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SSH_CONNECTION": "10.0.0.1 1 10.0.0.2 22"}
    out = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, env=env,
                         timeout=30)
    facts = parse_facts(out.stdout.splitlines())
    step = verdicts(Host("h"), facts)["reverse_ssh"]
    assert step.status == status, step
    args = (tmp_path / "args").read_text().split()
    assert args[-4:] == ["-s", "--", "10.0.0.1", "sshcluster-check"]
    assert {"BatchMode=yes", "alice", "2222"} <= set(args)


def test_reverse_ssh_is_seen_through_a_quiet_ssh_config(tmp_path: Path) -> None:
    """A worker whose ssh config says LogLevel QUIET: OpenSSH says nothing of the
    refused subsystem then, and the login that worked was taken for a failure. The
    stand-in says what OpenSSH says at the log level the real ssh works out (ssh -G)
    from the probe's options and that config."""
    real = shutil.which("ssh")
    if real is None:
        skip_or_fail("no ssh client")
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("Host *\n  LogLevel QUIET\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ssh"
    # (ssh reads ~/.ssh/config from the passwd database's home, not $HOME: the stand-in
    # names the test's config to ssh -G as the host user's own)
    fake.write_text(f'#!/bin/sh\nlevel=$({real} -G -F "$HOME/.ssh/config" "$@" 2>/dev/null '
                    '| sed -n "s/^loglevel //p")\n'
                    f'echo "$level" > {tmp_path}/level\n'
                    # (ssh -G names QUIET SILENT)
                    'case $level in QUIET|SILENT) ;; *) echo "subsystem request failed on '
                    'channel 0" >&2 ;; esac\n'
                    'exit 255\n')
    fake.chmod(0o755)
    script = remote_script(rscript="/nonexistent", r_packages=[], primary="10.0.0.1",
                           primary_user="alice", primary_ssh_port=2222, port=0, token="t",
                           budget=5)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(home),
           "SSH_CONNECTION": "10.0.0.1 1 10.0.0.2 22"}
    out = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, env=env,
                         timeout=30)
    facts = parse_facts(out.stdout.splitlines())
    assert (tmp_path / "level").read_text().strip() == "ERROR"
    assert verdicts(Host("h"), facts)["reverse_ssh"].status == "ok"


def test_cores_are_counted_whatever_omp_num_threads_says(tmp_path: Path) -> None:
    """HPC and BLAS setups set OMP_NUM_THREADS=1 in rc files; GNU nproc obeys it, R's
    workers do not: the check counts the cores the host lets this user run on."""
    script = remote_script(rscript="/nonexistent", r_packages=[], primary=None,
                           primary_user="nobody", primary_ssh_port=1, port=0, token="t",
                           budget=5)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
           "OMP_THREAD_LIMIT": "1", "SSH_CONNECTION": "127.0.0.1 40000 127.0.0.1 22"}
    out = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True,
                         env=env, timeout=30, cwd=tmp_path)
    facts = parse_facts(out.stdout.splitlines())
    assert int(facts.get("NPROC") or 0) == len(os.sched_getaffinity(0))
