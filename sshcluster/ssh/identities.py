"""The keys ssh offers a server, and in which order, for the check to offer the same.

OpenSSH (``sshconnect2.c``, ``pubkey_prepare``) offers, under ``BatchMode``: first the
keys the agent holds that an identity file names (the same public key), in the agent's
order (each signed by the agent, never asked for a passphrase); then, unless
``IdentitiesOnly``, the agent's other keys, in its order. Then the identity files the
agent does not hold, in ``ssh -G``'s order: those it can read
without a passphrase. A file that is missing, needs a passphrase (which ``BatchMode``
cannot ask for) or is only a public key is passed over.

asyncssh would do otherwise: it offers every agent key and then the files again, and it
takes no keys at all (``client_keys=[]``) to mean "load ``$HOME/.ssh/id_*``". So
:func:`key_offer` builds the whole list itself and the check hands asyncssh exactly that
list, and no agent (see :meth:`~sshcluster.ssh.connect.Connector.options`).
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from sshcluster.ssh.config import ClientSettings, tilde_expand

#: The identity files ssh tries when none is given (``ssh -G`` lists them then).
DEFAULT_NAMES = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk",
                 "id_xmss", "id_dsa")
_PASSPHRASE = "has a passphrase, which BatchMode cannot ask for, and no agent holds it"
_PUBLIC_ONLY = "is a public key, and no agent holds its private key"
MISSING = "does not exist"


@dataclass(frozen=True)
class KeyOffer:
    """What ssh would offer: ``keys`` in ssh's order (what the check hands asyncssh),
    ``offered`` a name for each (the identity file, or the agent's comment),
    ``unusable`` the identity files ssh passes over and why."""

    keys: tuple[asyncssh.SSHKeyPair, ...] = ()
    offered: tuple[str, ...] = ()
    unusable: tuple[tuple[str, str], ...] = ()

    def passed_over(self) -> str:
        """The identity files ssh passes over and why, for a message: ssh's missing
        default files (``~/.ssh/id_*``) are summed up in a few words."""
        missing_defaults = [p for p, why in self.unusable if why == MISSING and _default(p)]
        parts = [f"{p} {why}" for p, why in self.unusable
                 if not (why == MISSING and _default(p))]
        if len(missing_defaults) == 1:
            parts.append(f"{missing_defaults[0]} {MISSING}")
        elif missing_defaults:
            parts.append("the other default key files (~/.ssh/id_*) do not exist"
                         if any(map(_default, self.offered)) else
                         "no default key file (~/.ssh/id_*) exists")
        return "; ".join(parts)

    def described(self) -> str:
        """What was offered and what was passed over, for a message."""
        tried = ", ".join(self.offered) if self.offered else "no key"
        skipped = self.passed_over()
        return f"offered {tried}" + (f"; passed over: {skipped}" if skipped else "")

    def needs_agent(self) -> tuple[str, ...]:
        """The identity files that would be used if the agent held them."""
        return tuple(p for p, why in self.unusable if why in (_PASSPHRASE, _PUBLIC_ONLY))


@dataclass
class KeyFiles:
    """Identity files read so far (each file once for a whole check run)."""

    _pairs: dict[str, list[asyncssh.SSHKeyPair] | str] = field(default_factory=dict)

    def pairs(self, path: str, certificates: Sequence[str]) -> list[asyncssh.SSHKeyPair] | str:
        """The key pairs of the identity file ``path`` (with their certificates) that
        ssh can use without the agent, or why there are none."""
        cache = f"{path}\0{':'.join(certificates)}"
        if cache not in self._pairs:
            self._pairs[cache] = _load(path, list(certificates))
        return self._pairs[cache]


def _load(path: str, certificates: list[str]) -> list[asyncssh.SSHKeyPair] | str:
    if not Path(path).exists():
        return MISSING
    try:
        pairs = list(asyncssh.load_keypairs([path], certlist=certificates,
                                            ignore_encrypted=True))
    except (OSError, ValueError, asyncssh.KeyImportError) as e:
        with contextlib.suppress(OSError, ValueError, ArithmeticError,
                                 asyncssh.KeyImportError):
            asyncssh.read_public_key(path)
            return _PUBLIC_ONLY  # (ssh signs with the agent's copy of it, if any)
        said = str(e)
        return (_PASSPHRASE if "assphrase" in said or "bcrypt" in said or "ncrypt" in said
                else f"cannot be read: {said}")
    return pairs or _PASSPHRASE


async def key_offer(settings: ClientSettings, files: KeyFiles, opened: list[Any],
                    ) -> KeyOffer:
    """The keys ssh with ``settings`` offers, in its order (see the module). An agent
    connection it opens is added to ``opened`` (its keys sign through it), for its owner
    to close."""
    if settings.get("pubkeyauthentication", "true") == "false":
        return KeyOffer()
    certificates = [c for c in settings.certificate_files if Path(c).is_file()]
    paths = list(dict.fromkeys(settings.identity_files))
    loaded = {p: files.pairs(p, certificates) for p in paths}
    taken: set[str] = set()
    keys: list[asyncssh.SSHKeyPair] = []
    offered: list[str] = []
    agent_keys = await _agent_keys(settings.identity_agent, opened)
    if agent_keys:
        # (OpenSSH's pubkey_prepare: the agent's keys that an identity file names first,
        # then, unless IdentitiesOnly, the agent's others; each group in the agent's order)
        public = {p: identity_public_key(p) for p in paths}
        others: list[tuple[asyncssh.SSHKeyPair, str]] = []
        for key in agent_keys:
            path = next((p for p in paths if p not in taken and public[p] is not None
                         and public[p] == key.public_data), None)
            if path is not None:
                taken.add(path)
                keys.append(key)
                offered.append(path)
            elif not settings.identities_only:
                others.append((key, f"the agent's {_comment(key)}"))
        keys += [key for key, _ in others]
        offered += [said for _, said in others]
    unusable: list[tuple[str, str]] = []
    for path in paths:
        if path in taken:
            continue
        got = loaded[path]
        if isinstance(got, str):
            unusable.append((path, got))
        else:
            keys += got
            offered.append(path)
    return KeyOffer(tuple(keys), tuple(offered), tuple(unusable))


async def _agent_keys(path: str | None, opened: list[Any]) -> list[asyncssh.SSHKeyPair]:
    """The agent's keys, in its order (none without an agent, as for ssh)."""
    if not path:
        return []
    try:
        agent = await asyncssh.connect_agent(path)
    except (OSError, asyncssh.Error):
        return []
    if agent is None:
        return []
    opened.append(agent)
    try:
        return list(await agent.get_keys())
    except (OSError, asyncssh.Error, ValueError):
        return []


def _comment(key: asyncssh.SSHKeyPair) -> str:
    comment = key.get_comment()
    return f"key {comment}" if comment else f"{key.get_algorithm()} key"


def _default(path: str) -> bool:
    p = Path(path)
    return p.name in DEFAULT_NAMES and str(p.parent) == tilde_expand("~/.ssh")


def identity_public_key(path: str) -> bytes | None:
    """The public key an IdentityFile stands for, as ssh finds it (sshkey_load_public):
    the file itself when it is a public key (IdentityFile ~/.ssh/x.pub, as password
    managers' agents are set up), else FILE.pub, else the public key an OpenSSH private
    key file holds unencrypted in its head (a key with a passphrase, loaded in the agent,
    whose .pub is gone)."""
    for candidate in (path, path + ".pub"):
        with contextlib.suppress(OSError, ValueError, ArithmeticError,
                                 asyncssh.KeyImportError):
            return bytes(asyncssh.read_public_key(candidate).public_data)
    try:
        text = Path(path).read_text(encoding="ascii", errors="strict")[:65536]
    except (OSError, ValueError):
        return None
    found = re.search(r"-----BEGIN OPENSSH PRIVATE KEY-----(.*?)-----END OPENSSH PRIVATE "
                      r"KEY-----", text, re.S)
    try:
        blob = base64.b64decode("".join(found.group(1).split()) if found else "",
                                validate=True)
        magic = b"openssh-key-v1\0"
        if not blob.startswith(magic):
            return None
        at = len(magic)
        for _ in range(3):  # cipher, kdf, kdf options
            at += 4 + int.from_bytes(blob[at:at + 4], "big")
        if int.from_bytes(blob[at:at + 4], "big") < 1:  # (how many keys)
            return None
        size = int.from_bytes(blob[at + 4:at + 8], "big")
        public = blob[at + 8:at + 8 + size]
        kind = public[4:4 + int.from_bytes(public[:4], "big")].decode("ascii")
        key = asyncssh.import_public_key(f"{kind} {base64.b64encode(public).decode()}")
        return bytes(key.public_data)
    except (ValueError, ArithmeticError, asyncssh.KeyImportError):  # (a broken file)
        return None


__all__ = ["DEFAULT_NAMES", "MISSING", "KeyFiles", "KeyOffer", "identity_public_key",
           "key_offer"]
