"""How a push finds out what each host lacks, on real SSH test hosts: every host asked at
once, each local file hashed once however many hosts ask for it, and a file or a session
that goes wrong meanwhile named in an error or a host's verdict, never a traceback."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import sshcluster
from sshcluster.inventory import load_inventory
from sshcluster.push import transfer
from sshcluster.testing import Testbed
from sshcluster.testing.fixtures import MakeTestbed

from .helpers import DEST


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
