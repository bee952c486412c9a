"""``sshcluster init``: a first inventory, written for the user.

The hosts come from a list with ranges (``--hosts a,b,node[01-16]``), from the ``Host``
entries of an OpenSSH client config (``~/.ssh/config``: every alias without wildcards,
the ones ``Include`` pulls in too), or both. Every host gets ``ncore: auto`` (the check
detects the core count) and ``primary: auto`` (the check detects the address the
workers see); the file says how to check it and render it. An alias from the ssh config
is written as the alias, so ssh applies its config at launch as it does now; the
comment beside it says what ``ssh -G`` makes of it.

    from sshcluster.init import expand_hosts, write_inventory

    write_inventory("hosts.yaml", expand_hosts("node[01-04]"), user="alice")
"""

from __future__ import annotations

import asyncio
import fnmatch
import glob
import json
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sshcluster.errors import InventoryError, OutputExistsError
from sshcluster.inventory import Inventory, parse_inventory
from sshcluster.ssh.config import SshConfigError, client_settings
from sshcluster.yamlfile import Reader

#: The most hosts one ``--hosts`` may expand to (far above any cluster, far below what
#: would exhaust memory: ``node[1-999999999]`` is a typo, not a cluster).
MAX_HOSTS = 10_000
#: How deep ``Include`` directives are followed (OpenSSH's own limit).
MAX_INCLUDE_DEPTH = 16

_RANGE = re.compile(r"\[([^\[\]]*)\]")
_ITEM = re.compile(r"^(\d{1,9})(?:-(\d{1,9}))?\Z")
#: Ranges in one name at most (node[1-4]-gpu[0-1] has two).
MAX_RANGES = 8


def expand_hosts(spec: str) -> list[str]:
    """The host names of ``spec``: comma-separated names, each with any number of
    ``[01-16]`` ranges (``[1-3,7]`` too; zero-padded as the range's first number is),
    in order, each name once. Raises :class:`InventoryError` naming ``--hosts``."""
    names: list[str] = []
    for part in _split_top(spec):
        if part.count("[") > MAX_RANGES:
            raise _bad(f"{part.strip()[:40]!r} has more than {MAX_RANGES} ranges")
        names += _expand(part.strip())
        if len(names) > MAX_HOSTS:
            raise _bad(f"expands to more than {MAX_HOSTS:,} hosts")
    reader = Reader("--hosts", Path.cwd())
    unique = list(dict.fromkeys(n for n in names if n))
    if not unique:
        raise _bad("no host names given", hint="e.g. --hosts node1,node2 or "
                                               "--hosts 'node[01-16]'")
    return [reader.hostname(name, "host", None) for name in unique]


def _split_top(spec: str) -> list[str]:
    """``spec`` split at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    parts.append(spec[start:])
    return parts


def _expand(name: str) -> list[str]:
    match = _RANGE.search(name)
    if match is None:
        if "[" in name or "]" in name:
            raise _bad(f"{name!r} has an unbalanced bracket")
        return [name]
    numbers: list[str] = []
    for item in match.group(1).split(","):
        m = _ITEM.match(item.strip())
        if m is None:
            raise _bad(f"[{match.group(1)[:40]}] in {name[:40]!r} is not a range such as "
                       "[01-16] (numbers of at most 9 digits)")
        first, last = m.group(1), m.group(2) or m.group(1)
        if int(last) < int(first):
            raise _bad(f"[{match.group(1)}] in {name!r} counts down")
        if int(last) - int(first) >= MAX_HOSTS:
            raise _bad(f"[{match.group(1)}] expands to more than {MAX_HOSTS:,} hosts")
        width = len(first) if first.startswith("0") else 0
        numbers += [str(n).zfill(width) for n in range(int(first), int(last) + 1)]
    head, tail = name[:match.start()], name[match.end():]
    rest = _expand(tail)
    if len(numbers) * len(rest) > MAX_HOSTS:
        raise _bad(f"{name!r} expands to more than {MAX_HOSTS:,} hosts")
    return [f"{head}{n}{r}" for n in numbers for r in rest]


def _bad(problem: str, hint: str | None = None) -> InventoryError:
    return InventoryError(problem, path="--hosts", hint=hint)


def ssh_config_aliases(path: str | os.PathLike[str] | None = None) -> list[str]:
    """The ``Host`` aliases of an OpenSSH client config (default ``~/.ssh/config``) and
    the files it ``Include``s, in order: every name without a wildcard (``*``, ``?``)
    or negation (``!``), each once. A missing file has none."""
    start = Path(path) if path is not None else Path.home() / ".ssh" / "config"
    aliases: list[str] = []
    _read_config(start, aliases, 0)
    return list(dict.fromkeys(aliases))


def _read_config(path: Path, aliases: list[str], depth: int) -> None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        words = line.strip().replace("=", " ", 1).split(None, 1)
        if len(words) != 2 or words[0].startswith("#"):
            continue
        keyword, rest = words[0].lower(), words[1]
        try:
            values = shlex.split(rest, comments=True)
        except ValueError:  # an unbalanced quote: ssh refuses the file, and so do we
            raise InventoryError(f"cannot read the line {line.strip()!r}", path=str(path),
                                 hint="check it with 'ssh -G HOST'") from None
        if keyword == "host":
            aliases += [v for v in values if not set(v) & set("*?!")]
        elif keyword == "include" and depth < MAX_INCLUDE_DEPTH:
            for pattern in values:  # relative to ~/.ssh, as ssh reads a user's config
                full = os.path.join(Path.home() / ".ssh", os.path.expanduser(pattern))
                for found in sorted(glob.glob(full)):
                    _read_config(Path(found), aliases, depth + 1)


async def _describe(aliases: Sequence[str], config: str | None) -> dict[str, str]:
    """What ``ssh -G`` makes of each alias: ``user@hostname`` (and the port)."""
    async def one(alias: str) -> tuple[str, str]:
        try:
            s = await client_settings(alias, config=config)
        except SshConfigError as e:
            return alias, e.message
        port = f" port {s.port}" if s.port != 22 else ""
        return alias, f"{s.user}@{s.hostname}{port}"

    return dict(await asyncio.gather(*(one(a) for a in aliases)))


def inventory_text(hosts: Sequence[str], *, user: str | None = None,
                   identity_file: str | None = None,
                   comments: dict[str, str] | None = None) -> str:
    """The inventory YAML for ``hosts``: ``primary: auto``, ``ncore: auto`` each, with
    ``user`` and ``identity_file`` as defaults when given; ``comments`` per host."""
    lines = [
        "# sshcluster inventory, written by 'sshcluster init'.",
        "# Check it:   sshcluster check hosts.yaml",
        "# Use it:     sshcluster render hosts.yaml --check -o cluster.R",
        "#             then, in R: source(\"cluster.R\")",
        "# Every field: sshcluster example",
        "",
        "primary: auto            # this machine as the workers see it; the check detects it",
        "",
    ]
    if user or identity_file:
        lines.append("defaults:")
        if user:
            lines.append(f"  user: {json.dumps(user)}")
        if identity_file:
            lines.append(f"  identity_file: {json.dumps(identity_file)}")
        lines.append("")
    lines.append("hosts:                    # ncore: auto: the check counts each host's cores")
    for host in hosts:
        note = (comments or {}).get(host)
        lines.append(f"  - host: {json.dumps(host)}" + (f"   # {note}" if note else ""))
        lines.append("    ncore: auto")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Written:
    """What :func:`write_inventory` wrote: the ``text``, and the ``inventory`` as
    :func:`~sshcluster.inventory.load_inventory` reads it back."""

    text: str
    inventory: Inventory


def write_inventory(path: str | os.PathLike[str], hosts: Sequence[str] = (), *,
                    from_ssh_config: bool = False, ssh_config: str | None = None,
                    match: str | None = None, user: str | None = None,
                    identity_file: str | None = None) -> Written:
    """Write a new inventory to ``path`` for ``hosts`` and, with ``from_ssh_config``, the
    aliases of ``ssh_config`` (default ``~/.ssh/config``) that match the glob ``match``.
    An existing file is never replaced (:class:`OutputExistsError`); no host at all is an
    :class:`InventoryError`. ``path`` ``-``: nothing is written (the caller prints it)."""
    names = list(hosts)
    comments: dict[str, str] = {}
    if from_ssh_config:
        aliases = [a for a in ssh_config_aliases(ssh_config)
                   if match is None or fnmatch.fnmatchcase(a, match)]
        if not aliases:
            where = ssh_config or "~/.ssh/config"
            raise InventoryError(f"no Host alias{' matching ' + repr(match) if match else ''}"
                                 " without wildcards", path=where,
                                 hint="add 'Host NAME' entries, or give --hosts")
        comments = {a: f"ssh -G: {d}" for a, d in
                    asyncio.run(_describe(aliases, ssh_config)).items()}
        names += [a for a in aliases if a not in names]
    if not names:
        raise InventoryError("no hosts to write", path=str(path),
                             hint="give --hosts a,b,'node[01-16]' or --from-ssh-config")
    text = inventory_text(names, user=user, identity_file=identity_file, comments=comments)
    try:
        written = Written(text, parse_inventory(text, None if str(path) == "-" else str(path)))
    except InventoryError as e:  # a --user or --identity-file no inventory can hold
        raise InventoryError(e.problem, path="sshcluster init", field=e.field,
                             hint=e.hint) from None
    if str(path) == "-":
        return written
    try:
        with open(path, "x", encoding="utf-8") as f:  # "x": never replace a file
            f.write(text)
    except FileExistsError:
        raise OutputExistsError(f"{os.fspath(path)} exists; not replaced", path=str(path),
                                hint="remove it first, or name another file") from None
    except OSError as e:
        raise InventoryError(f"cannot be written: {e.strerror or e}",
                             path=str(path)) from None
    return written


def example_inventory() -> str:
    """The documented example inventory (every field, with comments), as shipped in the
    package: what ``sshcluster example`` prints."""
    return resources.files("sshcluster").joinpath("examples").joinpath(
        "hosts.example.yaml").read_text(encoding="utf-8")


__all__ = ["MAX_HOSTS", "Written", "example_inventory", "expand_hosts", "inventory_text",
           "ssh_config_aliases", "write_inventory"]
