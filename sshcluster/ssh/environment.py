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
from collections.abc import Mapping
from fnmatch import fnmatchcase

from sshcluster.ssh.config import ClientSettings


def sent_environment(settings: ClientSettings, environ: Mapping[str, str] | None = None
                     ) -> dict[str, str]:
    """The variables ssh with ``settings`` sends from ``environ`` (this process's by
    default): ``SendEnv``'s in the environment's order, then ``SetEnv``'s, a later value
    of a name replacing an earlier one as the server's does. A value that is not UTF-8
    text is left out (asyncssh sends text)."""
    env = os.environ if environ is None else environ
    patterns = [p for value in settings.raw.get("sendenv", ()) for p in value.split()]
    out = {name: value for name, value in env.items()
           if any(fnmatchcase(name, p) for p in patterns)}
    for pair in settings.raw.get("setenv", ()):
        name, sep, value = pair.partition("=")
        if sep and name:
            out[name] = value
    return {k: v for k, v in out.items() if _text(k) and _text(v)}


def _text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # (os.environ's surrogate escapes)
        return False
    return True


__all__ = ["sent_environment"]
