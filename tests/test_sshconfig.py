"""Effective ssh settings from OpenSSH itself (``ssh -G``) with real config files."""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import subprocess
from pathlib import Path

import pytest

from sshcluster.inventory import Host, Inventory, Primary
from sshcluster.ssh.command import ssh_command
from sshcluster.ssh.config import (
    ClientSettings,
    SshConfigError,
    client_settings,
    expand_tokens,
    split_hop,
)
from sshcluster.ssh.connect import _ssh_reorders

HOME = pwd.getpwuid(os.getuid()).pw_dir


def settings(config: Path, host: str, *args: str) -> ClientSettings:
    return asyncio.run(client_settings(host, args, config=str(config)))


def test_include_match_and_tokens(tmp_path: Path) -> None:
    (tmp_path / "with space").mkdir()
    (tmp_path / "with space" / "kh").write_text("")  # (read as one path: it exists)
    (tmp_path / "extra.conf").write_text(
        "Host alias1\n  HostName 10.9.9.9\n  Port 2200\n  User zed\n"
        f"  UserKnownHostsFile ~/kh/%h_%p \"{tmp_path}/with space/kh\" %d/x_%r_%n\n"
        "  IdentityFile ~/.ssh/id_%h_%r\n  CertificateFile %d/cert-%p\n"
        "  IdentityAgent none\n  HostKeyAlias MyAlias\n")
    (tmp_path / "config").write_text(
        f"Include {tmp_path}/extra.conf\n"
        "Match host 10.9.9.9\n  IdentitiesOnly yes\n  CheckHostIP yes\n"
        "  GlobalKnownHostsFile none\n  StrictHostKeyChecking accept-new\n")
    s = settings(tmp_path / "config", "alias1")
    assert (s.hostname, s.port, s.user) == ("10.9.9.9", 2200, "zed")
    assert s.user_known_hosts == (f"{HOME}/kh/10.9.9.9_2200", f"{tmp_path}/with space/kh",
                                  f"{HOME}/x_zed_alias1")
    assert s.global_known_hosts == ()
    assert s.identity_files == (f"{HOME}/.ssh/id_10.9.9.9_zed",)
    assert s.certificate_files == (f"{HOME}/cert-2200",)
    assert s.identities_only and s.check_host_ip and s.identity_agent is None
    assert s.host_key_alias == "myalias"
    assert s.strict_host_key_checking == "accept-new"
    assert not s.proxied and s.unsupported() == []


def test_known_hosts_files_as_ssh_opens_them(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """ssh -G prints GlobalKnownHostsFile as written (ssh expands its ~ only when it opens
    the files: from the passwd home, and ~user from that user's), and every list of files
    unquoted: a relative path is a file of its own, opened in the current directory, and
    a path with a space in it is one path when it exists, or when nothing there does (a
    home directory with a space, before its first known host)."""
    monkeypatch.chdir(tmp_path)
    root = pwd.getpwnam("root").pw_dir
    (tmp_path / "my kh").write_text("")
    for name in ("rel_g", "rel_b", "rel_c"):
        (tmp_path / name).write_text("")
    (tmp_path / "config").write_text(
        "Host h\n  GlobalKnownHostsFile ~/.ssh/g1 ~root/g2 rel_g ~\n"
        f"  UserKnownHostsFile ~/.ssh/a rel_b \"{tmp_path}/my kh\" rel_c\n")
    s = settings(tmp_path / "config", "h")
    assert s.global_known_hosts == (f"{HOME}/.ssh/g1", f"{root}/g2", "rel_g", f"{HOME}/")
    assert s.user_known_hosts == (f"{HOME}/.ssh/a", "rel_b", f"{tmp_path}/my kh", "rel_c")
    assert s.unsupported() == []
    spaced = tmp_path / "John Smith"
    (tmp_path / "config").write_text(
        f"Host h\n  UserKnownHostsFile \"{spaced}/.ssh/known_hosts\" "
        f"\"{spaced}/.ssh/known_hosts2\"\n")
    assert settings(tmp_path / "config", "h").user_known_hosts == (
        f"{spaced}/.ssh/known_hosts", f"{spaced}/.ssh/known_hosts2")
    (tmp_path / "config").write_text("Host h\n  GlobalKnownHostsFile ~nosuchuser9/kh\n")
    with pytest.raises(SshConfigError, match="nosuchuser9"):
        settings(tmp_path / "config", "h")
    # A path with a space whose pieces exist too: ssh may read either, the check says so.
    (tmp_path / "my").write_text("")
    (tmp_path / "config").write_text(f"Host h\n  UserKnownHostsFile \"{tmp_path}/my kh\"\n")
    said = settings(tmp_path / "config", "h").unsupported()
    assert len(said) == 1 and said[0].startswith(f"UserKnownHostsFile {tmp_path}/my kh")


def test_a_key_pinned_in_a_global_file_under_home_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GlobalKnownHostsFile ~/pinned pins a key: another key is a changed key, never
    recorded as new by --accept-new."""
    import base64

    import asyncssh

    from sshcluster.ssh import config as config_module
    from sshcluster.ssh.connect import host_decision
    from sshcluster.ssh.keycheck import verify
    from sshcluster.ssh.knownhosts import KnownHostsFiles

    home = tmp_path / "home"
    home.mkdir()
    me = pwd.getpwuid(os.getuid())
    monkeypatch.setattr(config_module, "_passwd", lambda: pwd.struct_passwd(
        (me.pw_name, "x", me.pw_uid, me.pw_gid, "", str(home), "/bin/sh")))
    pinned = asyncssh.generate_private_key("ssh-ed25519")
    attacker = asyncssh.generate_private_key("ssh-ed25519")
    (home / "pinned").write_text(f"h.example {pinned.export_public_key().decode()}")
    (tmp_path / "config").write_text(
        f"Host h.example\n  GlobalKnownHostsFile ~/pinned\n"
        f"  UserKnownHostsFile {tmp_path}/user\n")
    s = settings(tmp_path / "config", "h.example", "-o", "StrictHostKeyChecking=yes")
    assert s.global_known_hosts == (f"{home}/pinned",)
    decision, problem = host_decision(s, [], None, KnownHostsFiles(), True)
    assert problem is None
    offered = base64.b64decode(attacker.export_public_key().split()[1])
    verdict, key = verify(decision.policy, offered, "10.0.0.5", accept_new=True)
    assert key is None and not verdict.trusted, verdict
    assert "HOST KEY CHANGED" in verdict.detail and f"{home}/pinned" in verdict.detail
    assert not (tmp_path / "user").exists()  # nothing recorded


def test_the_launch_options_win_over_the_config(tmp_path: Path) -> None:
    (tmp_path / "config").write_text(
        "Host *\n  StrictHostKeyChecking no\n  BatchMode no\n  ConnectTimeout 3\n"
        "  UserKnownHostsFile /u/kh\n  IdentityFile /keys/config\n")
    key = tmp_path / "inventory_key"  # ssh drops a -i file that does not exist
    key.write_text("")
    inv = Inventory(primary=Primary("p"), known_hosts="/inv/kh",
                    hosts=(Host("h", ssh_port=2222, identity_file=str(key)),))
    args = [*ssh_command(inv, inv.hosts[0])[1:], "-l", "bob"]
    s = settings(tmp_path / "config", "h", *args)
    assert s.strict_host_key_checking == "yes" and s.get("batchmode") == "yes"
    assert s.connect_timeout == 10 and (s.port, s.user) == (2222, "bob")
    assert s.identity_files == (str(key), "/keys/config")  # -i first, then the config's
    assert s.user_known_hosts == ("/u/kh",)  # left as the config says
    assert s.known_hosts_command and "/inv/kh" in s.known_hosts_command


def test_defaults_proxies_and_what_cannot_be_mirrored(tmp_path: Path) -> None:
    (tmp_path / "config").write_text(
        "Host j\n  ProxyJump bob@hop1:2022,hop2\nHost c\n  ProxyCommand nc %h %p\n"
        "Host r\n  RemoteCommand tmux attach\nHost f\n  ProxyCommand nc %h %p\n"
        "  ProxyUseFdpass yes\n")
    plain = settings(tmp_path / "config", "plainhost")
    assert plain.identity_files and all(p.startswith(f"{HOME}/.ssh/id_")
                                        for p in plain.identity_files)
    assert plain.user_known_hosts == (f"{HOME}/.ssh/known_hosts", f"{HOME}/.ssh/known_hosts2")
    assert plain.strict_host_key_checking == "ask" and plain.port == 22
    jump = settings(tmp_path / "config", "j")
    assert jump.proxy_jump == "bob@hop1:2022,hop2" and jump.proxied
    command = settings(tmp_path / "config", "c")
    shell = os.environ.get("SHELL") or "/bin/sh"
    assert command.proxy_argv() == [shell, "-c", "exec nc c 22"]
    assert "RemoteCommand" in settings(tmp_path / "config", "r").unsupported()[0]
    assert settings(tmp_path / "config", "f").unsupported() == ["ProxyUseFdpass yes"]


def test_a_broken_config_names_its_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "config").write_text("Host *\n  Bogus yes\n")
    with pytest.raises(SshConfigError, match=rf"{tmp_path}/config: line 2: Bad configuration"):
        settings(tmp_path / "config", "h")
    (tmp_path / "config").write_text("Host *\n  IdentityFile /k/%Z\n")
    with pytest.raises(SshConfigError, match="unknown token %Z"):
        settings(tmp_path / "config", "h")
    with pytest.raises(SshConfigError, match="no /nonexistent/ssh on this machine"):
        asyncio.run(client_settings("h", ssh="/nonexistent/ssh"))


def test_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SC_TEST", "v%h")
    assert expand_tokens("a%%b-%h-${SC_TEST}", {"h": "H"}) == "a%b-H-v%h"
    with pytest.raises(ValueError, match="unknown token"):
        expand_tokens("%q", {})
    with pytest.raises(ValueError, match="not a set environment variable"):
        expand_tokens("${SC_NOT_SET_ANYWHERE}", {})
    assert socket.gethostname()  # %l and %L come from it


def test_the_proxy_jump_token_and_connection_hash_from_openssh_9_6(tmp_path: Path) -> None:
    """OpenSSH 9.6 added %j, the host of ProxyJump's last hop (empty without one), and
    hashes it into %C; before, %j is an unknown token, which ssh refuses."""
    import hashlib

    from sshcluster.ssh.config import parse_ssh_g, settings_from

    (tmp_path / "config").write_text(
        "Host h\n  HostName h.example\n  User u\n  ProxyJump a@j1:2022,[::1]:22\n"
        "  IdentityFile /k/%C\n  CertificateFile /c/%j\nHost g\n  CertificateFile /c/x%j\n")
    argv = ["ssh", "-G", "-F", str(tmp_path / "config")]
    raw = {host: parse_ssh_g(subprocess.run([*argv, host], capture_output=True, text=True,
                                            check=True).stdout) for host in ("h", "g")}
    local = socket.gethostname()
    s = settings_from(raw["h"], "h", version=(9, 6))
    assert s.identity_files == (
        "/k/" + hashlib.sha1(f"{local}h.example22u::1".encode()).hexdigest(),)
    assert s.certificate_files == ("/c/::1",)
    assert settings_from(raw["g"], "g", version=(9, 6)).certificate_files == ("/c/x",)
    with pytest.raises(ValueError, match="unknown token %j"):
        settings_from(raw["h"], "h", version=(9, 2))
    (tmp_path / "config").write_text("Host h\n  HostName h.example\n  User u\n"
                                     "  IdentityFile /k/%C\n")
    old = settings_from(parse_ssh_g(subprocess.run([*argv, "h"], capture_output=True,
                                                   text=True, check=True).stdout),
                        "h", version=(9, 2))
    assert old.identity_files == (
        "/k/" + hashlib.sha1(f"{local}h.example22u".encode()).hexdigest(),)


def test_revoked_host_keys_is_a_list_from_openssh_10_3() -> None:
    """ssh -G prints RevokedHostKeys's files space-separated from OpenSSH 10.3 on, when
    it takes several; before, the setting is one path, spaces and all."""
    from sshcluster.ssh.config import settings_from

    raw = {"revokedhostkeys": ("/r/one /r/two",)}
    assert settings_from(raw, "h", version=(10, 3)).revoked_host_keys == ("/r/one", "/r/two")
    assert settings_from(raw, "h", version=(10, 2)).revoked_host_keys == ("/r/one /r/two",)
    assert settings_from({"revokedhostkeys": ("none",)}, "h",
                         version=(10, 3)).revoked_host_keys == ()


def test_jump_hops_and_host_key_algorithm_lists() -> None:
    assert split_hop("bob@hop1:2022") == ("bob", "hop1", 2022)
    assert split_hop("hop2") == (None, "hop2", None)
    assert split_hop("ssh://al@[::1]:22") == ("al", "::1", 22)
    default = ["a-cert", "b-cert", "a", "b", "c"]
    assert _ssh_reorders(default, default, listed=False)  # unset
    assert _ssh_reorders(["a-cert", "a", "c", "extra"], default, listed=False)  # -b, +extra
    # A list of one's own somewhere in the config: kept as written, unless what ssh -G
    # shows could be the default or + or - changes to it (then it cannot be told).
    assert _ssh_reorders(default, default) is None
    assert _ssh_reorders(["a-cert", "a", "c", "extra"], default) is None
    assert _ssh_reorders(["c", "a"], default) is False  # written out: as it is
    assert _ssh_reorders(["extra", "a"], default) is False  # ^extra


def test_whether_the_config_lists_host_key_algorithms_of_its_own(tmp_path: Path) -> None:
    """ssh asks for the key types known for a host first only when HostKeyAlgorithms is
    unset or changed with + or -; ssh -G shows only the resulting list, so the check
    reads the config files ssh read (Include too) and the command line for it."""
    (tmp_path / "inc").write_text("Host *\n  # HostKeyAlgorithms ssh-ed25519 (a comment)\n"
                                  "  HostKeyAlgorithms=+ssh-rsa\n")
    (tmp_path / "config").write_text(f"Include {tmp_path}/inc\nHost h\n"
                                     "  hostkeyalgorithms \"-ssh-ed25519\"\n")
    assert not settings(tmp_path / "config", "h").host_key_algorithms_listed
    assert settings(tmp_path / "config", "h", "-o",
                    "HostKeyAlgorithms=ssh-ed25519").host_key_algorithms_listed
    (tmp_path / "inc").write_text("Match host other\n  HostKeyAlgorithms ^ssh-rsa\n")
    assert settings(tmp_path / "config", "h").host_key_algorithms_listed  # (may apply)
    (tmp_path / "config").write_text("Host h\n  User u\n")
    assert not settings(tmp_path / "config", "h").host_key_algorithms_listed
    # another host's list (an old switch's ssh-rsa) is not this host's
    (tmp_path / "config").write_text("Host oldswitch\n  HostKeyAlgorithms ssh-rsa\n"
                                     "Host h other\n  User u\n")
    assert not settings(tmp_path / "config", "h").host_key_algorithms_listed
    assert settings(tmp_path / "config", "oldswitch").host_key_algorithms_listed


def test_the_public_key_of_an_identity_file_as_ssh_finds_it(tmp_path: Path) -> None:
    """The IdentityFile itself when it is a public key, else FILE.pub, else the head of
    an OpenSSH private key file (even one with a passphrase); a broken file is no key,
    never an exception."""
    import base64
    import struct

    from sshcluster.ssh.connect import identity_public_key

    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "pass phrase", "-f", str(key)],
                   check=True)
    public = base64.b64decode((tmp_path / "id.pub").read_text().split()[1])
    expected = identity_public_key(str(tmp_path / "id.pub"))
    assert expected is not None and expected in public
    assert identity_public_key(str(key)) == expected  # (through id.pub)
    (tmp_path / "id.pub").unlink()
    assert identity_public_key(str(key)) == expected  # (from the encrypted file's head)
    def s(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b
    negative = s(b"ssh-rsa") + s(b"\xff") + s(b"\x00\xc1" + b"\x01" * 64)
    (tmp_path / "bad.pub").write_text("ssh-rsa " + base64.b64encode(negative).decode() + "\n")
    text = key.read_text()
    (tmp_path / "cut").write_text(text[:len(text) // 3] + "\n-----END OPENSSH PRIVATE KEY-----\n")
    (tmp_path / "noise").write_bytes(b"\xff\xfe not a key")
    for name in ("bad.pub", "cut", "noise", "missing"):
        assert identity_public_key(str(tmp_path / name)) is None, name


def test_the_environment_ssh_sends_is_what_the_checks_session_sends(tmp_path: Path) -> None:
    """SendEnv's patterns (as ssh -G prints them, a removal applied: it removes patterns,
    not the names they match) pick variables from the environment; SetEnv's pairs come
    after them, and win."""
    from sshcluster.ssh.environment import sent_environment

    (tmp_path / "config").write_text(
        "Host *\n  SendEnv LANG LC_* R_?IBS XYZ\n  SendEnv -XYZ -LC_TIME\n"
        "  SetEnv LANG=C.UTF-8 FOO=\"a b\"\n")
    s = settings(tmp_path / "config", "h")
    environ = {"LANG": "en_GB.UTF-8", "LC_CTYPE": "de_DE.UTF-8", "LC_TIME": "fr_FR",
               "R_LIBS": "/x", "R_LIBS_USER": "/y", "PATH": "/bin", "LC_ALL": "",
               "LC_ODD": "bad\udcff", "XYZ": "1"}
    assert sent_environment(s, environ) == {
        "LANG": "C.UTF-8", "LC_CTYPE": "de_DE.UTF-8", "LC_TIME": "fr_FR", "R_LIBS": "/x",
        "LC_ALL": "", "FOO": "a b"}
    # (without SendEnv or SetEnv, nothing)
    (tmp_path / "none").write_text("Host *\n  User u\n")
    assert sent_environment(settings(tmp_path / "none", "h"), environ) == {}


def test_the_overrides_are_the_launchs_words_too() -> None:
    """The rendered file's R sets back the same settings as the Python side's ssh."""
    from importlib import resources

    from sshcluster.ssh.command import SESSION_OVERRIDES_8_7

    r = resources.files("sshcluster").joinpath("R", "common.R").read_text("utf-8")
    assert f'"{" ".join(SESSION_OVERRIDES_8_7)}"' in r
