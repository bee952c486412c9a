"""The workers' locale, as the check sees it.

The launch hands each host the primary's ``LANG`` and ``LC_*`` (or ``LANG`` from the
inventory's ``locale:``), and the host's script (``R/locale.sh``) replaces a locale the
host lacks with ``C.UTF-8`` or ``C``. The check's R starts with the same variables, put
through the same script, so its verdict is the launch's: :func:`launch_locale` is what the
launch sends, :func:`locale_warning` what the check says of a host that lacks it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from sshcluster.check.report import StepResult
from sshcluster.protocol import LOCALE_VARS
from sshcluster.ssh.environment import primary_environ

# (only what a locale name holds: these reach every host's login shell)
_NAME = re.compile(r"^[A-Za-z0-9_.@-]+\Z")

#: What R says at start-up when it cannot set a locale category.
_R_SAYS = "Setting LC_"


def launch_locale(locale: str | None, environ: Mapping[str, str] | None = None) -> list[str]:
    """``NAME=VALUE`` for the workers' locale, as ``locale_assignments()`` in
    ``R/common.R`` makes them: the inventory's ``locale`` in ``LANG``, every other
    variable emptied (one ssh sent, ``SendEnv LC_*``, would else win over it), or,
    without one, the primary's own variables (``environ``, the primary's by default:
    :func:`sshcluster.ssh.environment.primary_environ`)."""
    if locale is not None:
        return [f"LANG={locale}", *(f"{name}=" for name in LOCALE_VARS if name != "LANG")]
    env = primary_environ() if environ is None else environ
    return [f"{name}={env[name]}" for name in LOCALE_VARS
            if env.get(name) and _NAME.match(env[name])]


def locale_hint(host: str, names: list[str], launch: str = "fast") -> str:
    """How to give ``host`` the locale(s) ``names``. (For the classic launch, whose R
    starts in what ssh sends before it takes ``locale:``, what R could not set is the
    primary's locale, and that key does not help.)"""
    which = ", ".join(dict.fromkeys(names)) if names and launch != "classic" else \
        "the primary's locale"
    return (f"generate {which} on {host} (locale-gen, or localedef), or start R on the "
            "primary with LANG set to a locale every host has (LANG=C.UTF-8)" + (
                ", or set 'locale:' in the inventory" if launch != "classic" else ""))


def locale_warning(facts_lines: list[str], other: list[str], host: str) -> StepResult | None:
    """A warning when the host lacks the workers' locale (``LOCALE=NAME VALUE STAND-IN``
    lines of ``R/locale.sh``), or when R still warned that it could not set one; None
    when neither happened."""
    changed = [line.split() for line in facts_lines if len(line.split()) == 3]
    if changed:
        said = ", ".join(f"{name}={value}" for name, value, _ in changed)
        return StepResult(
            "warning", f"{host} has no locale {said}: its workers run in {changed[0][2]}",
            hint=locale_hint(host, [value for _, value, _ in changed]))
    warned = [line.strip() for line in other if _R_SAYS in line]
    if warned:
        return StepResult("warning", f"R cannot set the workers' locale: {warned[0]}",
                          hint=locale_hint(host, []))
    return None


def r_locale_error(other: list[str]) -> bool:
    """Whether R's last words are that it could not set a locale."""
    return any(_R_SAYS in line for line in other)


__all__ = ["launch_locale", "locale_hint", "locale_warning", "r_locale_error"]
