"""Host keys checked as OpenSSH checks them.

The files are made by OpenSSH's own tools (``ssh-keygen``: keys, hashed names, host
certificates), the names are matched against ``ssh-keygen -F``, and the verdicts against
a real ``ssh`` with the launch's options: for every setup below, the check and
``ssh -o BatchMode=yes ... true`` accept or refuse the same in-process server alike.
"""

from __future__ import annotations

import asyncio
import base64
import getpass
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from sshcluster.check.preflight import check_async
from sshcluster.check.report import CheckReport, HostReport
from sshcluster.inventory import Host, Inventory, Primary
from sshcluster.ssh.command import openssh_version, ssh_command
from sshcluster.ssh.keycheck import decode_host_key
from sshcluster.ssh.knownhosts import (
    TrustPolicy,
    hashed_name,
    host_matches,
    order_host_key_algorithms,
    parse_known_hosts,
)
from sshcluster.testing.sshserver import LocalServer, keys


def keygen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh-keygen", *args], capture_output=True, text=True, check=False)


def new_key(path: Path, kind: str = "ed25519") -> Path:
    keygen("-q", "-t", kind, "-N", "", "-C", "", "-f", str(path))
    return path


def public(path: Path) -> str:
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


# --------------------------------------------------------------------------- names


NAMES = ["node1", "NODE1", "node2", "10.0.0.5", "[10.0.0.5]:2222", "[10.0.0.5]:22",
         "db.example.org", "bad.example.org", "10.0.0.7", "[node3]:2200", "node3"]


def test_names_match_as_ssh_keygen_finds_them(tmp_path: Path) -> None:
    key = public(new_key(tmp_path / "k"))
    lines = ["node1", "10.0.0.5", "[10.0.0.5]:2222", "*.example.org,!bad.example.org",
             "10.0.0.?", "[node3]:*"]
    plain = tmp_path / "plain"
    plain.write_text("".join(f"{names} {key}\n" for names in lines))
    hashed = tmp_path / "hashed"
    hashed.write_text(f"node1 {key}\n10.0.0.5 {key}\n[10.0.0.5]:2222 {key}\n")
    assert keygen("-H", "-f", str(hashed)).returncode == 0
    assert "|1|" in hashed.read_text()
    for path in (plain, hashed):
        entries = parse_known_hosts(path.read_text(), str(path))
        for name in NAMES:
            openssh = keygen("-F", name, "-f", str(path)).returncode == 0
            ours = any(host_matches(name, e.hosts) for e in entries)
            assert ours == openssh, (path.name, name)


def test_a_name_we_hash_is_found_by_ssh_keygen(tmp_path: Path) -> None:
    key = public(new_key(tmp_path / "k"))
    path = tmp_path / "kh"
    path.write_text(f"{hashed_name('[10.1.2.3]:2222')} {key}\n")
    assert keygen("-F", "[10.1.2.3]:2222", "-f", str(path)).returncode == 0
    assert keygen("-F", "10.1.2.3", "-f", str(path)).returncode != 0


def test_lines_ssh_skips_are_skipped(tmp_path: Path) -> None:
    key = public(new_key(tmp_path / "k"))
    text = (f"# comment\n\n@bogus node1 {key}\nnode1\nnode1 ssh-ed25519 !!!\n"
            f"|1|short|x {key}\n  node1 {key} trailing comment\n@revoked * {key}\n")
    entries = parse_known_hosts(text, "f")
    assert [(e.marker, e.hosts, e.line) for e in entries] == [
        ("", "|1|short|x", 6), ("", "node1", 7), ("@revoked", "*", 8)]
    assert not host_matches("node1", "|1|short|x")  # a bad hash matches nothing


def test_markers_and_certificates_read_as_ssh_keygen_reads_them(tmp_path: Path) -> None:
    """A marker ends at the first space of the line (at a tab only when the line has no
    space), is case-sensitive and comes once; a certificate on a line is read, and stands
    for the plain key inside it. ssh-keygen -F finds exactly the lines the check reads."""
    key = public(new_key(tmp_path / "k"))
    ca, host = new_key(tmp_path / "ca"), new_key(tmp_path / "host")
    assert keygen("-s", str(ca), "-I", "h", "-h", "-n", "h7", f"{host}.pub").returncode == 0
    cert = " ".join(Path(f"{host}-cert.pub").read_text().split()[:2])
    lines = {"h2": f"@cert-authority\th2 {key}", "h3": "\t".join(["@revoked", "h3", *key.split()]),
             "h4": f"@CERT-AUTHORITY h4 {key}", "h5": f"@revoked @revoked h5 {key}",
             "h6": f"@revoked\t h6 {key}", "h7": f"@revoked h7 {cert}", "h8": f"h8 {cert}"}
    path = tmp_path / "kh"
    path.write_text("".join(f"{line}\n" for line in lines.values()))
    entries = parse_known_hosts(path.read_text(), str(path))
    for name in lines:
        openssh = keygen("-F", name, "-f", str(path)).returncode == 0
        assert any(host_matches(name, e.hosts) for e in entries) == openssh, name
    found = {e.hosts: e for e in entries}
    assert set(found) == {"h3", "h7", "h8"} and found["h3"].marker == "@revoked"
    plain = asyncssh.read_public_key(f"{host}.pub").public_data
    assert found["h7"].certificate and found["h7"].key.public_data == plain


def test_revoked_host_keys_read_as_ssh_reads_them(tmp_path: Path) -> None:
    """RevokedHostKeys: ssh stops at the first line that is not a key and then refuses
    every host key (the check names the file and line), a key listed before that line
    is revoked, and a binary KRL, which the check cannot read, fails the host."""
    from sshcluster.ssh.keycheck import verify

    key = public(new_key(tmp_path / "k"))
    other = public(new_key(tmp_path / "o"))
    blob = base64.b64decode(key.split()[1])
    (tmp_path / "kh").write_text(f"node1 {key}\n")
    revoked = tmp_path / "revoked"

    def verdict(text: str | None = None) -> str:
        if text is not None:
            revoked.write_text(text)
        policy = TrustPolicy(hostname="node1", port=22, user_files=(str(tmp_path / "kh"),),
                             revoked_keys_files=(str(revoked),))
        v, _ = verify(policy, blob, "10.0.0.5")
        return "trusted" if v.trusted else v.detail

    assert verdict(f"# comment\n\n\t{other} a comment\n") == "trusted"
    said = verdict(f"{other}\nnode1 {key}\n")  # (a known_hosts line)
    assert said.startswith(f"RevokedHostKeys {revoked} line 2 is not a public key")
    assert said.endswith("ssh stops reading there and refuses every host key")
    assert f"{revoked} line 2 is not a public key" in verdict(f"{other}\nssh-ed25519 !!\n")
    assert f"{revoked} line 1 is not a public key" in verdict("ssh-ed25519\n")
    assert verdict(f"{key}\nbroken\n").endswith(f"revoked by RevokedHostKeys {revoked} line 1")
    assert keygen("-k", "-f", str(revoked), str(tmp_path / "k.pub")).returncode == 0
    assert "is a binary KRL" in verdict()


@pytest.mark.parametrize("openssh", [(10, 2), (10, 3)])
def test_certificate_principals_as_the_version_of_ssh_matches_them(
        tmp_path: Path, openssh: tuple[int, int]) -> None:
    """Before OpenSSH 10.3 a host certificate without principals is valid for any host,
    and a principal must be the host's name; from 10.3 it needs principals, matched as
    patterns with * and ?."""
    from sshcluster.ssh.keycheck import verify

    ca, host = new_key(tmp_path / "ca"), new_key(tmp_path / "host")
    (tmp_path / "kh").write_text(f"@cert-authority * {public(ca)}\n")

    def trusted(*principals: str) -> bool:
        names = ["-n", ",".join(principals)] if principals else []
        assert keygen("-s", str(ca), "-I", "h", "-h", *names, f"{host}.pub").returncode == 0
        blob = base64.b64decode(Path(f"{host}-cert.pub").read_text().split()[1])
        policy = TrustPolicy(hostname="node1.example", port=22, openssh=openssh,
                             user_files=(str(tmp_path / "kh"),))
        verdict, _ = verify(policy, blob, "10.0.0.5")
        return verdict.trusted and "certificate" in verdict.detail

    recent = openssh >= (10, 3)
    assert trusted("node1.example")
    assert trusted() == (not recent)
    assert trusted("*.example", "other") == recent
    assert trusted("node?.example") == recent
    assert not trusted("NODE1.example")


def test_a_host_certificate_made_by_ssh_keygen(tmp_path: Path) -> None:
    ca = new_key(tmp_path / "ca")
    host = new_key(tmp_path / "host", "ecdsa")
    assert keygen("-s", str(ca), "-I", "node1", "-h", "-n", "node1,10.0.0.5",
                  "-V", "-5m:+1h", f"{host}.pub").returncode == 0
    text = Path(f"{host}-cert.pub").read_text().split()
    key, cert = decode_host_key(base64.b64decode(text[1]))
    assert cert is not None and cert.cert is not None
    assert cert.principals == ("node1", "10.0.0.5") and cert.cert_type == 2
    assert key.public_data == asyncssh.read_public_key(f"{host}.pub").public_data
    assert cert.ca.public_data == asyncssh.read_public_key(f"{ca}.pub").public_data
    assert cert.signature_algorithm == "ssh-ed25519"
    assert cert.valid_before - cert.valid_after == 65 * 60


def test_key_types_known_for_the_host_are_asked_for_first(tmp_path: Path) -> None:
    rsa, ed = public(new_key(tmp_path / "r", "rsa")), public(new_key(tmp_path / "e"))
    algs = ["ssh-ed25519-cert-v01@openssh.com", "rsa-sha2-512-cert-v01@openssh.com",
            "ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256"]
    kh = tmp_path / "kh"

    def order(text: str) -> list[str]:
        kh.write_text(text)
        return order_host_key_algorithms(
            TrustPolicy(hostname="node1", port=22, user_files=(str(kh),)), algs)

    assert order(f"node1 {ed}\n") == algs  # the first preference is known: as is
    assert order(f"node1 {rsa}\n") == [algs[1], algs[3], algs[4], algs[0], algs[2]]
    assert order(f"@cert-authority * {ed}\nnode1 {rsa}\n")[:2] == algs[:2]
    assert order(f"node2 {rsa}\n") == algs  # another host's keys change nothing


@pytest.mark.parametrize("openssh", [(9, 2), (9, 6)])
def test_known_hosts_command_keys_order_under_the_name_ssh_uses(tmp_path: Path,
                                                                openssh: tuple[int, int]) -> None:
    """The keys KnownHostsCommand prints (the inventory's file) count for the order
    under [host]:port, or the HostKeyAlias, from OpenSSH 9.6 on, as ssh then checks the
    key with them; before 9.6 ssh looked them up there under the bare host name."""
    rsa = public(new_key(tmp_path / "r", "rsa"))
    algs = ["ssh-ed25519", "rsa-sha2-512"]
    kh = tmp_path / "inv"

    def order(text: str, alias: str | None = None) -> list[str]:
        kh.write_text(text)
        return order_host_key_algorithms(TrustPolicy(
            hostname="node1", port=2222, alias=alias, command_files=(str(kh),),
            openssh=openssh), algs)

    recent = openssh >= (9, 6)
    rsa_first = ["rsa-sha2-512", "ssh-ed25519"]
    assert order(f"[node1]:2222 {rsa}\n") == (rsa_first if recent else algs)
    assert order(f"myalias {rsa}\n", alias="myalias") == (rsa_first if recent else algs)
    assert order(f"node1 {rsa}\n") == (algs if recent else rsa_first)


def test_the_port_less_retry_does_not_read_the_known_hosts_command(tmp_path: Path) -> None:
    """A key not found under [host]:port is looked for under the plain host name in the
    files, but not in what KnownHostsCommand prints: ssh does not run it for that retry."""
    from sshcluster.ssh.keycheck import verify

    new_key(tmp_path / "k")
    blob = base64.b64decode(public(tmp_path / "k").split()[1])
    line = f"node1 {public(tmp_path / 'k')}\n"
    (tmp_path / "files").write_text(line)
    (tmp_path / "inv").write_text(line)
    in_file = TrustPolicy(hostname="node1", port=2222, user_files=(str(tmp_path / "files"),))
    in_command = TrustPolicy(hostname="node1", port=2222,
                             command_files=(str(tmp_path / "inv"),))
    assert verify(in_file, blob, "10.0.0.5")[0].trusted
    assert not verify(in_command, blob, "10.0.0.5")[0].trusted


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Setup:
    """A client setup: files written into the test directory (``{port}``, ``{key}``,
    ``{other}``, ``{rsa}``, ``{ca}`` and ``{dir}`` filled in), extra config lines, and
    what the server offers."""

    files: dict[str, str]
    config: str = ""
    host_keys: tuple[str, ...] = ("key",)
    certificate: str | None = None  # "valid", "expired", "other-name"
    known_hosts: str | None = None  # the inventory's known_hosts:, relative to the dir
    identity: str = "config"  # config, inventory (identity_file:), wrong, encrypted


SETUPS = {
    "user file": Setup({"user": "[127.0.0.1]:{port} {key}\n"}),
    "hashed": Setup({"user": "{hashed} {key}\n"}),
    "global file only": Setup({"global": "[127.0.0.1]:{port} {key}\n"}),
    "second user file via Include": Setup(
        {"included": "Host *\n  UserKnownHostsFile {dir}/user {dir}/user2\n",
         "user2": "[127.0.0.1]:{port} {key}\n"}, config="Include {dir}/included\n"),
    "wrong key": Setup({"user": "[127.0.0.1]:{port} {other}\n"}),
    "wrong key in one file, the right one in another": Setup(
        {"user": "[127.0.0.1]:{port} {other}\n", "global": "[127.0.0.1]:{port} {key}\n"}),
    "wrong key of another type": Setup({"user": "[127.0.0.1]:{port} {rsa}\n"}),
    "nothing known": Setup({"user": "[127.0.0.2]:{port} {key}\n"}),
    "revoked": Setup({"user": "[127.0.0.1]:{port} {key}\n@revoked * {key}\n"}),
    "port-less entry": Setup({"user": "127.0.0.1 {key}\n"}),
    "port-less wrong key": Setup({"user": "127.0.0.1 {other}\n"}),
    "pattern": Setup({"user": "[127.0.0.?]:* {key}\n"}),
    "negated pattern, the port-less name still matches": Setup(
        {"user": "*,![127.0.0.1]:* {key}\n"}),
    "negated pattern": Setup({"user": "*,![127.0.0.1]:*,!127.0.0.1 {key}\n"}),
    "HostKeyAlias": Setup({"user": "myalias {key}\n"}, config="HostKeyAlias myalias\n"),
    "HostKeyAlias, key under the address": Setup({"user": "[127.0.0.1]:{port} {key}\n"},
                                                config="HostKeyAlias myalias\n"),
    "certificate": Setup({"user": "@cert-authority * {ca}\n"}, certificate="valid"),
    "certificate for another name": Setup({"user": "@cert-authority * {ca}\n"},
                                          certificate="other-name"),
    "expired certificate, plain key known": Setup(
        {"user": "@cert-authority * {ca}\n[127.0.0.1]:{port} {key}\n"},
        certificate="expired"),
    "CA for other hosts only": Setup({"user": "@cert-authority *.example.org {ca}\n"},
                                     certificate="valid"),
    "revoked CA": Setup({"user": "@cert-authority * {ca}\n@revoked * {ca}\n"},
                        certificate="valid"),
    "only the RSA key known (ssh asks for it first)": Setup(
        {"user": "[127.0.0.1]:{port} {rsa}\n"}, host_keys=("key", "rsa")),
    "inventory known_hosts has only the RSA key": Setup(
        {"inv": "[127.0.0.1]:{port} {rsa}\n"}, host_keys=("key", "rsa"), known_hosts="inv"),
    "RSA known, HostKeyAlgorithms written out in the default order": Setup(
        {"user": "[127.0.0.1]:{port} {rsa}\n"}, host_keys=("key", "rsa"),
        config="HostKeyAlgorithms {default_algs}\n"),
    "RSA known, HostKeyAlgorithms changed with -": Setup(
        {"user": "[127.0.0.1]:{port} {rsa}\n"}, host_keys=("key", "rsa"),
        config="HostKeyAlgorithms -rsa-sha2-256\n"),
    "RSA known, HostKeyAlgorithms ed25519 only": Setup(
        {"user": "[127.0.0.1]:{port} {rsa}\n"}, host_keys=("key", "rsa"),
        config="HostKeyAlgorithms ssh-ed25519\n"),
    "RevokedHostKeys": Setup({"user": "[127.0.0.1]:{port} {key}\n", "revoked": "{key}\n"},
                             config="RevokedHostKeys {dir}/revoked\n"),
    "RevokedHostKeys with comments and another key": Setup(
        {"user": "[127.0.0.1]:{port} {key}\n", "revoked": "# old\n\n  {other} old key\n"},
        config="RevokedHostKeys {dir}/revoked\n"),
    "RevokedHostKeys with a known_hosts line (ssh stops there)": Setup(
        {"user": "[127.0.0.1]:{port} {key}\n", "revoked": "{other}\nsomehost {other}\n"},
        config="RevokedHostKeys {dir}/revoked\n"),
    "RevokedHostKeys lists the key's certificate": Setup(
        {"user": "[127.0.0.1]:{port} {key}\n", "revoked": "{hostcert}\n"},
        config="RevokedHostKeys {dir}/revoked\n"),
    "@revoked certificate": Setup({"user": "[127.0.0.1]:{port} {key}\n@revoked * {hostcert}\n"}),
    "@cert-authority and a tab (a bad line)": Setup({"user": "@cert-authority\t* {ca}\n"},
                                                   certificate="valid"),
    "NoHostAuthenticationForLocalhost": Setup(
        {"user": ""}, config="NoHostAuthenticationForLocalhost yes\n"),
    "inventory known_hosts, odd path": Setup(
        {"kh dir/it's 100% %d.kh": "[127.0.0.1]:{port} {key}\n"},
        known_hosts="kh dir/it's 100% %d.kh"),
    "inventory known_hosts added to the user's": Setup(
        {"user": "[127.0.0.1]:{port} {key}\n", "inv": "otherhost {other}\n"},
        known_hosts="inv"),
    "inventory known_hosts with another key, the user's file the right one": Setup(
        {"user": "[127.0.0.1]:{port} {key}\n", "inv": "[127.0.0.1]:{port} {other}\n"},
        known_hosts="inv"),
    "inventory known_hosts with the wrong key": Setup(
        {"inv": "[127.0.0.1]:{port} {other}\n"}, known_hosts="inv"),
    "inventory known_hosts missing, the user's file knows the key": Setup(
        {"user": "[127.0.0.1]:{port} {key}\n"}, known_hosts="missing"),
    "inventory known_hosts missing, nothing known": Setup({}, known_hosts="missing"),
    "identity from the inventory": Setup({"user": "[127.0.0.1]:{port} {key}\n"},
                                         identity="inventory"),
    "wrong identity in the config": Setup({"user": "[127.0.0.1]:{port} {key}\n"},
                                          identity="wrong"),
    "identity with a passphrase, no agent": Setup({"user": "[127.0.0.1]:{port} {key}\n"},
                                                  identity="encrypted"),
}


@dataclass(frozen=True)
class Material:
    client: Path
    wrong: Path
    encrypted: Path
    host_key: asyncssh.SSHKey
    rsa_key: asyncssh.SSHKey
    ca: Path
    tmp: Path

    def certificate(self, kind: str) -> asyncssh.SSHCertificate:
        host_pub = self.tmp / f"host-{kind}.pub"
        self.host_key.write_public_key(str(host_pub))
        validity = "-1d:-1h" if kind == "expired" else "-5m:+1h"
        names = "node9" if kind == "other-name" else "127.0.0.1"
        assert keygen("-s", str(self.ca), "-I", "h", "-h", "-n", names, "-V", validity,
                      str(host_pub)).returncode == 0
        return asyncssh.read_certificate(str(self.tmp / f"host-{kind}-cert.pub"))


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    tmp = tmp_path_factory.mktemp("material")
    rsa = new_key(tmp / "host_rsa", "rsa")
    client = keys().write_client_key(tmp / "id")
    encrypted = keys().write_client_key(tmp / "id_encrypted")
    assert keygen("-p", "-P", "", "-N", "secret", "-f", str(encrypted)).returncode == 0
    return Material(client=client, wrong=new_key(tmp / "wrong"), encrypted=encrypted,
                    host_key=keys().host_key,
                    rsa_key=asyncssh.read_private_key(str(rsa)),
                    ca=new_key(tmp / "ca"), tmp=tmp)


def write_setup(setup: Setup, d: Path, port: int, m: Material) -> Path:
    fill: dict[str, Callable[[], str]] = {
        "port": lambda: str(port),
        "key": lambda: m.host_key.export_public_key().decode().strip(),
        "other": lambda: keys().other_host_key.export_public_key().decode().strip(),
        "rsa": lambda: m.rsa_key.export_public_key().decode().strip(),
        "ca": lambda: public(m.ca),
        "dir": lambda: str(d),
        "hashed": lambda: hashed_name(f"[127.0.0.1]:{port}"),
        "hostcert": lambda: m.certificate("valid").export_certificate().decode().strip(),
        "default_algs": lambda: subprocess.run(
            ["ssh", "-G", "-F", "none", "h"], capture_output=True, text=True, check=True,
        ).stdout.split("hostkeyalgorithms ")[1].split()[0],
    }
    values = {k: f() for k, f in fill.items()}
    for name, text in {"user": "", "global": "", **setup.files}.items():
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.format(**values))
    identity = {"config": m.client, "wrong": m.wrong, "encrypted": m.encrypted,
                "inventory": d / "no-such-key"}[setup.identity]
    config = d / "config"
    config.write_text(
        setup.config.format(**values)
        + f"Host *\n  UserKnownHostsFile {d}/user\n  GlobalKnownHostsFile {d}/global\n"
          f"  IdentityFile {identity}\n  IdentitiesOnly yes\n  IdentityAgent none\n"
          "  HashKnownHosts no\n  CheckHostIP no\n")
    return config


async def both_verdicts(setup: Setup, d: Path, m: Material) -> tuple[bool, bool, CheckReport]:
    host_keys = [m.host_key, *([m.rsa_key] if "rsa" in setup.host_keys else [])]
    certs = [m.certificate(setup.certificate)] if setup.certificate else []
    async with LocalServer(host_keys, keys().client_key, certs) as server:
        config = write_setup(setup, d, server.port, m)
        identity = str(m.client) if setup.identity == "inventory" else None
        inv = Inventory(primary=Primary("127.0.0.1", ssh_port=1),
                        hosts=(Host("127.0.0.1", user=getpass.getuser(), ncore=1,
                                    ssh_port=server.port, identity_file=identity),),
                        known_hosts=str(d / setup.known_hosts) if setup.known_hosts else None)
        ssh = await asyncio.create_subprocess_exec(
            "ssh", "-F", str(config), *ssh_command(inv, inv.hosts[0])[1:],
            "-l", getpass.getuser(), "127.0.0.1", "true", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        said, _ = await asyncio.wait_for(ssh.communicate(), 30)
        report = await check_async(inv, timeout=10, ssh_config=[str(config)])
    check_ok = all(report.hosts[0].checks[s].status == "ok" for s in ("hostkey", "auth"))
    assert ssh.returncode in (0, 255), said
    return ssh.returncode == 0, check_ok, report


EXPECTED_OK = {"user file", "hashed", "global file only", "second user file via Include",
               "port-less entry", "pattern", "HostKeyAlias", "certificate",
               "expired certificate, plain key known",
               "only the RSA key known (ssh asks for it first)",
               "NoHostAuthenticationForLocalhost", "inventory known_hosts, odd path",
               "inventory known_hosts added to the user's",
               "wrong key in one file, the right one in another",
               "negated pattern, the port-less name still matches",
               "inventory known_hosts with another key, the user's file the right one",
               "identity from the inventory",
               "inventory known_hosts missing, the user's file knows the key",
               "RevokedHostKeys with comments and another key",
               "RSA known, HostKeyAlgorithms changed with -",
               # (ssh asks for the key types KnownHostsCommand knows first from 9.6 on)
               *(["inventory known_hosts has only the RSA key"]
                 if openssh_version() >= (9, 6) else [])}


@pytest.mark.parametrize("name", list(SETUPS))
def test_same_verdict_as_openssh(name: str, material: Material, tmp_path: Path) -> None:
    ssh_ok, check_ok, report = asyncio.run(both_verdicts(SETUPS[name], tmp_path, material))
    hk = report.hosts[0].checks["hostkey"]
    assert ssh_ok == (name in EXPECTED_OK)  # the setup means what its name says
    assert check_ok == ssh_ok, (hk, report.hosts[0].checks["auth"])
    if not check_ok and hk.status == "failed":
        assert hk.hint, hk
        assert str(tmp_path) in hk.detail + hk.hint  # names the files it looked in
    elif not check_ok:
        auth = report.hosts[0].checks["auth"]
        assert "permission denied" in auth.detail and str(material.tmp) in auth.detail
        if "passphrase" in name:
            assert "has a passphrase" in auth.detail


@pytest.mark.parametrize("where", ["user file", "inventory file"])
def test_accept_new_records_where_ssh_then_finds_it(where: str, material: Material,
                                                     tmp_path: Path) -> None:
    """--accept-new records the key in ssh's first UserKnownHostsFile (hashed, as
    HashKnownHosts yes says) or in the inventory's known_hosts: after it, a strict ssh
    with the launch's options accepts the host, and the check does too."""
    setup = Setup({"user": "", "user2": ""}, config="HashKnownHosts yes\n",
                  known_hosts="inv" if where == "inventory file" else None)

    async def run() -> tuple[bool, bool, CheckReport, bool, bool]:
        async with LocalServer(material.host_key, keys().client_key) as server:
            config = write_setup(setup, tmp_path, server.port, material)
            text = config.read_text().replace(f"{tmp_path}/user\n",
                                              f"{tmp_path}/user {tmp_path}/user2\n")
            config.write_text(text.replace("  HashKnownHosts no\n", ""))
            inv = Inventory(primary=Primary("127.0.0.1", ssh_port=1),
                            hosts=(Host("127.0.0.1", user=getpass.getuser(), ncore=1,
                                        ssh_port=server.port),),
                            known_hosts=str(tmp_path / "inv") if setup.known_hosts else None)
            before = await check_async(inv, timeout=10, ssh_config=[str(config)])
            recorded = await check_async(inv, timeout=10, ssh_config=[str(config)],
                                         accept_new=True)
            after = await check_async(inv, timeout=10, ssh_config=[str(config)])
            ssh = await asyncio.create_subprocess_exec(
                "ssh", "-F", str(config), *ssh_command(inv, inv.hosts[0])[1:], "127.0.0.1",
                "true", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL)
            return (before.ok is False and before.hosts[0].failed[0] == "hostkey",
                    recorded.hosts[0].checks["hostkey"].status == "ok", recorded,
                    after.hosts[0].checks["hostkey"].status == "ok",
                    await asyncio.wait_for(ssh.wait(), 30) == 0)

    refused_before, accepted, recorded, accepted_after, ssh_ok = asyncio.run(run())
    assert refused_before and accepted and accepted_after and ssh_ok
    target = tmp_path / ("inv" if where == "inventory file" else "user")
    assert f"recorded in {target}" in recorded.hosts[0].checks["hostkey"].detail
    line = target.read_text()
    assert line.startswith("|1|") and line.count("\n") == 1  # hashed, one line
    assert (tmp_path / "user2").read_text() == ""


@pytest.mark.parametrize("case", ["both known", "jump host unknown", "target key wrong",
                                  "ProxyCommand", "ProxyCommand %k ${UNSET}"])
def test_behind_a_jump_host_same_verdict_as_openssh(case: str, material: Material,
                                                   tmp_path: Path) -> None:
    """ProxyJump, hop by hop: the jump host's key is checked with its own settings, the
    target's through it; the check and ssh agree, and the check says which failed."""

    async def run() -> tuple[bool, CheckReport]:
        async with LocalServer(keys().other_host_key, keys().client_key,
                               jump_host=True) as jump, \
                LocalServer(material.host_key, keys().client_key) as target:
            known = {
                "jump": keys().other_host_key if case != "jump host unknown" else None,
                "target": material.host_key if case != "target key wrong"
                else keys().other_host_key,
            }
            lines = "".join(f"[127.0.0.1]:{port} {k.export_public_key().decode()}"
                            for port, k in ((jump.port, known["jump"]),
                                            (target.port, known["target"])) if k)
            (tmp_path / "user").write_text(lines)
            config = tmp_path / "config"
            proxy = (f"ProxyCommand ssh -F {config} -p {jump.port} -W %h:%p 127.0.0.1"
                     if case == "ProxyCommand" else f"ProxyJump 127.0.0.1:{jump.port}")
            if case.startswith("ProxyCommand %k"):
                # ssh expands %k (the HostKeyAlias, else the name given) and leaves an
                # unset ${VAR} to the shell, where it is empty
                proxy = (f"ProxyCommand env SSHCLUSTER_ALIAS=%k ssh -F {config} "
                         f"-p {jump.port} -W %h:%p 127.0.0.1 ${{SSHCLUSTER_NEVER_SET}}")
            config.write_text(
                f"Host target\n  HostName 127.0.0.1\n  Port {target.port}\n  {proxy}\n"
                f"Host *\n  UserKnownHostsFile {tmp_path}/user\n"
                "  GlobalKnownHostsFile /dev/null\n"
                f"  IdentityFile {material.client}\n  IdentitiesOnly yes\n"
                "  IdentityAgent none\n")
            inv = Inventory(primary=Primary("127.0.0.1", ssh_port=1),
                            hosts=(Host("target", ncore=1),))
            ssh = await asyncio.create_subprocess_exec(
                "ssh", "-F", str(tmp_path / "config"), *ssh_command(inv, inv.hosts[0])[1:],
                "target", "true", stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
            ssh_ok = await asyncio.wait_for(ssh.wait(), 30) == 0
            report = await check_async(inv, timeout=10,
                                       ssh_config=[str(tmp_path / "config")])
            return ssh_ok, report

    ssh_ok, report = asyncio.run(run())
    checks = report.hosts[0].checks
    command = case.startswith("ProxyCommand")
    assert ssh_ok == (case == "both known" or command)
    assert (checks["auth"].status == "ok") == ssh_ok
    assert f"reached through {'ProxyCommand' if command else 'ProxyJump'}" \
        in checks["resolve"].detail
    if case == "jump host unknown":
        assert checks["connect"].status == "failed"
        assert "jump host 127.0.0.1" in checks["connect"].detail
        assert "is not in known_hosts" in checks["connect"].detail
    elif case == "target key wrong":
        assert checks["connect"].status == "ok"
        assert "HOST KEY CHANGED" in checks["hostkey"].detail
    elif case == "both known":
        assert checks["connect"].detail.startswith("through jump host 127.0.0.1")


@pytest.mark.slow
def test_a_jump_connection_is_closed_when_its_host_is_done(material: Material,
                                                           tmp_path: Path) -> None:
    """A host's jump host connection is its own: closed as soon as that host's check
    ends, while the rest of the run (here a host that never answers) goes on."""
    seen: dict[str, int] = {}

    def established(port: int) -> int:
        out = subprocess.run(["ss", "-Htn", "state", "established", f"( dport = :{port} )"],
                             capture_output=True, text=True, check=True).stdout
        return len(out.splitlines())

    async def run() -> CheckReport:
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen()
            async with LocalServer(keys().other_host_key, keys().client_key,
                                   jump_host=True) as jump, \
                    LocalServer(material.host_key, keys().client_key) as target:
                (tmp_path / "user").write_text("".join(
                    f"[127.0.0.1]:{port} {k.export_public_key().decode()}"
                    for port, k in ((jump.port, keys().other_host_key),
                                    (target.port, material.host_key))))
                (tmp_path / "config").write_text(
                    f"Host target\n  HostName 127.0.0.1\n  Port {target.port}\n"
                    f"  ProxyJump 127.0.0.1:{jump.port}\n"
                    f"Host slow\n  HostName 127.0.0.1\n  Port {silent.getsockname()[1]}\n"
                    f"Host *\n  UserKnownHostsFile {tmp_path}/user\n"
                    "  GlobalKnownHostsFile /dev/null\n"
                    f"  IdentityFile {material.client}\n  IdentitiesOnly yes\n"
                    "  IdentityAgent none\n")
                inv = Inventory(primary=Primary("127.0.0.1", ssh_port=1),
                                hosts=(Host("target", ncore=1), Host("slow", ncore=1)))

                def progress(report: HostReport) -> None:
                    seen[report.label] = established(jump.port)

                return await check_async(inv, timeout=6, progress=progress,
                                         ssh_config=[str(tmp_path / "config")])

    report = asyncio.run(run())
    assert report.hosts[0].checks["auth"].status == "ok"  # it went through the jump host
    assert report.hosts[1].checks["hostkey"].status == "failed"  # the run went on
    assert seen == {"target": 0, "slow": 0}, seen
