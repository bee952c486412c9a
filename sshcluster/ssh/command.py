"""The ssh command line that both the check and the launch run.

:func:`ssh_command` is the ssh the launch starts its workers with (and the check reruns
for the ``ssh`` step, and push and sync use for their own transfers): it never prompts,
keeps host key checking on and adds the inventory's ``known_hosts`` file to the user's.
"""

from __future__ import annotations

import functools
import re
import subprocess
from typing import Protocol

from sshcluster.errors import RenderError
from sshcluster.inventory import Host, Inventory

#: Seconds ssh waits for the TCP connection before giving up (OpenSSH ConnectTimeout).
CONNECT_TIMEOUT = 10
#: The ssh options of a session that lasts (a lease's), as the launch's (OUR_SSH of
#: ``R/launch/session.R``): no terminal; a host that stops answering for 15 s ends the
#: session; and never the user's ControlMaster, neither becoming one (a lease's ssh
#: would then carry the user's later sessions, and outlive the lease) nor using one
#: (the lease would end with the user's master, and its keepalive would not be its own).
SESSION_OPTIONS = ("-T", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                   "-o", "ControlMaster=no", "-o", "ControlPath=none")


class CommandOptions(Protocol):
    """What :func:`ssh_command` reads of its options
    (:class:`~sshcluster.bootstrap.RenderOptions` has both)."""

    @property
    def connect_timeout(self) -> int: ...

    @property
    def extra_ssh_options(self) -> tuple[str, ...]: ...


def ssh_command(inventory: Inventory, host: Host | None = None,
                options: CommandOptions | None = None, *, known_hosts: bool = True,
                before_8_5: bool | None = None, overrides: bool = True) -> list[str]:
    """Return the ssh command (as argv words, without the destination) used to reach ``host``.

    It never prompts (``BatchMode=yes``), gives up after ``connect_timeout`` seconds and
    keeps host key checking on (``StrictHostKeyChecking=yes``). The inventory's
    ``known_hosts`` file is added to the files the user's ssh config names, never put in
    their place (see :func:`known_hosts_option`; ``known_hosts=False`` leaves it out,
    ``before_8_5`` picks its form, by default for this machine's ssh). It also sets back
    what a config may hold for interactive use (:func:`session_overrides`), unless
    ``overrides`` is False: the rendered file's R adds those itself, for the ssh of the
    machine it runs on.
    """
    timeout = options.connect_timeout if options else CONNECT_TIMEOUT
    words = [
        "ssh",
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={timeout}",
        "-o", "StrictHostKeyChecking=yes",
    ]
    if known_hosts:
        old = openssh_version() < (8, 5) if before_8_5 is None else before_8_5
        words += known_hosts_option(inventory, before_8_5=old)
    for extra in options.extra_ssh_options if options else ():
        words += ["-o", extra]
    if host is not None:
        if host.identity_file:
            words += ["-i", _ssh_path(host.identity_file), "-o", "IdentitiesOnly=yes"]
        if host.ssh_port and host.ssh_port != 22:
            words += ["-p", str(host.ssh_port)]
    if overrides:  # (after the options' own -o, which win over them, as in the R file)
        words += session_overrides()
    return words


def rendered_ssh_command(inventory: Inventory, host: Host | None = None,
                         options: CommandOptions | None = None, *, known_hosts: bool = True
                         ) -> list[str]:
    """:func:`ssh_command` as the rendered file holds it: the known_hosts option in its
    current form (the file's R swaps it for an older ssh's) and without the overrides,
    which the file's R adds for the ssh of the machine it runs on."""
    return ssh_command(inventory, host, options, known_hosts=known_hosts, before_8_5=False,
                       overrides=False)


def known_hosts_option(inventory: Inventory, *, before_8_5: bool) -> list[str]:
    """The ssh option that adds the inventory's ``known_hosts`` file to the user's own
    (nothing without one).

    ssh reads every ``UserKnownHostsFile`` and ``GlobalKnownHostsFile`` and then the keys
    ``KnownHostsCommand`` prints: here that file (nothing if it is missing, as for a
    missing UserKnownHostsFile). OpenSSH before 8.5 has no KnownHostsCommand: there the
    file joins OpenSSH's default global files instead, which still leaves the user's
    own files alone.
    """
    if not inventory.known_hosts:
        return []
    path = _ssh_path(inventory.known_hosts)
    if before_8_5:
        return ["-o", f'GlobalKnownHostsFile=/etc/ssh/ssh_known_hosts '
                      f'/etc/ssh/ssh_known_hosts2 "{path}"']
    # KnownHostsCommand's arguments are split like a shell's words ("..." with \" and
    # \\ escapes), then %-tokens and ${VAR} are expanded in each.
    if "${" in path:
        raise RenderError(f"the known_hosts path {path!r} contains '${{', which ssh "
                          "would expand", hint="rename or link the file")
    quoted = path.replace("\\", "\\\\")
    return ["-o", "KnownHostsCommand=/bin/sh -c 'cat -- \"$0\" 2>/dev/null; exit 0' "
                  f'"{quoted}"']


#: What a user's ssh config may set for interactive use that would break our sessions,
#: set back by our command lines (a command line's -o comes before the config, and ssh
#: keeps the first value), where ssh knows them (OpenSSH 8.7 and later; an older one
#: refuses them, in a config too): StdinNull (our scripts go on ssh's stdin) and
#: ForkAfterAuthentication (ssh would go to the background). ``ssh_overrides()`` in
#: ``R/common.R`` holds the same. (Not ClearAllForwardings: set back, it would bring
#: back the forwards of the user's config that it clears; the check fails a host whose
#: config clears the launch's reverse tunnel.)
SESSION_OVERRIDES_8_7 = ("-o", "StdinNull=no", "-o", "ForkAfterAuthentication=no")


def session_overrides() -> list[str]:
    """:data:`SESSION_OVERRIDES_8_7` where this machine's ssh knows them."""
    return list(SESSION_OVERRIDES_8_7) if openssh_version() >= (8, 7) else []


@functools.lru_cache(maxsize=1)
def openssh_version() -> tuple[int, int]:
    """The version of this machine's OpenSSH client (``ssh -V``), as (major, minor);
    a recent one when it cannot be told."""
    try:
        out = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return (99, 0)
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stderr + out.stdout)
    return (int(m.group(1)), int(m.group(2))) if m else (99, 0)


def _ssh_path(path: str) -> str:
    """Escape a path for ssh's own config parsing: ssh expands ``%`` tokens in these paths."""
    if '"' in path:
        raise RenderError(f"the path {path!r} contains a double quote, which ssh cannot take",
                          hint="rename or link the file to a path without quotes")
    return path.replace("%", "%%")


__all__ = ["CONNECT_TIMEOUT", "SESSION_OPTIONS", "SESSION_OVERRIDES_8_7",
           "CommandOptions", "known_hosts_option", "openssh_version", "rendered_ssh_command",
           "session_overrides", "ssh_command"]
