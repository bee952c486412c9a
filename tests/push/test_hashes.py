"""The hash each host checks a push with, on a real SSH test host: SHA-256 by openssl
where the CPU has SHA instructions, else b2sum, else sha256sum (remote.sh). With the
tools before one hidden from the host's PATH, each must keep a whole archive and refuse
one that arrived with a byte changed."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sshcluster.inventory import load_inventory
from sshcluster.push.manifest import local_manifest
from sshcluster.push.stream import tar_stream
from sshcluster.push.transfer import Session, chain_words, remote_command, script, verdicts
from sshcluster.testing.fixtures import MakeTestbed, skip_or_fail

from .helpers import DEST, local_state, make_tree, path_without, remote_state

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("hidden", [(), ("openssl",), ("openssl", "b2sum")],
                         ids=["openssl-or-b2sum", "b2sum", "sha256sum"])
def test_each_hash_keeps_a_whole_archive_and_refuses_a_changed_one(
    make_testbed: MakeTestbed, tmp_path: Path, hidden: tuple[str, ...]
) -> None:
    tb = make_testbed(1, private_dirs={"/srv": "16m"})
    inv = load_inventory(tb.write_inventory(tmp_path / "hosts.yaml",
                                            extra={"workdir": DEST}))
    host = inv.hosts[0]
    path = path_without(tmp_path / "bin", hidden)
    for tool in hidden:  # (the host sees this machine's files: the same links)
        out = subprocess.run(tb.ssh_argv(tb.hosts[0], f"PATH={path}; command -v {tool}"),
                             capture_output=True, timeout=60)
        assert out.returncode != 0, out.stdout
    data = make_tree(tmp_path / "src", small=3, big=1 << 20)
    manifest = local_manifest([data])
    session = Session(inv, host)

    # The listing names the hash the host checks with: the primary computes the BLAKE2b
    # only for a host that says b2.
    with open("/proc/cpuinfo") as f:
        sha_instructions = bool(re.search(r"\b(sha_ni|sha2)\b", f.read()))
    kind = ("sha256" if sha_instructions and "openssl" not in hidden and shutil.which(
        "openssl") else "b2" if "b2sum" not in hidden else "sha256")
    scan = remote_command("scan", DEST, "data")
    listed = subprocess.run([*session.argv, f"PATH={path}; export PATH; {scan}"],
                            input=script(), capture_output=True, timeout=120)
    assert listed.stdout.decode().splitlines()[0] == f"sshcluster-push-hash {kind}"

    def receive(raw: bytes) -> tuple[bool, str]:
        words = remote_command("receive", DEST, host.label)
        proc = subprocess.run([*session.argv, f"PATH={path}; export PATH; {words}"],
                              input=script() + raw, capture_output=True, timeout=120)
        found = verdicts(proc.stdout)
        assert list(found) == [host.label], proc.stderr
        return found[host.label]

    # With the BLAKE2b sums, and without them (a host that would check with b2sum then
    # checks the SHA-256)
    for b2sums in (True, False):
        archive = io.BytesIO()
        tar_stream(manifest.files, [e for e in manifest.entries if e.kind == "d"], archive,
                   b2sums)
        raw = bytearray(archive.getvalue())
        at = raw.find((data / "big.bin").read_bytes()[:4096]) + 1000
        raw[at] ^= 0xFF
        ok, why = receive(bytes(raw))
        assert not ok and why.startswith("verification failed: ./data/big.bin: FAILED"), why
        assert remote_state(tb, tb.hosts[0]) == {}  # nothing renamed, staging removed

        ok, why = receive(archive.getvalue())
        assert ok, why
        assert remote_state(tb, tb.hosts[0]) == local_state(data)
        subprocess.run(tb.ssh_argv(tb.hosts[0], f"rm -rf {DEST}/data"), check=True,
                       timeout=60)


@pytest.mark.parametrize("hidden", [(), ("perl",)], ids=["forward.pl", "tee"])
def test_a_chain_hop_passes_the_stream_on_with_or_without_perl(
    make_testbed: MakeTestbed, tmp_path: Path, hidden: tuple[str, ...]
) -> None:
    """The first host of a chain passes the stream to the second with forward.pl
    (splice and tee, no copy) where perl is there, else with coreutils' tee."""
    tb = make_testbed(2, private_dirs={"/srv": "64m"}, mesh=True)
    inv = load_inventory(tb.write_inventory(tmp_path / "hosts.yaml",
                                            extra={"workdir": DEST, "fanout": "chain"}))
    first, second = inv.hosts
    path = path_without(tmp_path / "bin", hidden)
    # perl noting each time it runs with pipes on stdin and stdout, and tee each time
    # it runs (forward.pl runs tee where it cannot splice)
    ran = tmp_path / "ran"
    shims = {"tee": "echo tee", "perl": "[ -p /dev/stdin ] && [ -p /dev/stdout ] && echo pipes"}
    for name, note in shims.items():
        shim, real = tmp_path / "bin" / name, shutil.which(name)
        if name in hidden:
            continue
        if real is None or not shim.is_symlink():
            skip_or_fail(f"{name} is not in /usr/bin or /bin")
        shim.unlink()
        shim.write_text(f"#!/bin/sh\n{note} >> {ran}\nexec {real} \"$@\"\n")
        shim.chmod(0o755)
    data = make_tree(tmp_path / "src", small=20, big=24 << 20)
    manifest = local_manifest([data])
    archive = io.BytesIO()
    tar_stream(manifest.files, [e for e in manifest.entries if e.kind == "d"], archive)
    words = remote_command("receive", DEST, first.label, *chain_words([second]))
    # only the first host's PATH lacks them: the second is started by the first's ssh
    proc = subprocess.run([*Session(inv, first).argv, f"PATH={path}; export PATH; {words}"],
                          input=script() + archive.getvalue(), capture_output=True,
                          timeout=120)
    found = verdicts(proc.stdout)
    assert found == {first.label: (True, ""), second.label: (True, "")}, proc.stderr
    for h in tb.hosts:
        assert remote_state(tb, h) == local_state(data)
    # forward.pl ran where it can splice, and tee did not; without perl, tee
    assert ran.read_text() == ("tee\n" if hidden else "pipes\n")
