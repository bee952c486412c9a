"""Drift: how a host's R packages differ from the reference, as the check's verdict.

Pure functions of what the host reported (``PKGV`` lines of ``R/environment.R``) and
the :class:`~sshcluster.packages.reference.Reference`, tested without any host:

* a package the host lacks fails it, naming the packages;
* another version warns, or fails with ``packages: exact`` in the inventory;
* a version outside an ``r_packages`` constraint fails;
* another R minor version warns;
* sshcluster's own library for this environment, when the host has it, must be complete.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sshcluster.check.report import StepResult
from sshcluster.inventory import Host, Packages
from sshcluster.packages.reference import Reference
from sshcluster.protocol import REGISTER_NEEDS

#: How many package names a detail line lists before it says "and N more".
SHOWN = 6


@dataclass(frozen=True)
class Drift:
    """What differs on one host: ``missing`` packages, ``other`` versions (name, the
    host's, the reference's), ``unmet`` constraints, the host's R when its minor version
    differs (``r_other``), and the packages sshcluster's library lacks (``incomplete``)."""

    missing: tuple[str, ...] = ()
    other: tuple[tuple[str, str, str], ...] = ()
    unmet: tuple[str, ...] = ()
    r_other: str | None = None
    incomplete: tuple[str, ...] = ()

    @property
    def none(self) -> bool:
        """True when the host matches the reference."""
        return not (self.missing or self.other or self.unmet or self.r_other
                    or self.incomplete)


def host_versions(lines: list[str]) -> dict[str, str | None]:
    """The ``PKGV`` values (``name version``, no version: not installed) as a dict."""
    out: dict[str, str | None] = {}
    for line in lines:
        name, _, version = line.partition(" ")
        out[name] = version.strip() or None
    return out


def drift(reference: Reference, versions: Mapping[str, str | None], r_version: str | None,
          settings: Packages, incomplete: tuple[str, ...] = ()) -> Drift:
    """Compare one host's ``versions`` and R with the reference."""
    want = reference.versions
    # (a package the primary lacks too is still one the host must have)
    missing = tuple(p for p in (*reference.names, *reference.absent)
                    if versions.get(p) is None)
    other = tuple((p, v, want[p]) for p in reference.names
                  if (v := versions.get(p)) is not None and v != want[p])
    unmet = tuple(f"{c.package} {versions[c.package]} (wants {c.op} {c.version})"
                  for c in settings.constraints
                  if versions.get(c.package) and not c.allows(versions[c.package] or ""))
    minor = ".".join((r_version or "").split(".")[:2])
    r_other = r_version if r_version and minor != reference.r_minor else None
    return Drift(missing, other, unmet, r_other, incomplete)


def _names(items: list[str]) -> str:
    more = len(items) - SHOWN
    return ", ".join(items[:SHOWN]) + (f" and {more} more" if more > 0 else "")


def drift_verdict(d: Drift, reference: Reference, host: Host, settings: Packages, *,
                  library: str | None, seconds: float, inventory_path: str | None
                  ) -> StepResult:
    """The ``packages`` step's result for a host with drift ``d``."""
    fix = (f"run 'sshcluster sync {inventory_path or 'INVENTORY'}' to give every host "
           f"{reference.source}'s packages")
    failed: list[str] = []
    warned: list[str] = []
    if d.incomplete:
        failed.append(f"sshcluster's library {library} lacks {_names(list(d.incomplete))}")
    if d.missing:
        failed.append(f"not installed: {_names(list(d.missing))}")
    if d.unmet:
        failed.append(f"too old or too new: {_names(list(d.unmet))}")
    if d.other:
        said = _names([f"{p} {v} ({reference.source} has {w})" for p, v, w in d.other])
        (failed if settings.mode == "exact" else warned).append(f"other versions: {said}")
    if d.r_other:
        warned.append(f"R {d.r_other} ({reference.source} has R {reference.r_version}): "
                      "sync installs from the repositories instead of copying builds")
    if failed:
        return StepResult("failed", "; ".join(failed + warned), seconds, hint=fix)
    if warned:
        return StepResult("warning", "; ".join(warned), seconds, hint=fix)
    n = len(reference.names)
    where = f", from sshcluster's library {library}" if library else ""
    return StepResult("ok", f"all {n} package{'s' if n != 1 else ''} as {reference.source} "
                            f"has them{where}", seconds)


def registered_without(missing: Sequence[str], register: Sequence[str]) -> str:
    """What the registrations ``register`` need of ``missing``: "register: future needs
    future" ("" when none needs any)."""
    said = [f"register: {r} needs {' and '.join(needs)}" for r in register
            if (needs := [p for p in REGISTER_NEEDS[r] if p in missing])]
    return "; ".join(said)


def not_loading(broken: Mapping[str, str], register: Sequence[str]) -> str:
    """Packages the registrations need that are there but do not load, with R's reason
    (``broken``: by package)."""
    if not broken:
        return ""
    return "; ".join(f"{p} does not load: {why}" for p, why in broken.items()) + (
        f" ({registered_without(list(broken), register)})")


__all__ = ["SHOWN", "Drift", "drift", "drift_verdict", "host_versions", "not_loading",
           "registered_without"]
