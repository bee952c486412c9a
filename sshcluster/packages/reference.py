"""The reference environment: which R packages, at which versions, every host must have.

By default the reference is the primary itself: the ``r_packages`` of the inventory and
their recursive hard dependencies (Depends, Imports, LinkingTo) as the primary's R has
them installed (``R/reference.R``), base packages left out. With ``lockfile:`` it is an
renv lockfile instead, read as JSON (renv need not be installed). A reference names the
library ``sync`` makes for it on each host (:meth:`Reference.library`): a hash of its
packages and versions, so the same environment has the same name everywhere, in a
directory for the host's R minor version, platform and OS release.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sshcluster.commands import run_command
from sshcluster.errors import PackagesError
from sshcluster.inventory import Inventory

#: Seconds the primary's R may take to list its packages.
REFERENCE_TIMEOUT = 60.0

_REFERENCE_R = resources.files("sshcluster.packages").joinpath("R").joinpath("reference.R")


@dataclass(frozen=True)
class RPackage:
    """One package of the reference: its version and, on the primary, its installed
    directory (None in a lockfile)."""

    name: str
    version: str
    path: str | None = None


@dataclass(frozen=True)
class Reference:
    """The environment every host must match.

    ``source`` says where it comes from (``"the primary"`` or the lockfile's path);
    ``r_version`` is R's full version (``4.2.2``); ``platform`` is ``R.version$platform``
    and ``os_release`` the primary's ``ID VERSION_ID`` from /etc/os-release (both None
    for a lockfile); ``absent`` lists needed packages the primary does not have;
    ``repos`` the primary's ``getOption("repos")`` (or the lockfile's repositories).
    """

    source: str
    r_version: str
    packages: tuple[RPackage, ...]
    platform: str | None = None
    os_release: str | None = None
    absent: tuple[str, ...] = ()
    repos: tuple[str, ...] = ()

    @property
    def r_minor(self) -> str:
        """R's major.minor (``4.2``): packages built by one R minor may not load in another."""
        return ".".join(self.r_version.split(".")[:2])

    @property
    def names(self) -> tuple[str, ...]:
        """The packages' names, in reference order."""
        return tuple(p.name for p in self.packages)

    @property
    def versions(self) -> dict[str, str]:
        """Each package's version."""
        return {p.name: p.version for p in self.packages}

    @property
    def digest(self) -> str:
        """The environment's content as a short hash: its packages and their versions."""
        text = "".join(f"{p.name} {p.version}\n" for p in sorted(self.packages,
                                                                  key=lambda p: p.name))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def library(self, root: str, r_minor: str | None = None, platform: str | None = None,
                os_release: str | None = None) -> str:
        """sshcluster's library for this environment under ``root`` on a host with R
        ``r_minor``, ``R.version$platform`` and OS release (``ID VERSION_ID``), by
        default the reference's: ``root/R-x.y/PLATFORM/OS/DIGEST``, as
        ``R/library_dir.R`` names it on the host."""
        def word(text: str) -> str:
            return re.sub(r"^[.]", "_", re.sub(r"[^A-Za-z0-9._+-]", "_", text))

        os_word = "-".join((os_release or self.os_release or "").split())
        return (f"{root}/R-{r_minor or self.r_minor}/{word(platform or self.platform or '')}/"
                f"{word(os_word) if os_word else 'unknown'}/{self.digest}")

    def to_dict(self) -> dict[str, Any]:
        """The reference as it appears in the check's JSON document."""
        return {"source": self.source, "r_version": self.r_version,
                "platform": self.platform or "", "library": self.digest,
                "packages": self.versions, "absent": list(self.absent)}


def os_release(text: str) -> str | None:
    """``ID VERSION_ID`` of an /etc/os-release text (None when it names neither), the
    release as its ABI goes (as ``R/library_dir.R`` and ``R/sync.sh`` take it): the
    major version only in the Red Hat, Fedora and SUSE families (9.3 and 9.4 are one),
    else at most two parts (Alpine's 3.19.1 is 3.19)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        fields[key.strip()] = value.strip().strip("\"'")
    version = fields.get("VERSION_ID", "")
    family = f"{fields.get('ID', '')} {fields.get('ID_LIKE', '')}".split()
    version = (version.split(".")[0] if {"rhel", "fedora", "suse"} & set(family)
               else ".".join(version.split(".")[:2]))
    said = " ".join(v for v in (fields.get("ID"), version) if v)
    return said or None


def parse_reference(text: str, *, os: str | None = None) -> Reference:
    """The primary's reference from what ``R/reference.R`` printed."""
    r_version = platform = None
    packages: list[RPackage] = []
    absent: list[str] = []
    repos: list[str] = []
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "ENV_R":
            r_version = value
        elif key == "ENV_PLATFORM":
            platform = value
        elif key == "REPOS":
            repos.append(value)
        elif key == "ABSENT":
            absent.append(value)
        elif key == "PKG":
            name, version, path = value.split("\t", 2)
            packages.append(RPackage(name, version, path))
    if r_version is None:
        raise PackagesError(f"the primary's R did not list its packages: {text[-500:]}")
    return Reference("the primary", r_version, tuple(packages), platform, os,
                     tuple(absent), tuple(repos))


async def primary_reference_async(names: tuple[str, ...], *, rscript: str | None = None,
                                  timeout: float = REFERENCE_TIMEOUT) -> Reference:
    """The primary's reference for the packages ``names`` (one Rscript run)."""
    rs = rscript or shutil.which("Rscript")
    if not rs:
        raise PackagesError("no Rscript on the primary, so there is no reference to compare "
                            "the hosts with", hint="install R here, or name a lockfile: "
                                                   "in the inventory")
    with resources.as_file(_REFERENCE_R) as script:
        try:
            done = await run_command([rs, "--default-packages=NULL", str(script), *names],
                                     timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise PackagesError(f"the primary's R did not list its packages: "
                                f"{e or 'timed out'}") from e
    if done.returncode != 0:
        raise PackagesError("the primary's R did not list its packages: "
                            + done.stderr.decode(errors="replace")[-500:])
    try:
        os_text = Path("/etc/os-release").read_text()
    except OSError:
        os_text = ""
    return parse_reference(done.stdout.decode(errors="replace"), os=os_release(os_text))


def lockfile_reference(path: str) -> Reference:
    """The reference an renv lockfile describes: every package it lists, at its version."""
    try:
        doc = json.loads(Path(path).read_text())
        r = doc.get("R", {})
        packages = tuple(RPackage(name, str(entry["Version"]))
                         for name, entry in sorted(doc.get("Packages", {}).items()))
        repos = tuple(str(x["URL"]) for x in r.get("Repositories", []) if "URL" in x)
        version = str(r["Version"])
    except OSError as e:
        raise PackagesError(f"cannot read the lockfile {path}: {e.strerror or e}") from e
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise PackagesError(f"{path} is not an renv lockfile: {type(e).__name__}: {e}",
                            hint="it needs R.Version and Packages.NAME.Version") from e
    return Reference(path, version, packages, repos=repos)


async def reference_for(inventory: Inventory, *, rscript: str | None = None
                        ) -> Reference | None:
    """The inventory's reference: its lockfile, else the primary's packages for its
    ``r_packages`` (None: neither, or no R on the primary, so there is nothing to
    compare with and the check only looks for the ``r_packages``)."""
    if inventory.packages.lockfile:
        return lockfile_reference(inventory.packages.lockfile)
    if not inventory.r_packages or not (rscript or shutil.which("Rscript")):
        return None
    return await primary_reference_async(inventory.r_packages, rscript=rscript)


def reference(inventory: Inventory, *, rscript: str | None = None) -> Reference | None:
    """:func:`reference_for` from plain code, also from code that a running event loop
    called (a Jupyter notebook's, an async caller's): there it runs in a thread of its
    own, its own loop, and this call waits for it (the primary's Rscript, seconds)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(reference_for(inventory, rscript=rscript))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, reference_for(inventory, rscript=rscript)).result()


__all__ = [
    "REFERENCE_TIMEOUT",
    "RPackage",
    "Reference",
    "lockfile_reference",
    "os_release",
    "parse_reference",
    "primary_reference_async",
    "reference",
    "reference_for",
]
