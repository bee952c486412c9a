"""The console-output host-key parser, on cloud-init output as EC2 hands it out."""

from __future__ import annotations

import base64
import hashlib
import re
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sshcluster.ec2.hostkeys import HostKey, parse_console_host_keys, write_known_hosts

DATA = Path(__file__).parent / "data" / "console"


def sample(name: str) -> str:
    # newline="" keeps the CRLF of the serial console as it is.
    with open(DATA / name, encoding="utf-8", newline="") as f:
        return f.read()


def fingerprint(key: HostKey) -> str:
    """OpenSSH's SHA256 fingerprint, as cloud-init prints it in the FINGERPRINTS block."""
    digest = hashlib.sha256(base64.b64decode(key.blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def printed_fingerprints(text: str) -> set[str]:
    return set(re.findall(r"SHA256:[A-Za-z0-9+/]{43}", text.split("FINGERPRINTS-----")[1]))


def test_ubuntu_crlf_with_syslog_prefixes() -> None:
    text = sample("ubuntu-22.04-crlf.txt")
    assert "\r\n" in text
    keys = parse_console_host_keys(text)
    assert [k.type for k in keys] == ["ecdsa-sha2-nistp256", "ssh-ed25519", "ssh-rsa"]
    # The keys are the ones whose fingerprints cloud-init printed: no CR left in a blob.
    assert {fingerprint(k) for k in keys} == printed_fingerprints(text)
    assert all("\r" not in k.blob for k in keys)


def test_debian_ec2_prefix_and_kernel_message_inside_the_block() -> None:
    text = sample("debian-ec2-prefix.txt")
    keys = parse_console_host_keys(text)
    assert [k.type for k in keys] == ["ecdsa-sha2-nistp256", "ssh-ed25519"]
    assert {fingerprint(k) for k in keys} == printed_fingerprints(text)


def test_last_complete_block_wins_and_a_cut_off_block_is_ignored() -> None:
    keys = parse_console_host_keys(sample("reboot-and-partial.txt"))
    assert [k.type for k in keys] == ["ecdsa-sha2-nistp256", "ssh-ed25519"]
    text = sample("reboot-and-partial.txt")
    first_block = parse_console_host_keys(text.split("reboot: Restarting")[0])
    assert keys and first_block and set(keys).isdisjoint(first_block)


@pytest.mark.parametrize("text", [
    sample("no-keys-yet.txt"),
    "",
    "-----BEGIN SSH HOST KEY KEYS-----\n",  # still being written
    # a key whose blob says it is another type than the line claims
    "-----BEGIN SSH HOST KEY KEYS-----\nssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIE7e+J+ap45xjanIvd9NQFfe"
    "4N3IUsNjQPF2x7y7+A7V\n-----END SSH HOST KEY KEYS-----\n",
    # garbage in base64 clothing
    "-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAA\nssh-ed25519 !!!!\n"
    "-----END SSH HOST KEY KEYS-----\n",
])
def test_no_usable_keys(text: str) -> None:
    assert parse_console_host_keys(text) == ()


SAMPLES = [sample(name) for name in ("ubuntu-22.04-crlf.txt", "debian-ec2-prefix.txt",
                                     "reboot-and-partial.txt", "no-keys-yet.txt")]
#: What consoles hold: the block's markers, key lines (real and broken), a reboot, the
#: prefixes syslog and the kernel put in front, line ends of both kinds.
PIECES = st.sampled_from([
    "-----BEGIN SSH HOST KEY KEYS-----", "-----END SSH HOST KEY KEYS-----",
    *(ln for text in SAMPLES[:2] for ln in text.splitlines() if ln.count(" ") >= 1 and
      any(t in ln for t in ("ssh-ed25519 AAAA", "ecdsa-sha2-nistp256 AAAA", "ssh-rsa AAAA"))),
    "ssh-ed25519 ", "ssh-rsa ", "ecdsa-sha2-nistp256 ", "AAAA", "!!!!", "=", " ", "\t",
    "reboot: Restarting system", "ec2: ", "[   12.345678] ", "cloud-init[812]: ", "\n", "\r\n",
])
#: Whole consoles cut anywhere, and consoles made of those pieces and any text.
CONSOLES = st.one_of(
    st.text(),
    st.sampled_from(SAMPLES).flatmap(lambda text: st.builds(
        lambda i, j: text[min(i, j):max(i, j)], st.integers(0, len(text)),
        st.integers(0, len(text)))),
    st.lists(st.one_of(PIECES, st.text(max_size=8)), max_size=60).map("".join),
)


@given(CONSOLES)
def test_never_raises_on_any_text(text: str) -> None:
    """Whatever the console holds, the parser answers, and each key it finds is one of
    the three kinds, read whole from a line of that text."""
    for key in parse_console_host_keys(text):
        assert key.type in ("ecdsa-sha2-nistp256", "ssh-ed25519", "ssh-rsa"), key
        assert key.blob and key.blob in text and f"{key.type} {key.blob}" in text, key


def test_known_hosts_file(tmp_path: Path) -> None:
    keys = parse_console_host_keys(sample("debian-ec2-prefix.txt"))
    path = tmp_path / "c.known_hosts"
    write_known_hosts(path, [("203.0.113.5", 22, keys[0]), ("127.0.0.1", 2222, keys[1])])
    lines = path.read_text().splitlines()
    assert lines == [f"203.0.113.5 {keys[0].type} {keys[0].blob}",
                     f"[127.0.0.1]:2222 {keys[1].type} {keys[1].blob}"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["c.known_hosts"]  # no temp file left
