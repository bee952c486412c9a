"""How push's ssh sessions are made: the cheaper key exchange for the listing sessions,
left out wherever an ssh config (here: an option on the command line) chooses one."""

from __future__ import annotations

import subprocess

from sshcluster.push.transfer import fast_kex
from sshcluster.ssh.command import openssh_version


def _own_first_kex() -> str:
    out = subprocess.run(["ssh", "-F", "/dev/null", "-G", "localhost"], capture_output=True,
                         text=True, timeout=10).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("kexalgorithms "))
    return line.split()[1].split(",")[0]


def test_listing_sessions_skip_sntrup_unless_the_config_chooses() -> None:
    plain = ("ssh", "-o", "BatchMode=yes", "--", "node1")
    if not _own_first_kex().startswith("sntrup761x25519"):
        # (OpenSSH 10 and later put ML-KEM first, before 9.0 X25519: nothing to change)
        assert fast_kex(plain) == (), openssh_version()
        return
    option = fast_kex(plain)
    assert option in (("-o", "KexAlgorithms=^mlkem768x25519-sha256"),
                      ("-o", "KexAlgorithms=^curve25519-sha256"))
    # a chosen list, even one that starts the same way, is the user's to keep
    chosen = ("ssh", "-o", "KexAlgorithms=sntrup761x25519-sha512@openssh.com", "--", "node1")
    assert fast_kex(chosen) == ()
