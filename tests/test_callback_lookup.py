"""A primary whose resolver does not answer: R's accept looks up the name of every
address that connects to it (``gethostbyaddr()``) before it takes the next connection,
so a launch straight to the primary waits that long for each host's connection. The
check, run on a real sshd test host with a real R, says so in the ``callback`` step: a
warning that names the address, the time and what to change.

The primary here is a ``sshcluster check`` in a mount namespace of its own, whose
/etc/resolv.conf names a resolver on 127.0.0.2 that takes every question and answers
none (a bound UDP socket nobody reads), as on a network cut off from its DNS server; its
/etc/nsswitch.conf asks /etc/hosts (which names only localhost) and then DNS.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sshcluster.testing import Testbed


def test_a_primary_slow_to_name_its_hosts_warns_at_the_callback(testbed: Testbed,
                                                                 tmp_path: Path) -> None:
    host = testbed.hosts[0]
    inv = testbed.write_inventory(tmp_path / "hosts.yaml", ncore=2,
                                  extra={"tunnel": "none",
                                         "hosts": [{"host": host.address}]})
    etc = {"resolv.conf": "nameserver 127.0.0.2\noptions timeout:2 attempts:1\n",
           "nsswitch.conf": "hosts: files dns\n",
           "hosts": "127.0.0.1 localhost\n"}
    mounts = []
    for name, text in etc.items():
        (tmp_path / name).write_text(text)
        mounts.append(f"mount --bind {tmp_path / name} /etc/{name}")
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        try:
            silent.bind(("127.0.0.2", 53))
        except OSError as e:
            pytest.fail(f"the silent resolver cannot listen on 127.0.0.2:53 (a DNS server "
                        f"on every address of this machine?): {e}")
        out = subprocess.run(
            ["unshare", "--mount", "--", "sh", "-c", " && ".join(mounts) + ' && exec "$@"',
             "sh", sys.executable, "-m", "sshcluster", "check", str(inv), "--json",
             "--timeout", "60"],
            capture_output=True, text=True, timeout=120)
    finally:
        silent.close()
    assert out.returncode == 0, out.stderr  # (a warning: the launch works, slowly)
    (h,) = json.loads(out.stdout)["hosts"]
    step = h["checks"]["callback"]
    assert step["status"] == "warning", step
    assert f"to look up the name of {host.address}" in step["detail"], step
    assert f"'{host.address} " in step["hint"] and "/etc/hosts" in step["hint"], step
    assert "tunnel: reverse" in step["hint"]
    # the rest of the check is as it would be anywhere (the load step may warn of a busy
    # machine)
    assert h["failed"] == [], h
