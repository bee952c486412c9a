"""What a failed step tells the user: the inventory line to blame, the ssh command that
repeats what the check did, what to look at when a step ran out of time.

A failed step names the inventory field behind it where one is to blame (a wrong
``user:`` makes ``auth`` fail, a wrong ``ssh_port:`` makes ``connect`` fail) and the line
that sets it, which may be in ``defaults:``. A field the inventory does not set is blamed
on the host's own line, where it would go.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sshcluster.check.report import StepResult
from sshcluster.inventory import Host
from sshcluster.quoting import shell_join
from sshcluster.ssh.config import ClientSettings, tilde_expand
from sshcluster.ssh.identities import KeyOffer

#: Hints for a step still running at the deadline.
TIMEOUT_HINTS = {
    "resolve": "ssh -G did not finish: a Match exec command in the ssh config may hang",
    "connect": "the host is down, or a firewall drops packets to its ssh port",
    "hostkey": "sshd accepted the connection but did not finish the handshake",
    "auth": "sshd is slow to authenticate (DNS lookups by sshd? set UseDNS no)",
}
#: The hint for ``resolve`` cut off after ssh -G answered: in the name lookup.
DNS_HINT = "the name server did not answer (check /etc/resolv.conf, or use the address)"

#: The inventory fields a failed step may be due to, the first one set being blamed.
BLAME: dict[str, tuple[str, ...]] = {
    "resolve": ("host",),
    "connect": ("ssh_port", "host"),
    "auth": ("user", "identity_file"),
    "rscript": ("rscript",),
    "cores": ("ncore",),
}


def blame(step: str, host: Host, result: StepResult) -> StepResult:
    """``result`` with the inventory line and field to change, if it failed and one is
    to blame (a field the step itself named, a top-level one such as ``workdir``, is
    kept)."""
    fields = BLAME.get(step)
    if result.status != "failed" or not fields or result.field:  # (the step knows)
        return result
    for name in fields:
        line = host.line_of(name)
        if line is not None:
            return replace(result, line=line, field=name)
    return replace(result, line=host.line, field=fields[0]) if host.line else result


def ssh_test_command(host: Host, settings: ClientSettings) -> str:
    """The ``ssh`` command line that logs in as the check did: its user, the inventory's
    identity file (alone, as the launch offers it), its port, the inventory's host name
    (so the ssh config applies as it did)."""
    words = ["ssh", "-o", "BatchMode=yes", "-l", settings.user]
    if host.identity_file:
        words += ["-i", host.identity_file, "-o", "IdentitiesOnly=yes"]
    if settings.port != 22:
        words += ["-p", str(settings.port)]
    return shell_join([*words, host.host, "true"])


def auth_hint(host: Host, settings: ClientSettings, path: str | None) -> str:
    """What to do when ``auth`` was refused: authorize the key, or fix the ``user:`` (or
    ``identity_file:``) line; and the command that repeats the login."""
    inventory = path or "the inventory"
    line = host.line_of("user")
    if line is not None:
        fix = f"or fix 'user: {host.user}' on line {line} of {inventory}"
    else:
        fix = (f"or set 'user:' for {host.label} (line {host.line} of {inventory}) if "
               f"{settings.user} is not the login there")
    key = host.line_of("identity_file")
    if key is not None:
        fix += f"; the key is 'identity_file:' on line {key}"
    return (f"put the public key in ~{settings.user}/.ssh/authorized_keys on {host.label} "
            f"{fix}; a key with a passphrase must be in the agent; test with "
            f"{ssh_test_command(host, settings)}")


def missing_identity(host: Host) -> str | None:
    """The inventory's ``identity_file`` when it does not exist: ssh (``-i``) then
    warns, and offers its default keys (``~/.ssh/id_*``) in its place."""
    if not host.identity_file:
        return None
    try:
        there = Path(tilde_expand(host.identity_file)).exists()
    except (KeyError, ValueError):  # (~nosuchuser: ssh -G refused it at resolve)
        there = False
    return None if there else host.identity_file


def auth_refused(host: Host, settings: ClientSettings, offer: KeyOffer, reason: str,
                 path: str | None) -> StepResult:
    """``auth`` refused: which keys ssh offered and which it passed over, and why; the
    hint names the key to add to the agent and the ``identity_file:`` line to fix when
    the inventory's key is the one ssh could not use."""
    why = "" if reason.lower().startswith("permission denied") else f"{reason}; "
    missing = missing_identity(host)
    if missing:
        why += (f"identity_file {missing} does not exist, so ssh offers its default keys "
                "instead; ")
    who = f"{settings.user}@{settings.hostname}"
    if offer.keys:
        detail = f"permission denied for {who} ({why}{offer.described()})"
    else:
        detail = (f"permission denied for {who}: ssh has no key it can offer ({why}"
                  f"{offer.passed_over() or 'no identity file, no agent key'})")
    ours = None if missing or not host.identity_file else tilde_expand(host.identity_file)
    line = host.line_of("identity_file")
    inventory = path or "the inventory"
    fix = (f"fix 'identity_file: {host.identity_file}' on line {line} of {inventory}"
           if line is not None else
           f"fix identity_file: for {host.label} in {inventory}")
    agent = offer.needs_agent()
    blamed = bool(missing) or (ours is not None and any(p == ours for p, _ in offer.unusable))
    if agent:
        hint = (f"add the key to the ssh agent (ssh-add {shell_join(list(agent))}"
                "), whose copy the launch's ssh then uses"
                + (f", or {fix}" if blamed else ""))
    elif blamed:
        hint = f"{fix} (ssh offers its default keys in its place)" if missing else fix
    else:
        return StepResult("failed", detail, hint=auth_hint(host, settings, path))
    hint += f"; test with {ssh_test_command(host, settings)}"
    if blamed and line is not None:
        return StepResult("failed", detail, hint=hint, line=line, field="identity_file")
    return StepResult("failed", detail, hint=hint)


__all__ = ["BLAME", "DNS_HINT", "TIMEOUT_HINTS", "auth_hint", "auth_refused", "blame",
           "missing_identity", "ssh_test_command"]
