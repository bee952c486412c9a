"""One short shell script run on one host over ssh, as every job command needs it.

The script reaches the host's login shell the way the launch's does (``READ_SCRIPT``:
read from the session's stdin up to the end-of-script line, then run by ``sh``), so
it means the same under sh, bash, csh, tcsh and fish. Values reach it only as
``NAME='quoted'`` lines in front of it (:func:`settings`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping

from sshcluster.bootstrap import END_OF_SCRIPT, READ_SCRIPT
from sshcluster.errors import HostError
from sshcluster.inventory import Host, Inventory
from sshcluster.quoting import shell_quote
from sshcluster.ssh.command import ssh_command

#: Seconds a short remote command may take (connection included).
REMOTE_TIMEOUT = 30.0


def settings(values: Mapping[str, str]) -> str:
    """``NAME='value'`` lines for the front of a remote script."""
    return "".join(f"{k}={shell_quote(v)}\n" for k, v in values.items())


def dir_word(path: str) -> str:
    """A directory of the inventory (``/abs``, ``~/rel`` or relative to the login
    directory) as one shell word for the host's sh: ``~`` is the host's ``$HOME``."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shell_quote(path[2:])
    return shell_quote(path)


def argv(inventory: Inventory, host: Host) -> list[str]:
    """The ssh command line that runs a script sent on stdin on ``host``."""
    dest = ["-l", host.user, host.host] if host.user else [host.host]
    return [*ssh_command(inventory, host), "-T", *dest, f"exec sh -c {shell_quote(READ_SCRIPT)}"]


def script_input(script: str, values: Mapping[str, str] | None = None) -> bytes:
    """What a session reads: the settings, the script, the end-of-script line."""
    return (settings(values or {}) + script + "\n" + END_OF_SCRIPT + "\n").encode()


def run_script(inventory: Inventory, host: Host, script: str,
               values: Mapping[str, str] | None = None, *, what: str,
               timeout: float = REMOTE_TIMEOUT, data: bytes = b"") -> bytes:
    """Run ``script`` on ``host``; return its stdout. ``data`` follows the script on
    stdin. A failure (ssh's or the script's: a non-zero status) raises
    :class:`HostError` with the last line it printed on stderr; ``what`` names the
    step in messages."""
    try:
        done = subprocess.run(argv(inventory, host), input=script_input(script, values) + data,
                              capture_output=True, timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise HostError(f"{host.label}: no answer to {what} within {timeout:g} s",
                        host=host.label, check=what) from None
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        why = said[-1] if said else f"exit status {done.returncode}"
        raise HostError(f"{host.label}: {what} failed: {why}", host=host.label, check=what)
    return done.stdout
