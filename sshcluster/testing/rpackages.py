"""Tiny R packages built for a test, a file:// repository of them, and per-host libraries.

Every test host shares this machine's filesystem, so each gets a library of its own
through a wrapper ``rscript`` that sets ``R_LIBS`` (and, for a host that plays another
R minor version, a profile that makes R report it); the primary's library is the
testing process's ``R_LIBS``. Nothing here reaches the network: the repository is a
directory (``tools::write_PACKAGES``)::

    built = build_all(tmp, {"mypkg": ("1.0", "2.0")}, compiled={"mypkg"},
                      repo_versions={"mypkg": "2.0"})
    install(built, tmp / "lib", "mypkg", "1.0")
    rscript = wrapper(tmp / "Rscript-h1", tmp / "lib")   # the host's rscript:
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sshcluster.errors import TestbedError

__all__ = ["COMPILED", "PURE", "Built", "build_all", "install", "installed_here",
           "many_packages", "shared_library", "wrapper", "write_lockfile", "write_package"]

#: The pure R package and the one with C code.
PURE = "sctpure"
COMPILED = "sctcomp"

_C_CODE = """\
#include <R.h>
#include <Rinternals.h>
%(include)s
SEXP sct_twice(SEXP x) { return Rf_ScalarReal(2 * Rf_asReal(x) + %(extra)s); }
"""

# A profile that makes R report another minor version, or another platform: R.version
# is what getRversion() and every version check read.
_OTHER_MINOR = """\
  v$minor <- "1.3"
  v$version.string <- "R version 4.1.3"
"""
_PROFILE = """\
local({
  v <- R.version
%s
  be <- baseenv()
  unlockBinding("R.version", be)
  assign("R.version", v, envir = be)
  lockBinding("R.version", be)
})
"""


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} failed: {done.stdout[-2000:]}\n"
                           f"{done.stderr[-2000:]}")


def write_package(root: Path, name: str, version: str, *, compiled: bool = False,
                  imports: tuple[str, ...] = (), link: tuple[Path, str] | None = None) -> Path:
    """The source directory of package ``name`` at ``version``: ``f()`` says which
    version it is; a compiled one also has ``twice()`` in C (``link``: a directory and
    the name of a shared library there that it links to)."""
    d = root / f"{name}-{version}" / name
    (d / "R").mkdir(parents=True)
    desc = [f"Package: {name}", f"Version: {version}", "Title: A Test Package",
            "Description: Built by a test.", "License: MIT", "Author: test",
            "Maintainer: test <test@example.invalid>"]
    if imports:
        desc.append(f"Imports: {', '.join(imports)}")
    (d / "DESCRIPTION").write_text("\n".join(desc) + "\n")
    ns = ["export(f)"]
    body = f'f <- function() "{name} {version}"\n'
    if compiled:
        ns += ["export(twice)", f"useDynLib({name})"]
        body += f'twice <- function(x) .Call("sct_twice", as.numeric(x), PACKAGE = "{name}")\n'
        (d / "src").mkdir()
        extra = "0"
        include = ""
        if link:
            include = f"int {link[1]}_value(void);"
            extra = f"{link[1]}_value()"
            (d / "src" / "Makevars").write_text(f"PKG_LIBS = -L{link[0]} -l{link[1]}\n")
        (d / "src" / "twice.c").write_text(_C_CODE % {"include": include, "extra": extra})
    (d / "NAMESPACE").write_text("\n".join(ns) + "\n")
    (d / "R" / "f.R").write_text(body)
    return d


def shared_library(root: Path, name: str) -> Path:
    """``root/lib/lib<name>.so``, a shared library with ``<name>_value()``."""
    lib = root / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    (lib / f"{name}.c").write_text(f"int {name}_value(void) {{ return 0; }}\n")
    _run(["gcc", "-shared", "-fPIC", "-o", str(lib / f"lib{name}.so"), f"{name}.c"], lib)
    return lib


@dataclass(frozen=True)
class Built:
    """Source tarballs of the test packages, and the repository that serves them."""

    root: Path
    repo: Path  # file://{repo} is the repository

    def tarball(self, name: str, version: str) -> Path:
        """The source tarball of ``name`` at ``version``."""
        return self.root / "tarballs" / f"{name}_{version}.tar.gz"

    @property
    def url(self) -> str:
        """The repository's ``file://`` URL."""
        return f"file://{self.repo}"


def build_all(root: Path, versions: dict[str, tuple[str, ...]], *, compiled: set[str],
              repo_versions: dict[str, str], link: dict[str, str] | None = None,
              imports: dict[str, tuple[str, ...]] | None = None) -> Built:
    """Build every ``versions`` of every package; the repository gets ``repo_versions``."""
    tarballs = root / "tarballs"
    tarballs.mkdir(parents=True, exist_ok=True)
    contrib = root / "repo" / "src" / "contrib"
    contrib.mkdir(parents=True)
    for name, vs in versions.items():
        for v in vs:
            d = write_package(root / "src", name, v, compiled=name in compiled,
                              link=(root / "lib", link[name]) if link and name in link else None,
                              imports=(imports or {}).get(name, ()))
            _run(["R", "CMD", "build", "--no-build-vignettes", "--no-manual", str(d)], tarballs)
    for name, v in repo_versions.items():
        (contrib / f"{name}_{v}.tar.gz").write_bytes((tarballs / f"{name}_{v}.tar.gz").read_bytes())
    _run(["Rscript", "-e", f'tools::write_PACKAGES("{contrib}", type = "source")'], root)
    return Built(root, root / "repo")


def install(built: Built, lib: Path, name: str, version: str,
            env: dict[str, str] | None = None) -> None:
    """``R CMD INSTALL`` the package into ``lib``."""
    lib.mkdir(parents=True, exist_ok=True)
    _run(["R", "CMD", "INSTALL", "--no-docs", "--no-html", "-l", str(lib),
          str(built.tarball(name, version))], built.root, env)


def wrapper(path: Path, lib: Path, *, other_minor: bool = False,
            platform: str | None = None, ld_path: Path | None = None,
            profile: str = "") -> Path:
    """An ``rscript`` for one host: its own library (``R_LIBS``), optionally a
    profile that makes R report 4.1.3 or another ``R.version$platform`` (only R says
    so: its builds are still this machine's) and runs the R code ``profile`` too, and
    ``LD_LIBRARY_PATH``."""
    env = [f"R_LIBS={lib}"]
    if other_minor or platform or profile:
        change = (_OTHER_MINOR if other_minor else "") + (
            f'  v$platform <- "{platform}"\n' if platform else "")
        code = _PROFILE % change.rstrip("\n") if change else ""
        path.with_suffix(".Rprofile").write_text(code + profile)
        env.append(f"R_PROFILE_USER={path.with_suffix('.Rprofile')}")
    if ld_path:
        env.append(f"LD_LIBRARY_PATH={ld_path}")
    path.write_text("#!/bin/sh\n" + "".join(f"export {e}\n" for e in env)
                    + 'exec /usr/bin/Rscript "$@"\n')
    path.chmod(0o755)
    return path


def many_packages(n: int, prefix: str = "sctmany") -> dict[str, str]:
    """``n`` package names that no library has (``sctmany000`` ...), each at 1.0: a
    reference as long as a big project's renv.lock."""
    return {f"{prefix}{i:03d}": "1.0" for i in range(n)}


def write_lockfile(path: Path, versions: Mapping[str, str], r_version: str = "4.2.2",
                   repos: tuple[str, ...] = ()) -> Path:
    """An renv lockfile at ``path`` naming ``versions`` (package: version)."""
    path.write_text(json.dumps({
        "R": {"Version": r_version,
              "Repositories": [{"Name": f"repo{i}", "URL": u} for i, u in enumerate(repos)]},
        "Packages": {name: {"Package": name, "Version": v, "Source": "Repository"}
                     for name, v in versions.items()}}, indent=2))
    return path


def installed_here(package: str) -> tuple[str, str]:
    """This machine's R version and the version of ``package`` it has installed (the test
    hosts, and the test image, share this machine's R and its libraries)."""
    done = subprocess.run(
        ["Rscript", "--vanilla", "-e",
         f'cat(format(getRversion()), utils::packageDescription("{package}")$Version)'],
        capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise TestbedError(f"cannot read the version of {package} here: {done.stderr[-2000:]}")
    r_version, version = done.stdout.split()
    return r_version, version
