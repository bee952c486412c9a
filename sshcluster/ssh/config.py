"""What OpenSSH will do for a host: its effective client settings, from ``ssh -G``.

The launch runs ``ssh`` with the options :func:`~sshcluster.ssh.command.ssh_command`
gives it, so the check asks that same ``ssh`` what it would do, without connecting:
:func:`client_settings` runs ``ssh -G`` with the launch's options, the host's user and
port (``Include``, ``Match``, ``Host``, ``HostName``, canonicalisation and the command
line all applied by OpenSSH itself) and returns a :class:`ClientSettings`. Paths ssh
expands later (``IdentityFile``, ``CertificateFile``) are expanded here as ssh expands
them: ``~`` from the passwd database (not ``$HOME``), ``%`` tokens and ``${VAR}``.

What the check cannot do as ssh would is listed by :meth:`ClientSettings.unsupported`:
the check then fails the host rather than guess (see docs/check.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sshcluster.commands import run_command
from sshcluster.errors import SshclusterError

#: Seconds ``ssh -G`` may take (it reads files and may run ``Match exec`` commands).
SSH_G_TIMEOUT = 10.0

_STRICT = {"true": "yes", "yes": "yes", "false": "no", "no": "no", "off": "no",
           "ask": "ask", "accept-new": "accept-new"}


class SshConfigError(SshclusterError):
    """``ssh -G`` failed for a host: a broken ssh config, or no ssh at all. ``host`` names
    the host; the message is ssh's own (with the config file and line)."""

    def __init__(self, message: str, *, host: str, hint: str | None = None) -> None:
        self.host = host
        super().__init__(message, hint=hint)


@dataclass(frozen=True)
class ClientSettings:
    """One host's effective OpenSSH client settings (the keys of ``ssh -G``).

    Paths are expanded; ``identity_agent`` is None for ``IdentityAgent none`` (and the
    ``SSH_AUTH_SOCK`` of this process when unset); ``proxy_command`` keeps its ``%``
    tokens (see :meth:`proxy_argv`); ``raw`` has every key ``ssh -G`` printed.
    """

    host_arg: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    certificate_files: tuple[str, ...]
    identities_only: bool
    identity_agent: str | None
    user_known_hosts: tuple[str, ...]
    global_known_hosts: tuple[str, ...]
    known_hosts_command: str | None
    strict_host_key_checking: str
    host_key_alias: str | None
    check_host_ip: bool
    hash_known_hosts: bool
    proxy_jump: str | None
    proxy_command: str | None
    connect_timeout: float | None
    host_key_algorithms: tuple[str, ...]
    ca_signature_algorithms: tuple[str, ...]
    revoked_host_keys: str | None
    no_host_auth_localhost: bool
    address_family: str
    bind_address: str | None
    raw: Mapping[str, tuple[str, ...]]

    @property
    def proxied(self) -> bool:
        """Whether ssh reaches the host through ProxyJump or ProxyCommand."""
        return bool(self.proxy_jump or self.proxy_command)

    def get(self, key: str, default: str = "") -> str:
        """The first value ``ssh -G`` printed for ``key`` (lower case)."""
        values = self.raw.get(key)
        return values[0] if values else default

    def unsupported(self) -> list[str]:
        """Settings with which ssh would do what the check cannot mirror."""
        out = []
        if self.get("proxyusefdpass") == "yes":
            out.append("ProxyUseFdpass yes")
        if self.proxy_command == "-":
            out.append("ProxyCommand -")
        if self.get("remotecommand"):
            out.append(f"RemoteCommand {self.get('remotecommand')} (ssh refuses a command "
                       "line then, and the launch gives one)")
        if self.get("sessiontype") == "none":
            out.append("SessionType none (the launch needs a session)")
        return out

    def proxy_argv(self) -> list[str]:
        """The ProxyCommand as ssh runs it: through ``$SHELL -c exec ...``, tokens
        expanded."""
        assert self.proxy_command
        # (as ssh's expand_proxy_command: %k is the HostKeyAlias, else the name given)
        command = expand_tokens(self.proxy_command, {
            "h": self.hostname, "k": self.host_key_alias or self.host_arg,
            "n": self.host_arg, "p": str(self.port), "r": self.user}, variables=False)
        return [os.environ.get("SHELL") or "/bin/sh", "-c", f"exec {command}"]


def parse_ssh_g(text: str) -> dict[str, tuple[str, ...]]:
    """``ssh -G`` output as ``{key: (value, ...)}`` (repeated keys keep every value)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            out.setdefault(key.lower(), []).append(value.strip())
    return {k: tuple(v) for k, v in out.items()}


def _paths(value: str) -> tuple[str, ...]:
    """A one-line list of files as ``ssh -G`` prints it: space-separated, unquoted. A
    word that does not start a path (``/`` or ``~``) belongs to the previous one (a path
    with a space in it)."""
    if not value or value == "none":
        return ()
    paths: list[str] = []
    for word in value.split(" "):
        if paths and not word.startswith(("/", "~")):
            paths[-1] += " " + word
        else:
            paths.append(word)
    return tuple(paths)


def settings_from(raw: Mapping[str, tuple[str, ...]], host_arg: str) -> ClientSettings:
    """:class:`ClientSettings` from parsed ``ssh -G`` output for ``host_arg``."""
    def one(key: str, default: str = "") -> str:
        values = raw.get(key)
        return values[0] if values else default

    def optional(key: str) -> str | None:
        value = one(key)
        return None if value in ("", "none") else value

    user = one("user") or _passwd().pw_name
    hostname = one("hostname") or host_arg
    port = int(one("port", "22") or 22)
    alias = optional("hostkeyalias")
    tokens = _tokens(host_arg=host_arg, hostname=hostname, port=port, user=user,
                     alias=alias)
    identities = tuple(expand_path(p, tokens) for p in raw.get("identityfile", ())
                       if p.lower() != "none")
    certificates = tuple(expand_path(p, tokens) for p in raw.get("certificatefile", ())
                         if p.lower() != "none")
    agent_value = one("identityagent")
    if agent_value == "none":
        agent: str | None = None
    elif agent_value in ("", "SSH_AUTH_SOCK"):
        agent = os.environ.get("SSH_AUTH_SOCK") or None
    elif agent_value.startswith("$"):
        agent = os.environ.get(agent_value[1:]) or None
    else:
        agent = agent_value
    timeout = one("connecttimeout", "none")
    return ClientSettings(
        host_arg=host_arg, hostname=hostname, port=port, user=user,
        identity_files=identities, certificate_files=certificates,
        identities_only=one("identitiesonly") == "yes", identity_agent=agent,
        user_known_hosts=_paths(one("userknownhostsfile")),
        global_known_hosts=_paths(one("globalknownhostsfile")),
        known_hosts_command=optional("knownhostscommand"),
        strict_host_key_checking=_STRICT.get(one("stricthostkeychecking"), "ask"),
        host_key_alias=alias.lower() if alias else None,
        check_host_ip=one("checkhostip") == "yes",
        hash_known_hosts=one("hashknownhosts") == "yes",
        proxy_jump=optional("proxyjump"), proxy_command=optional("proxycommand"),
        connect_timeout=None if timeout in ("none", "") else float(timeout),
        host_key_algorithms=tuple(a for a in one("hostkeyalgorithms").split(",") if a),
        ca_signature_algorithms=tuple(a for a in one("casignaturealgorithms").split(",")
                                      if a),
        revoked_host_keys=optional("revokedhostkeys"),
        no_host_auth_localhost=one("nohostauthenticationforlocalhost") == "yes",
        address_family=one("addressfamily", "any"),
        bind_address=optional("bindaddress"),
        raw=dict(raw),
    )


async def client_settings(destination: str, args: Sequence[str] = (), *,
                          config: str | None = None, ssh: str = "ssh") -> ClientSettings:
    """Ask ``ssh -G [-F config] ARGS destination`` what ssh would do; raise
    :class:`SshConfigError` with ssh's own message if it cannot say."""
    argv = [ssh, "-G", *(["-F", config] if config else []), *args, "--", destination]
    try:
        done = await run_command(argv, SSH_G_TIMEOUT)
    except FileNotFoundError:
        raise SshConfigError(f"no {ssh} on this machine: the launch runs OpenSSH's ssh",
                             host=destination,
                             hint="install the OpenSSH client (openssh-client)") from None
    except asyncio.TimeoutError:
        raise SshConfigError(f"'ssh -G {destination}' did not answer within "
                             f"{SSH_G_TIMEOUT:g} s", host=destination,
                             hint="a Match exec command in the ssh config may hang") from None
    if done.returncode != 0:
        said = "; ".join(line for line in done.stderr.decode(errors="replace").splitlines()
                         if line and "Pseudo-terminal" not in line)
        raise SshConfigError(f"ssh cannot use its config for {destination}: "
                             f"{said or f'exit status {done.returncode}'}",
                             host=destination, hint="fix the ssh config line it names")
    try:
        return settings_from(parse_ssh_g(done.stdout.decode(errors="replace")), destination)
    except (ValueError, KeyError) as e:  # a token or ~user ssh would refuse too
        raise SshConfigError(f"ssh would refuse a path in its config for {destination}: {e}",
                             host=destination, hint="fix that IdentityFile or "
                                                    "CertificateFile") from None


# --------------------------------------------------------------------------- tokens


def _passwd() -> pwd.struct_passwd:
    return pwd.getpwuid(os.getuid())


def _tokens(*, host_arg: str, hostname: str, port: int, user: str,
            alias: str | None) -> dict[str, str]:
    """ssh's DEFAULT_CLIENT_PERCENT_EXPAND_ARGS for this connection."""
    pw = _passwd()
    local = socket.gethostname()
    return {
        "C": hashlib.sha1(f"{local}{hostname}{port}{user}".encode()).hexdigest(),
        "L": local.split(".")[0], "i": str(pw.pw_uid), "k": alias or host_arg,
        "l": local, "n": host_arg, "p": str(port), "d": pw.pw_dir, "h": hostname,
        "r": user, "u": pw.pw_name,
    }


def expand_tokens(text: str, tokens: Mapping[str, str], *, variables: bool = True) -> str:
    """``%x`` tokens (``%%`` is ``%``) and ``${VAR}`` expanded in one pass, as ssh does;
    an unknown token or an unset variable raises ValueError, as ssh refuses them. Without
    ``variables``, ``${VAR}`` stays for the shell (ProxyCommand's, which ssh runs)."""
    out, i = [], 0
    while i < len(text):
        if variables and text.startswith("${", i):
            end = text.find("}", i)
            name = text[i + 2:end] if end > 0 else ""
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or name not in os.environ:
                raise ValueError(f"${{{name}}} in {text!r} is not a set environment variable")
            out.append(os.environ[name])
            i = end + 1
        elif text[i] == "%":
            token = text[i + 1:i + 2]
            if token == "%":
                out.append("%")
            elif token in tokens:
                out.append(tokens[token])
            else:
                raise ValueError(f"unknown token %{token} in {text!r}")
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def expand_path(path: str, tokens: Mapping[str, str]) -> str:
    """``path`` with ``~`` (the passwd home, as ssh's tilde_expand_filename) and tokens
    expanded."""
    if path.startswith("~"):
        head, sep, rest = path[1:].partition("/")
        home = pwd.getpwnam(head).pw_dir if head else _passwd().pw_dir
        path = home.rstrip("/") + "/" + rest if sep else home
    return expand_tokens(path, tokens)


__all__ = [
    "SSH_G_TIMEOUT",
    "ClientSettings",
    "SshConfigError",
    "client_settings",
    "expand_path",
    "expand_tokens",
    "parse_ssh_g",
    "settings_from",
]
