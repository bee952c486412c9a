"""The inventory: which hosts, which users, how many cores, and how the workers reach the primary.

This is the edge of the program: :func:`load_inventory` reads a YAML file, checks every
field once and returns frozen dataclasses; everything past it trusts its types. Every
mistake raises :class:`~sshcluster.errors.InventoryError` naming the file, the line and
the field. ``sshcluster example`` prints the documented format (``hosts.example.yaml``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sshcluster.containers.spec import Container, container_from, read_container
from sshcluster.requirements import (
    PACKAGE_MODES,
    Constraint,
    PackageMode,
    Packages,
    read_package_settings,
    read_r_packages,
)
from sshcluster.yamlfile import Map, Reader, Seq, describe, join_field, load_yaml, read_text

#: ``ncore: auto`` — the core count is detected by ``sshcluster check``.
AUTO = "auto"

#: How the bootstrap starts the workers: ``fast`` (one ssh per host, all of its workers
#: at once) or ``classic`` (``parallel::makeCluster``, one ssh and one wait per worker).
Launch = Literal["fast", "classic"]
LAUNCHES: tuple[Launch, ...] = ("fast", "classic")
#: How the workers reach the primary: ``reverse`` (through an ssh reverse tunnel to
#: 127.0.0.1 on their own host: authenticated and encrypted by ssh; the fast launch's
#: default) or ``none`` (directly, at ``primary.host``: cleartext; the classic launch's).
Tunnel = Literal["none", "reverse"]
TUNNELS: tuple[Tunnel, ...] = ("none", "reverse")
#: Whether a worker must be able to log in to the primary with ssh: ``optional`` (the
#: default: no launch needs it, so the check only warns) or ``required``.
ReverseSsh = Literal["optional", "required"]
REVERSE_SSH: tuple[ReverseSsh, ...] = ("optional", "required")
#: What the bootstrap registers the cluster with, besides ``parallelCluster``.
Register = Literal["future", "doparallel"]
REGISTERS: tuple[Register, ...] = ("future", "doparallel")
#: How ``push`` reaches the hosts: ``direct`` (the primary copies to each host, in
#: parallel; the default) or ``chain`` / ``tree`` (the hosts can ssh to each other: the
#: primary sends one stream and each host passes it on to the next).
Fanout = Literal["direct", "chain", "tree"]
FANOUTS: tuple[Fanout, ...] = ("direct", "chain", "tree")
#: Default seconds for all workers to connect (R's own default setup_timeout).
SETUP_TIMEOUT = 120

#: Where ``sshcluster sync`` keeps its own R libraries on a host, by default.
DEFAULT_LIBRARY = "~/.cache/sshcluster/lib"
_LOCALE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}\Z")
#: No control characters, and no backslash: the path reaches each host's login shell in
#: single quotes, where fish (unlike sh and csh) reads \\ and \' as escapes.
_SAFE_PATH = re.compile(r"^[^\x00-\x1f\x7f\\]+\Z")


@dataclass(frozen=True)
class Host:
    """One worker machine: ``ncore`` R workers are started on it.

    ``ncore`` is None for ``ncore: auto`` (detected by the preflight check).
    ``line`` is where the host was written in the inventory and ``field_lines`` where
    each of its fields was (``defaults:`` included), for messages only.
    """

    host: str
    user: str | None = None
    ncore: int | None = 1
    ssh_port: int | None = None
    identity_file: str | None = None
    rscript: str | None = None
    library: str | None = None
    #: The container its workers run in (``container:``, the host's over the top level's).
    container: Container | None = None
    line: int | None = field(default=None, compare=False)
    field_lines: tuple[tuple[str, int], ...] = field(default=(), compare=False)

    def line_of(self, name: str) -> int | None:
        """The inventory line that sets field ``name`` of this host (maybe in
        ``defaults:``), or None when the inventory does not set it."""
        return dict(self.field_lines).get(name)

    @property
    def label(self) -> str:
        """How the host is named in messages and reports: ``host`` or ``host:port``."""
        if self.ssh_port and self.ssh_port != 22:
            return f"[{self.host}]:{self.ssh_port}" if ":" in self.host else (
                f"{self.host}:{self.ssh_port}"
            )
        return self.host


@dataclass(frozen=True)
class Primary:
    """The machine R runs on, as the workers see it.

    ``host`` is the address the workers connect back to (``"auto"``: detected by the
    preflight check); ``user`` and ``ssh_port`` are for worker-to-primary ssh checks.
    """

    host: str
    user: str | None = None
    ssh_port: int | None = None
    line: int | None = field(default=None, compare=False)  # where host is written


@dataclass(frozen=True)
class Inventory:
    """A validated inventory.

    ``port`` is the TCP port the R workers connect back to (None: R picks one at random
    in 11000-11999). ``known_hosts`` is an extra known_hosts file to verify host keys
    with. ``r_packages`` are R packages every worker must have. ``launch``, ``tunnel``,
    ``fork``, ``register`` and ``setup_timeout`` say how the bootstrap starts the cluster
    (see :data:`Launch`, :data:`Tunnel`, :data:`Register`; ``fork``: the fast launch
    starts one R per host and forks that host's workers from it, instead of one Rscript
    per worker). ``locale`` is the locale the workers run in (None: the primary's own
    ``LANG``/``LC_*``). ``reverse_ssh`` says whether the check fails a host whose worker
    cannot ssh back to the primary (``required``) or only warns (``optional``).
    ``workdir`` is the directory the workers start in on every host (made if missing;
    relative to the login directory, as ``~/x`` is, read as ``x``; None: that directory)
    and ``push``'s default destination. ``shared_dir`` is a directory every host mounts
    from one file server.
    ``fanout``: how ``push`` reaches the hosts. ``lease``: the cluster leases its hosts.
    ``relay``: a host's forked workers share one connection (``false``: one each).
    ``worker_output`` is where the fast launch's workers' output goes: ``none`` (the
    default, as makeCluster's), ``console`` (the primary's, each line after its host's
    name) or an absolute directory on the worker hosts (a file per host in it).
    ``path`` is the file it was read from, if any. ``check_note`` is what
    :func:`~sshcluster.check.preflight.verified_inventory` says about the check it came
    from (how many hosts were ready, which were left out), for the bootstrap's header.
    """

    primary: Primary
    hosts: tuple[Host, ...]
    port: int | None = None
    known_hosts: str | None = None
    r_packages: tuple[str, ...] = ()
    launch: Launch = "fast"
    tunnel: Tunnel | None = None
    fork: bool = True
    register: tuple[Register, ...] = ()
    setup_timeout: int = SETUP_TIMEOUT
    locale: str | None = None
    reverse_ssh: ReverseSsh = "optional"
    worker_output: str = "none"
    packages: Packages = field(default_factory=Packages)
    library: str = DEFAULT_LIBRARY
    workdir: str | None = None
    shared_dir: str | None = None
    fanout: Fanout = "direct"
    lease: bool = False
    relay: bool = True
    path: str | None = field(default=None, compare=False)
    check_note: str | None = None

    def library_of(self, host: Host) -> str:
        """The directory under which ``sync`` keeps its libraries on ``host``."""
        return host.library or self.library

    @property
    def workers(self) -> int:
        """Total number of R workers (sum of ``ncore``); ``auto`` hosts count as 0."""
        return sum(h.ncore or 0 for h in self.hosts)

    @property
    def effective_tunnel(self) -> Tunnel:
        """``tunnel`` as written, else the launch's default: the reverse tunnel for the
        fast launch, direct connections for the classic one (R's makeCluster)."""
        return self.tunnel or ("none" if self.launch == "classic" else "reverse")


# --------------------------------------------------------------------------- validation


def worker_output(value: Any, fail: Callable[[str], Exception]) -> str:
    """A valid ``worker_output``: ``none``, ``console`` or an absolute directory (the
    workers' R writes there; no control characters, which could not be passed whole);
    else raises ``fail(reason)``."""
    if value in ("none", "console") or (
            isinstance(value, str) and value.startswith("/") and _SAFE_PATH.match(value)):
        return str(value)
    raise fail(f"expected none, console or an absolute directory on the worker hosts, got "
               f"{describe(value)}")


class _Reader(Reader):
    """The inventory's own fields: core counts and Rscript paths."""

    def ncore(self, value: Any, where: str, line: int) -> int | None:
        if value == AUTO:
            return None
        return self.integer(value, where, line, low=1, high=4096,
                            what="a positive whole number (or 'auto')")

    def remote_path(self, value: Any, where: str, line: int) -> str:
        # A path on the hosts, not resolved here. ~/x is x: ssh starts in the home
        # directory, and every user of the path (launch, push, results) reads it alike.
        if not isinstance(value, str) or not value or not _SAFE_PATH.match(value):
            raise self.fail(f"expected a directory path on the hosts, got {describe(value)}",
                            line=line, field=where)
        if value == "~" or value.startswith("~/"):
            return value[2:].strip("/") or "."
        if value.startswith("~"):
            raise self.fail(f"{value.split('/')[0]} (another user's home) is not expanded on "
                            "the hosts", line=line, field=where, hint="write the whole path")
        return value.rstrip("/") or "/"

    def rscript(self, value: Any, where: str, line: int) -> str:
        if isinstance(value, str) and "\\" in value:
            raise self.fail("a backslash cannot reach every login shell alike (fish reads it "
                            "as an escape even in quotes)", line=line, field=where,
                            hint="write the path of Rscript without a backslash")
        if not isinstance(value, str) or not value or not _SAFE_PATH.match(value):
            raise self.fail(f"expected the path of Rscript on that host, got {describe(value)}",
                            line=line, field=where)
        return value

    def remote_dir(self, value: Any, where: str, line: int) -> str:
        # (a path on the hosts, not here: ~ is theirs, so it is not resolved)
        if not isinstance(value, str) or not _SAFE_PATH.match(value) or "'" in value \
                or not (value.startswith("/") or value.startswith("~/")):
            raise self.fail(f"expected a directory on the hosts (/... or ~/..., no quotes), "
                            f"got {describe(value)}", line=line, field=where)
        return value.rstrip("/") or "/"


_HOST_KEYS = ("host", "user", "ncore", "ssh_port", "identity_file", "rscript", "library",
              "container")
_DEFAULT_KEYS = ("user", "ncore", "ssh_port", "identity_file", "rscript", "library")
_PRIMARY_KEYS = ("host", "user", "ssh_port")
_TOP_KEYS = ("primary", "port", "defaults", "hosts", "known_hosts", "r_packages", "launch",
             "tunnel", "fork", "register", "setup_timeout", "locale", "reverse_ssh",
             "worker_output", "packages", "lockfile", "repos", "library", "workdir",
             "shared_dir", "fanout", "container", "lease", "relay")


def _host_fields(reader: _Reader, m: Map, where: str,
                 lines: dict[str, int]) -> dict[str, Any]:
    """The host fields of ``m``, validated; each field's line goes into ``lines``."""
    out: dict[str, Any] = {}
    for key, value in m.items():
        line = lines[key] = reader.line_of(m, key)
        name = join_field(where, key)
        if key == "host":
            out[key] = reader.hostname(value, name, line)
        elif key == "user":
            out[key] = reader.user(value, name, line)
        elif key == "ncore":
            out[key] = reader.ncore(value, name, line)
        elif key == "ssh_port":
            out[key] = reader.port(value, name, line)
        elif key == "identity_file":
            out[key] = reader.path_value(value, name, line)
        elif key == "rscript":
            out[key] = reader.rscript(value, name, line)
        elif key == "library":
            out[key] = reader.remote_dir(value, name, line)
        elif key == "container":  # (merged with the top level's in _read)
            out[key] = (value, line)
    return out


def _read(doc: Any, reader: _Reader) -> Inventory:
    if doc is None:
        raise reader.fail("the file is empty", line=None,
                          hint="'sshcluster example' prints an inventory with every field")
    top = reader.mapping(doc, "", 1, _TOP_KEYS, required=("hosts",), hints={
        "hosts": "list the machines, e.g. 'hosts: [node1, node2]'"})

    # primary: a plain address, or a mapping; left out, it is 'auto' (the workers come
    # back through the reverse tunnel, which needs no address, and the check finds the
    # address the hosts see for what does: tunnel: none, ssh_back)
    raw_primary = top.get("primary", "auto")
    pline = reader.line_of(top, "primary")
    if isinstance(raw_primary, Map):
        pm = reader.mapping(raw_primary, "primary", pline, _PRIMARY_KEYS, required=("host",))
        primary = Primary(
            host=reader.hostname(pm["host"], "primary.host", reader.line_of(pm, "host"),
                                 allow_auto=True), line=reader.line_of(pm, "host"),
            user=reader.user(pm["user"], "primary.user", reader.line_of(pm, "user"))
            if "user" in pm else None,
            ssh_port=reader.port(pm["ssh_port"], "primary.ssh_port",
                                 reader.line_of(pm, "ssh_port")) if "ssh_port" in pm else None,
        )
    else:
        primary = Primary(host=reader.hostname(raw_primary, "primary", pline, allow_auto=True),
                          line=pline)

    port = reader.port(top["port"], "port", reader.line_of(top, "port")) if "port" in top \
        else None
    known_hosts = reader.path_value(top["known_hosts"], "known_hosts",
                                    reader.line_of(top, "known_hosts")) \
        if "known_hosts" in top else None

    r_packages: tuple[str, ...] = ()
    pk: dict[str, Any] = {}
    if "r_packages" in top:
        r_packages, pk["constraints"] = read_r_packages(reader, top["r_packages"],
                                                        reader.line_of(top, "r_packages"))
    pk.update(read_package_settings(reader, top))

    how: dict[str, Any] = {}
    if "library" in top:
        how["library"] = reader.remote_dir(top["library"], "library",
                                           reader.line_of(top, "library"))
    for name, choices in (("launch", LAUNCHES), ("tunnel", TUNNELS),
                          ("reverse_ssh", REVERSE_SSH), ("fanout", FANOUTS)):
        if name in top:
            how[name] = reader.choice(top[name], name, reader.line_of(top, name), choices)
    for name in ("workdir", "shared_dir"):
        if name in top:
            how[name] = reader.remote_path(top[name], name, reader.line_of(top, name))
    for name in ("fork", "lease", "relay"):
        if name in top:
            how[name] = reader.boolean(top[name], name, reader.line_of(top, name))
    if "setup_timeout" in top:
        how["setup_timeout"] = reader.integer(
            top["setup_timeout"], "setup_timeout", reader.line_of(top, "setup_timeout"),
            low=1, high=86400, what="a number of seconds (1-86400)")
    if "locale" in top:
        value = top["locale"]
        if not isinstance(value, str) or not _LOCALE.match(value):
            raise reader.fail(f"expected a locale name such as C.UTF-8 or en_US.UTF-8, got "
                              f"{describe(value)}", line=reader.line_of(top, "locale"),
                              field="locale")
        how["locale"] = value
    if "worker_output" in top:
        how["worker_output"] = worker_output(
            top["worker_output"], lambda why: reader.fail(
                why, line=reader.line_of(top, "worker_output"), field="worker_output"))
    if "register" in top:
        raw = top["register"]
        rline = reader.line_of(top, "register")
        if not isinstance(raw, Seq):
            raise reader.fail(f"expected a list such as [future, doparallel], got "
                              f"{describe(raw)}", line=rline, field="register")
        how["register"] = tuple(dict.fromkeys(
            reader.choice(item, f"register[{i}]", raw.item_lines[i], REGISTERS)
            for i, item in enumerate(raw)))
    if how.get("launch") == "classic" and how.get("tunnel") == "reverse":
        raise reader.fail("the classic launch cannot use a reverse tunnel", field="tunnel",
                          line=reader.line_of(top, "tunnel"),
                          hint="use 'launch: fast' (the default) with 'tunnel: reverse'")

    defaults: dict[str, Any] = {}
    default_lines: dict[str, int] = {}
    if "defaults" in top and top["defaults"] is not None:
        dm = reader.mapping(top["defaults"], "defaults", reader.line_of(top, "defaults"),
                            _DEFAULT_KEYS)
        defaults = _host_fields(reader, dm, "defaults", default_lines)

    raw_hosts = top["hosts"]
    hline = reader.line_of(top, "hosts")
    if raw_hosts is None or (isinstance(raw_hosts, Seq) and not raw_hosts):
        raise reader.fail("the list is empty", line=hline, field="hosts",
                          hint="list at least one host, e.g. '- host: 192.168.1.11'")
    if not isinstance(raw_hosts, Seq):
        raise reader.fail(f"expected a list of hosts, got {describe(raw_hosts)}", line=hline,
                          field="hosts")

    # --- containers (sshcluster/containers): the top level's, then each host's over it
    top_container = read_container(reader, top["container"], "container",
                                   reader.line_of(top, "container")) \
        if "container" in top else None
    # ---
    hosts: list[Host] = []
    seen: dict[tuple[str, int], int] = {}
    for i, item in enumerate(raw_hosts):
        where = f"hosts[{i}]"
        line = raw_hosts.item_lines[i]
        lines = dict(default_lines)
        if isinstance(item, Map):
            hm = reader.mapping(item, where, line, _HOST_KEYS, required=("host",))
            fields = {**defaults, **_host_fields(reader, hm, where, lines)}
        else:
            fields = {**defaults, "host": reader.hostname(item, where, line)}
            lines["host"] = line
        if "container" in fields:  # (containers)
            raw, cline = fields["container"]
            fields["container"] = container_from(read_container(
                reader, raw, join_field(where, "container"), cline, top_container))
        elif top_container is not None:
            fields["container"] = container_from(top_container)
        host = Host(line=line, field_lines=tuple(sorted(lines.items())), **fields)
        key = (host.host, host.ssh_port or 22)
        if key in seen:
            raise reader.fail(
                f"{host.label} is listed twice (first at line {seen[key]})", line=line,
                field=where, hint="list each host once and give it the total ncore",
            )
        seen[key] = line
        hosts.append(host)

    return Inventory(primary=primary, hosts=tuple(hosts), port=port, known_hosts=known_hosts,
                     r_packages=r_packages, packages=Packages(**pk), path=reader.path,
                     **how)


def parse_inventory(text: str, path: str | None = None) -> Inventory:
    """Parse and validate inventory YAML ``text``; ``path`` is used in messages and to
    resolve relative file paths. Raises :class:`InventoryError`."""
    base_dir = Path(path).resolve().parent if path else Path.cwd()
    reader = _Reader(path, base_dir)
    return _read(load_yaml(text, reader), reader)


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Read and validate the inventory file at ``path``. Raises :class:`InventoryError`."""
    return parse_inventory(read_text(path, example=MISSING_HINT), str(path))


#: The hint for an inventory file that does not exist.
MISSING_HINT = ("write one with 'sshcluster init --hosts a,b' or start from "
                "'sshcluster example > hosts.yaml'")


__all__ = [
    "AUTO",
    "DEFAULT_LIBRARY",
    "FANOUTS",
    "LAUNCHES",
    "PACKAGE_MODES",
    "REGISTERS",
    "REVERSE_SSH",
    "SETUP_TIMEOUT",
    "TUNNELS",
    "Constraint",
    "Fanout",
    "Host",
    "Inventory",
    "Launch",
    "PackageMode",
    "Packages",
    "Primary",
    "Register",
    "ReverseSsh",
    "Tunnel",
    "load_inventory",
    "parse_inventory",
    "worker_output",
]
