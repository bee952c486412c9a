"""What OpenSSH will do for a host: its effective client settings, from ``ssh -G``.

The launch runs ``ssh`` with the options :func:`~sshcluster.ssh.command.ssh_command`
gives it, so the check asks that same ``ssh`` what it would do, without connecting:
:func:`client_settings` runs ``ssh -G`` with the launch's options, the host's user and
port (``Include``, ``Match``, ``Host``, ``HostName``, canonicalisation and the command
line all applied by OpenSSH itself) and returns a :class:`ClientSettings`. Paths ssh
expands later (``IdentityFile``, ``CertificateFile``; ``GlobalKnownHostsFile``, of which
ssh expands only ``~``) are expanded here as ssh expands them: ``~`` from the passwd
database (not ``$HOME``), ``%`` tokens and ``${VAR}``.

What the check cannot do as ssh would is listed by :meth:`ClientSettings.unsupported`:
the check then fails the host rather than guess (see docs/check.md). What ssh would do
that breaks the launch, while the check's own connection works, is listed by
:meth:`ClientSettings.breaks_launch`: the check fails the host for that too.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from sshcluster.commands import run_command
from sshcluster.errors import SshclusterError
from sshcluster.ssh.command import openssh_version

#: Seconds ``ssh -G`` may take (it reads files and may run ``Match exec`` commands).
SSH_G_TIMEOUT = 10.0

#: What :meth:`ClientSettings.breaks_launch` says of ``ForkAfterAuthentication yes``.
FORK_AFTER_AUTHENTICATION = ("ForkAfterAuthentication yes (ssh would go to the background, "
                             "and the launch would take its sessions for ended)")
#: The hint for a setting of the ssh config that breaks the launch.
BREAKS_LAUNCH_HINT = ("set it to 'no' for this host in the ssh config, or leave it out: the "
                      "launch's ssh reads the same config")

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
    tokens (see :meth:`proxy_argv`); ``raw`` has every key ``ssh -G`` printed;
    ``openssh`` is the version of the ssh that printed them, whose rules apply.
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
    revoked_host_keys: tuple[str, ...]
    no_host_auth_localhost: bool
    address_family: str
    bind_address: str | None
    raw: Mapping[str, tuple[str, ...]]
    #: Settings whose list of files can be read two ways (see :func:`_paths`).
    unclear_paths: tuple[str, ...] = ()
    openssh: tuple[int, int] = (99, 0)
    #: Whether the config or the command line may set HostKeyAlgorithms to a list of its
    #: own, rather than leave it unset or change OpenSSH's default with + or - (ssh asks
    #: for the known key types first only then; ssh -G shows just the resulting list).
    host_key_algorithms_listed: bool = True

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
        for keyword in self.unclear_paths:
            out.append(f"{keyword} {self.get(keyword.lower())} (ssh -G prints its files "
                       "unquoted, and both a path with spaces and its pieces exist, so "
                       "which ssh reads cannot be told)")
        return out

    def breaks_launch(self, *, tunnel: bool = True, script: bool = True) -> list[str]:
        """Settings with which ssh would break the launch while the check's own connection
        works: the reverse tunnel's forward (``tunnel``) or the host's script sent on its
        stdin (``script``: the fast launch) would be lost, or ssh would go to the
        background (which ``ssh -G`` refuses without a command: :func:`client_settings`)."""
        out = [*(["ClearAllForwardings yes (it drops the launch's reverse tunnel, ssh -R)"]
                 if tunnel and self.get("clearallforwardings") == "yes" else []),
               *(["StdinNull yes (the launch sends each host its script on ssh's stdin)"]
                 if script and self.get("stdinnull") == "yes" else [])]
        return out + [FORK_AFTER_AUTHENTICATION] * (self.get("forkafterauthentication")
                                                    == "yes")

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


def _paths(value: str, expand: Callable[[str], str] = str) -> tuple[tuple[str, ...], bool]:
    """A one-line list of files as ``ssh -G`` prints it, and whether that reading is
    unsure. ``ssh -G`` separates the files with spaces and quotes none, so a path with a
    space in it looks like several, and a relative path (which ssh opens relative to the
    current directory) like the rest of the path before it. Words are joined into one
    path where the joined path exists, or where neither it nor the later words exist (a
    file that is missing gives ssh no keys either way; it is where keys are recorded).
    Unsure: a joined path exists and so does one of its pieces, so ssh may read either.
    ``expand`` is what ssh does to a path before it opens it."""
    if not value or value == "none":
        return (), False

    def exists(words: Sequence[str]) -> bool:
        try:
            return os.path.exists(expand(" ".join(words)))
        except (KeyError, ValueError):  # (~nosuchuser: ssh refuses it, said later)
            return False

    words = value.split(" ")
    paths: list[str] = []
    unsure = False
    start = 0
    while start < len(words):
        end = next((j for j in range(len(words), start + 1, -1)
                    if exists(words[start:j])), start + 1)
        # Nothing there yet (a known_hosts file before its first key): a word that is no
        # path of its own (not absolute, not ~, and missing) goes on the path before
        # it, as a space in it, where --accept-new records: ssh -G prints these files
        # expanded, so a relative word is rarer than a space.
        if end == start + 1 and not exists(words[start:end]):
            while end < len(words) and not words[end].startswith(("/", "~")) \
                    and not exists([words[end]]):
                end += 1
        if end > start + 1 and (
                any(exists(words[start:k]) for k in range(start + 1, end))
                or any(exists([w]) for w in words[start + 1:end])):
            unsure = True
        paths.append(" ".join(words[start:end]))
        start = end
    return tuple(p for p in paths if p), unsure


def settings_from(raw: Mapping[str, tuple[str, ...]], host_arg: str, *,
                  version: tuple[int, int] | None = None) -> ClientSettings:
    """:class:`ClientSettings` from parsed ``ssh -G`` output for ``host_arg``, printed by
    OpenSSH ``version`` (by default this machine's ssh)."""
    version = version or openssh_version()

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
    jump = optional("proxyjump")
    tokens = _tokens(host_arg=host_arg, hostname=hostname, port=port, user=user,
                     alias=alias, jump_host=split_hop(jump)[1] if jump else None,
                     version=version)
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
    # (ssh -G prints UserKnownHostsFile expanded, GlobalKnownHostsFile as written: ssh
    # expands its ~ only when it opens the files)
    user_files, unclear_user = _paths(one("userknownhostsfile"))
    global_files, unclear_global = _paths(one("globalknownhostsfile"), tilde_expand)
    unclear = ("UserKnownHostsFile",) * unclear_user + ("GlobalKnownHostsFile",) * unclear_global
    # (RevokedHostKeys is one path before OpenSSH 10.3, spaces and all; a list from 10.3)
    revoked_value = optional("revokedhostkeys")
    revoked, unclear_revoked = (_paths(one("revokedhostkeys")) if version >= (10, 3)
                                else ((revoked_value,) if revoked_value else (), False))
    unclear += ("RevokedHostKeys",) * unclear_revoked
    return ClientSettings(
        host_arg=host_arg, hostname=hostname, port=port, user=user,
        identity_files=identities, certificate_files=certificates,
        identities_only=one("identitiesonly") == "yes", identity_agent=agent,
        user_known_hosts=user_files,
        global_known_hosts=tuple(tilde_expand(p) for p in global_files),
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
        revoked_host_keys=revoked,
        no_host_auth_localhost=one("nohostauthenticationforlocalhost") == "yes",
        address_family=one("addressfamily", "any"),
        bind_address=optional("bindaddress"),
        raw=dict(raw), unclear_paths=unclear, openssh=version,
    )


async def client_settings(destination: str, args: Sequence[str] = (), *,
                          config: str | None = None, ssh: str = "ssh") -> ClientSettings:
    """Ask ``ssh -G [-F config] ARGS destination`` what ssh would do; raise
    :class:`SshConfigError` with ssh's own message if it cannot say."""
    # (-v: ssh names each config file it reads, see _lists_host_key_algorithms)
    argv = [ssh, "-G", "-v", *(["-F", config] if config else []), *args, "--", destination]
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
    stderr = done.stderr.decode(errors="replace").splitlines()
    if done.returncode != 0:
        said = "; ".join(line for line in stderr if line and "Pseudo-terminal" not in line
                         and not line.startswith(("debug", "OpenSSH_")))
        if "Cannot fork into background" in said:  # (ssh -G with -f, and no command)
            raise SshConfigError(f"ssh would use {FORK_AFTER_AUTHENTICATION} for "
                                 f"{destination}", host=destination, hint=BREAKS_LAUNCH_HINT)
        raise SshConfigError(f"ssh cannot use its config for {destination}: "
                             f"{said or f'exit status {done.returncode}'}",
                             host=destination, hint="fix the ssh config line it names")
    files = [line.partition(_READING)[2] for line in stderr if _READING in line]
    applied = {(m.group(1), int(m.group(2))) for line in stderr
               if (m := _APPLYING.match(line))}
    try:
        settings = settings_from(parse_ssh_g(done.stdout.decode(errors="replace")),
                                 destination)
        return replace(settings, host_key_algorithms_listed=(
            _lists_host_key_algorithms(files, args, applied)))
    except (ValueError, KeyError) as e:  # a token or ~user ssh would refuse too
        raise SshConfigError(f"ssh would refuse a path in its config for {destination}: {e}",
                             host=destination, hint="fix that path (IdentityFile, "
                                                    "CertificateFile, GlobalKnownHostsFile) "
                                                    "in the ssh config") from None


_READING = "debug1: Reading configuration data "
#: ssh -v's word on each Host line that matched (Match lines it does not name so).
_APPLYING = re.compile(r"^debug1: (.+) line (\d+): Applying options for ")
_BLOCK = re.compile(r"^\s*(host|match)(?:\s|=)", re.I)
_HOST_KEY_ALGORITHMS = re.compile(
    r'^\s*(?:-o\s*)?"?hostkeyalgorithms"?(?:\s*=\s*|\s+)"?([^\s"]*)', re.I)


def _lists_host_key_algorithms(files: Sequence[str], args: Sequence[str],
                               applied: set[tuple[str, int]] | None = None) -> bool:
    """Whether any config file ssh read, or the command line, may set HostKeyAlgorithms
    for this host to a list of its own: a line that names it with a value not starting
    with + or - (a commented line does not count; a file that cannot be read does).
    Lines under a Host line ssh did not apply (``applied``: file and line of those it
    did) are another host's; under a Match line they count (ssh -v does not say)."""
    texts = list(args)
    for path in files:
        try:
            lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return True
        active = True
        for number, line in enumerate(lines, 1):
            block = _BLOCK.match(line)
            if block:
                active = block.group(1).lower() == "match" or applied is None \
                    or (path, number) in applied
            elif active:
                texts.append(line)
    for text in texts:
        if "hostkeyalgorithms" not in text.lower() or text.lstrip().startswith("#"):
            continue
        m = _HOST_KEY_ALGORITHMS.match(text)
        if not m or not m.group(1).startswith(("+", "-")):
            return True
    return False


# --------------------------------------------------------------------------- tokens


def _passwd() -> pwd.struct_passwd:
    return pwd.getpwuid(os.getuid())


def _tokens(*, host_arg: str, hostname: str, port: int, user: str, alias: str | None,
            jump_host: str | None = None, version: tuple[int, int] = (99, 0),
            ) -> dict[str, str]:
    """ssh's DEFAULT_CLIENT_PERCENT_EXPAND_ARGS for this connection. From OpenSSH 9.6 on
    ``%j`` is the host of ProxyJump's last hop (empty without one), and ``%C`` hashes it
    too (ssh_connection_hash)."""
    pw = _passwd()
    local = socket.gethostname()
    jump = (jump_host or "") if version >= (9, 6) else ""
    tokens = {
        "C": hashlib.sha1(f"{local}{hostname}{port}{user}{jump}".encode()).hexdigest(),
        "L": local.split(".")[0], "i": str(pw.pw_uid), "k": alias or host_arg,
        "l": local, "n": host_arg, "p": str(port), "d": pw.pw_dir, "h": hostname,
        "r": user, "u": pw.pw_name,
    }
    if version >= (9, 6):
        tokens["j"] = jump
    return tokens


def split_hop(hop: str) -> tuple[str | None, str, int | None]:
    """User, host and port of ``[user@]host[:port]`` or ``ssh://[user@]host[:port]``,
    the last hop of a ProxyJump list (``ssh -G`` puts a numeric host in brackets)."""
    hop = hop.rpartition(",")[2].removeprefix("ssh://")
    user, _, hostport = hop.rpartition("@")
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:]+)(?::(\d+))?", hostport)
    if not m:
        return user or None, hostport, None
    host = m.group(1) or m.group(3)
    port = m.group(2) or m.group(4)
    return user or None, host, int(port) if port else None


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


def tilde_expand(path: str) -> str:
    """``path`` with its leading ``~`` expanded as OpenSSH's tilde_expand_filename does:
    ``~`` and ``~/x`` from this user's passwd home (not ``$HOME``), ``~user`` and
    ``~user/x`` from that user's; KeyError for a user who does not exist (ssh refuses
    the path then)."""
    if not path.startswith("~"):
        return path
    user, _, rest = path[1:].partition("/")
    home = pwd.getpwnam(user).pw_dir if user else _passwd().pw_dir
    return home + ("" if home.endswith("/") else "/") + rest.lstrip("/")


def expand_path(path: str, tokens: Mapping[str, str]) -> str:
    """``path`` with ``~`` (see :func:`tilde_expand`) and tokens expanded."""
    return expand_tokens(tilde_expand(path), tokens)


__all__ = [
    "BREAKS_LAUNCH_HINT",
    "FORK_AFTER_AUTHENTICATION",
    "SSH_G_TIMEOUT",
    "ClientSettings",
    "SshConfigError",
    "client_settings",
    "expand_path",
    "expand_tokens",
    "parse_ssh_g",
    "settings_from",
    "split_hop",
    "tilde_expand",
]
