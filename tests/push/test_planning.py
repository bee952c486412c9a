"""How a push finds out what each host lacks, on real SSH test hosts: every host asked at
once, each local file hashed once however many hosts ask for it, and a file or a session
that goes wrong meanwhile named in an error or a host's verdict, never a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

import sshcluster
from sshcluster.inventory import load_inventory
from sshcluster.push import api, transfer, watch
from sshcluster.testing import Testbed
from sshcluster.testing.fixtures import MakeTestbed

from .helpers import DEST, SSHCLUSTER, cli_env


def _inventory(tb: Testbed, tmp_path: Path, **extra: object) -> sshcluster.Inventory:
    return load_inventory(tb.write_inventory(tmp_path / "hosts.yaml",
                                             extra={"workdir": DEST, **extra}))


def _data(root: Path, n: int = 6) -> Path:
    data = root / "data"
    data.mkdir(parents=True)
    for i in range(n):
        (data / f"f{i}.csv").write_text(f"x\n{i}\n")
    return data


def test_each_file_is_hashed_once_however_many_hosts_ask_for_it(
    make_testbed: MakeTestbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tb = make_testbed(4, private_dirs={"/srv": "16m"})
    inv = _inventory(tb, tmp_path)
    data = _data(tmp_path / "src")
    assert sshcluster.push(inv, [data]).ok
    for p in data.iterdir():  # same content, other mtime: every host asks for its hash
        os.utime(p, (1_700_000_000, 1_700_000_000))
    hashed: list[str] = []
    lock = threading.Lock()
    real = transfer.file_hash

    def slow_hash(path: str) -> str:
        with lock:
            hashed.append(path)
        time.sleep(0.3)  # (a big file: the other hosts' threads ask meanwhile)
        return real(path)

    monkeypatch.setattr(transfer, "file_hash", slow_hash)
    result = sshcluster.push(inv, [data])
    assert result.ok and result.bytes_out == 0, result.to_json()
    assert sorted(hashed) == sorted(str(p) for p in data.iterdir())


def test_a_file_gone_before_it_is_hashed_is_named_in_an_error(
    make_testbed: MakeTestbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tb = make_testbed(2, private_dirs={"/srv": "16m"})
    inv = _inventory(tb, tmp_path)
    data = _data(tmp_path / "src")
    assert sshcluster.push(inv, [data]).ok
    gone = data / "f3.csv"
    os.utime(gone, (1_700_000_000, 1_700_000_000))  # the hosts' listings call for its hash
    real = api.local_manifest

    def walk_then_delete(sources: list[Path]) -> sshcluster.Manifest:
        m = real(sources)
        gone.unlink()  # (between the walk and the hash)
        return m

    monkeypatch.setattr(api, "local_manifest", walk_then_delete)
    with pytest.raises(sshcluster.PushError,
                       match=f"^cannot read {re.escape(str(gone))}: No such file or directory$"):
        sshcluster.push(inv, [data])


def test_a_host_that_stops_answering_when_told_the_mtimes_fails_alone(
    make_testbed: MakeTestbed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tb = make_testbed(2, private_dirs={"/srv": "16m"})
    inv = _inventory(tb, tmp_path)
    data = _data(tmp_path / "src")
    assert sshcluster.push(inv, [data]).ok
    os.utime(data / "f1.csv", (1_700_000_000, 1_700_000_000))  # hashed, then touched
    victim = tb.hosts[1]
    real = transfer.Session.run

    def run(self: transfer.Session, words: list[str], stdin: bytes = b""
            ) -> watch.Answer:
        if words[0] == "touch" and self.host.host == victim.address:
            tb.cut_off(victim)
        return real(self, words, stdin)

    monkeypatch.setattr(transfer.Session, "run", run)
    monkeypatch.setattr(watch, "PUSH_FIRST_ANSWER", 3)
    try:
        result = sshcluster.push(inv, [data])
    finally:
        tb.reconnect(victim)
    assert [(h.ok, h.detail) for h in result.hosts] == [
        (True, "unchanged"),
        (False, f"no answer from {inv.hosts[1].label} within 3 s (setting modification "
                f"times in {DEST})")], result.to_json()


def test_no_ssh_on_this_machine_is_an_error_not_a_traceback(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    tb = make_testbed(1, private_dirs={"/srv": "16m"})
    inv = tb.write_inventory(tmp_path / "hosts.yaml", extra={"workdir": DEST})
    data = _data(tmp_path / "src")
    (tmp_path / "bin").mkdir()  # a PATH without ssh
    out = subprocess.run([*SSHCLUSTER, "push", str(inv), str(data)], capture_output=True,
                         text=True, timeout=60, env={**cli_env(), "PATH": str(tmp_path / "bin")})
    assert (out.returncode, out.stderr.splitlines()[0]) == (
        2, "error: ssh is not installed on this machine (no ssh on PATH)"), out.stderr
    assert "Traceback" not in out.stderr
