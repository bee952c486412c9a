"""What R packages an inventory asks for, and how strictly: the values behind
``r_packages``, ``packages``, ``lockfile`` and ``repos``, read at the edge with the
inventory (:mod:`sshcluster.inventory`) and used by :mod:`sshcluster.packages`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from sshcluster.yamlfile import Map, Reader, Seq, describe

_R_PACKAGE = re.compile(r"^[A-Za-z][A-Za-z0-9.]*\Z")
_CONSTRAINT = re.compile(r"^\s*(>=|<=|==|>|<)\s*([0-9]+(?:[.-][0-9]+)*)\s*\Z")
#: How strictly the check compares package versions with the reference: ``match`` (a
#: different version warns) or ``exact`` (it fails the host).
PackageMode = Literal["match", "exact"]
PACKAGE_MODES: tuple[PackageMode, ...] = ("match", "exact")


@dataclass(frozen=True)
class Constraint:
    """A version constraint on an ``r_packages`` entry: ``data.table: ">= 1.14"``."""

    package: str
    op: str
    version: str

    def allows(self, version: str) -> bool:
        """Whether ``version`` (as R writes it, ``1.14.2`` or ``1.2-3``) meets it."""
        have, want = version_key(version), version_key(self.version)
        return {">=": have >= want, ">": have > want, "==": have == want,
                "<=": have <= want, "<": have < want}[self.op]

    def __str__(self) -> str:
        return f"{self.package} {self.op} {self.version}"


def version_key(version: str) -> tuple[int, ...]:
    """An R version as a comparable tuple (R's package_version: dots and dashes)."""
    return tuple(int(p) for p in re.split(r"[.-]", version) if p.isdigit())


@dataclass(frozen=True)
class Packages:
    """How the cluster's R packages are compared and synced.

    ``mode``: a version other than the reference's warns (``match``) or fails
    (``exact``); ``constraints`` from ``r_packages``; ``lockfile`` an renv.lock that
    replaces the primary as the reference; ``repos`` where ``sync`` installs from when it
    cannot ship the primary's builds (empty: the primary's ``getOption("repos")``).
    """

    mode: PackageMode = "match"
    constraints: tuple[Constraint, ...] = ()
    lockfile: str | None = None
    repos: tuple[str, ...] = ()


def read_r_packages(reader: Reader, raw: Any, line: int
                    ) -> tuple[tuple[str, ...], tuple[Constraint, ...]]:
    """``r_packages``: a list of names (an item may be ``name: ">= 1.2"``), or a
    mapping of names to constraints (null: any version)."""
    items: list[tuple[Any, Any, int, str]] = []
    if isinstance(raw, Seq):
        for i, item in enumerate(raw):
            if isinstance(item, Map) and len(item) == 1:
                items += [(k, v, raw.item_lines[i], f"r_packages[{i}]")
                          for k, v in item.items()]
            else:
                items.append((item, None, raw.item_lines[i], f"r_packages[{i}]"))
    elif isinstance(raw, Map):
        items = [(k, v, reader.line_of(raw, k), f"r_packages.{k}") for k, v in raw.items()]
    else:
        raise reader.fail(f"expected a list of R package names, got {describe(raw)}",
                          line=line, field="r_packages")
    names: list[str] = []
    constraints: list[Constraint] = []
    for pkg, want, where, name in items:
        if not isinstance(pkg, str) or not _R_PACKAGE.match(pkg):
            raise reader.fail(f"{describe(pkg)} is not an R package name", line=where,
                              field=name)
        names.append(pkg)
        if want is None:
            continue
        m = _CONSTRAINT.match(str(want)) if isinstance(want, (str, int, float)) else None
        if not m:
            raise reader.fail(f"{describe(want)} is not a version constraint",
                              line=where, field=name,
                              hint='write it as ">= 1.14" (>=, >, ==, <=, <)')
        constraints.append(Constraint(pkg, m.group(1), m.group(2)))
    return tuple(names), tuple(constraints)


def read_package_settings(reader: Reader, top: Map) -> dict[str, Any]:
    """``packages``, ``lockfile`` and ``repos`` of the inventory's top level, as
    :class:`Packages` fields."""
    pk: dict[str, Any] = {}
    if "packages" in top:
        pk["mode"] = reader.choice(top["packages"], "packages", reader.line_of(top, "packages"),
                                   PACKAGE_MODES)
    if "lockfile" in top:
        pk["lockfile"] = reader.path_value(top["lockfile"], "lockfile",
                                           reader.line_of(top, "lockfile"))
    if "repos" in top:
        raw = top["repos"]
        raw = Seq([raw]) if isinstance(raw, str) else raw
        if not isinstance(raw, list) or not raw or not all(
                isinstance(r, str) and re.match(r"^(https?|file)://[^\s'\"\\]+\Z", r)
                for r in raw):
            raise reader.fail(f"expected repository URLs (https://..., file:///...), got "
                              f"{describe(top['repos'])}", line=reader.line_of(top, "repos"),
                              field="repos")
        pk["repos"] = tuple(raw)
    return pk


__all__ = ["PACKAGE_MODES", "Constraint", "PackageMode", "Packages", "read_package_settings",
           "read_r_packages", "version_key"]
