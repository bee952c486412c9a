"""What OpenSSH hands a server of the client's environment: each variable a ``SendEnv``
pattern names, then each ``SetEnv`` pair (``clientloop.c``), in ``env`` requests that the
server takes where its ``AcceptEnv`` allows (Debian's, Ubuntu's and Red Hat's sshd
accept ``LANG`` and ``LC_*``, and their ssh sends them).

The launch's ssh sends these, so the check's own session (asyncssh, which reads no ssh
config) sends the same: a classic launch's R starts in the primary's ``LANG``, and the
check's must too, or it would miss that a host lacks that locale.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from sshcluster.ssh.config import ClientSettings

#: What Python (PEP 538) puts in LC_CTYPE, in its own environment, when it starts in the C
#: locale: its children get it, R (the primary of the launch) does not.
_COERCED = ("C.UTF-8", "C.utf8", "UTF-8")


def primary_environ() -> dict[str, str]:
    """This process's environment as the user's shell gave it, which the primary's R
    gets too: not the ``LC_CTYPE`` Python set when it started in the C locale (one of
    those values, which it writes over the user's LC_CTYPE too). Where ``/proc`` shows
    the environment this process started with, LC_CTYPE is taken from there (or left
    out); elsewhere it is left out beside an empty or C ``LANG`` and no ``LC_ALL``."""
    env = dict(os.environ)
    if env.get("LC_CTYPE") not in _COERCED or env.get("LC_ALL"):
        return env
    start = _start_environ()
    if start is not None:
        if "LC_CTYPE" in start:
            env["LC_CTYPE"] = start["LC_CTYPE"]
        else:
            del env["LC_CTYPE"]
    elif env.get("LANG", "") in ("", "C", "POSIX"):
        del env["LC_CTYPE"]
    return env


def _start_environ() -> dict[str, str] | None:
    """The environment this process started with (None where it cannot be read)."""
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return None
    pairs = (v.decode("utf-8", "surrogateescape").partition("=") for v in raw.split(b"\0"))
    return {k: v for k, sep, v in pairs if sep}


def sent_environment(settings: ClientSettings, environ: Mapping[str, str] | None = None
                     ) -> dict[str, str]:
    """The variables ssh with ``settings`` sends from ``environ`` (by default the
    primary's: :func:`primary_environ`): ``SendEnv``'s in the environment's order, then
    ``SetEnv``'s, a later value of a name replacing an earlier one as the server's does.
    A value that is not UTF-8 text is left out (asyncssh sends text)."""
    if environ is None:
        environ = primary_environ()
    patterns = [_pattern(p) for value in settings.raw.get("sendenv", ())
                for p in value.split()]
    out = {name: value for name, value in environ.items()
           if any(p.fullmatch(name) for p in patterns)}
    for pair in settings.raw.get("setenv", ()):
        name, sep, value = pair.partition("=")
        if sep and name:
            out[name] = value
    return {k: v for k, v in out.items() if _text(k) and _text(v)}


def _pattern(pattern: str) -> re.Pattern[str]:
    """OpenSSH's ``match_pattern``: ``*`` and ``?``, nothing else special."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c)
                              for c in pattern), re.DOTALL)


def _text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # (os.environ's surrogate escapes)
        return False
    return True


__all__ = ["primary_environ", "sent_environment"]
