"""Container engines on test hosts, and images with R built offline, for tests.

Every test host shares this machine's filesystem, so a rootful podman on each would
share one image store (``/var/lib/containers``) and so could not lack an image that
another host has. :data:`ENGINE_DIRS` gives each host a store of its own: pass it as a
:class:`~sshcluster.testing.Testbed`'s ``private_dirs`` and each host's sshd (and so
every ssh session, and the podman it runs) sees a tmpfs of its own at podman's storage,
run and lock directories. :func:`on_host` runs a command there without ssh (also on a
host that is cut off), :func:`containers_left` counts what the engine holds on each
host, and :func:`load_image` gives hosts an image.

No registry is reachable from a test, so a test image is made here: :func:`r_rootfs`
copies this machine's R (``R.home()`` without the site library, ``/etc/R``,
``/usr/share/R``), a shell and the few programs R's start-up script and the container
need, and every shared library they load (``ldd``), into a root filesystem tree;
:func:`import_image` turns that tree into an image with ``podman import``. A marker file
(``/etc/sshcluster-image``, holding ``marker``) lets a worker tell that it runs inside.

Example::

    tree = r_rootfs(tmp / "rootfs", marker="blue")
    image_id = import_image(tree, "localhost/sshcluster-test:1", env=engine_env)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from sshcluster.errors import TestbedError
from sshcluster.testing.hosts import TestHost, host_dir
from sshcluster.testing.netns import sshd_pids_using
from sshcluster.testing.testbed import Testbed

__all__ = ["ENGINE_DIRS", "MARKER_FILE", "containers_left", "import_image", "load_image",
           "on_host", "r_rootfs", "save_image"]

#: Each host's own podman (rootful): its image store, its run state, its locks
#: (podman's lock table lives in /dev/shm).
ENGINE_DIRS = {"/var/lib/containers": "2g", "/run/containers": "64m", "/run/libpod": "64m",
               "/dev/shm": "64m"}

#: Where the image's marker lies, inside the image.
MARKER_FILE = "/etc/sshcluster-image"

#: Programs the image holds besides R: R's start-up script uses some, the container
#: holds itself open with ``sleep``, and a worker's ``system()`` may want the rest.
_TOOLS = ("sh", "dash", "bash", "sleep", "cat", "uname", "sed", "rm", "mkdir", "id", "env",
          "ls", "grep", "dirname", "basename", "readlink", "tr", "mktemp", "touch",
          "chmod", "kill", "ps", "true", "false", "echo", "head", "tail", "which", "gzip")

#: R's packages that need libraries a worker never does (Tcl/Tk and X11).
_SKIP_PACKAGES = ("tcltk",)

#: What a package holds that loading it never reads.
_SKIP_DIRS = ("doc", "html", "help", "tests", "demo", "po")

_LDD_LINE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")


def _copy_file(src: str, root: Path) -> None:
    """``src`` (its content, links followed) at its own path below ``root``, the
    directory part with links resolved (``/lib`` is ``/usr/lib`` here)."""
    real_dir = os.path.realpath(os.path.dirname(src))
    dest = root / real_dir.lstrip("/") / os.path.basename(src)
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)


def _libraries(files: Iterable[Path]) -> set[str]:
    """The shared libraries (and the loader) that ``files`` load, by ``ldd``."""
    found: set[str] = set()
    for f in files:
        out = subprocess.run(["ldd", str(f)], capture_output=True, text=True, check=False)
        found.update(m.group(1) for m in _LDD_LINE.finditer(out.stdout))
    return found


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def r_rootfs(dest: Path, *, marker: str, files: Mapping[str, str] | None = None) -> Path:
    """A root filesystem tree at ``dest`` holding this machine's R (Rscript on the
    default ``PATH``), a shell, ``sleep`` and :data:`MARKER_FILE` with ``marker``;
    ``files`` adds more (absolute path inside: text). Returns ``dest``."""
    r_home = Path(subprocess.run(["Rscript", "-e", "cat(R.home())"], capture_output=True,
                                 text=True, check=True).stdout)
    dest.mkdir(parents=True)
    for d in ("usr/bin", "usr/lib", "usr/lib64", "usr/sbin", "etc", "tmp", "root"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    (dest / "tmp").chmod(0o1777)
    for link in ("bin", "lib", "lib64", "sbin"):
        (dest / link).symlink_to(f"usr/{link}")
    skip = {"site-library", "library/translations", *(f"library/{p}" for p in _SKIP_PACKAGES)}

    def ignore(d: str, names: list[str]) -> list[str]:
        rel = os.path.relpath(d, r_home)
        docs = rel.startswith("library/") and rel.count("/") == 1  # (a package's own dirs)
        return [n for n in names if os.path.normpath(os.path.join(rel, n)) in skip
                or (docs and n in _SKIP_DIRS)]

    shutil.copytree(r_home, dest / str(r_home).lstrip("/"), symlinks=True, ignore=ignore)
    for tree in ("/etc/R", "/usr/share/R"):
        if os.path.isdir(tree):
            shutil.copytree(tree, dest / tree.lstrip("/"), symlinks=True, dirs_exist_ok=True)
    elves = [p for p in (dest / str(r_home).lstrip("/")).rglob("*")
             if p.is_file() and not p.is_symlink() and _is_elf(p)]
    for name in ("Rscript", "R"):
        _copy_file(shutil.which(name) or f"/usr/bin/{name}", dest)
    elves.append(dest / "usr/bin/Rscript")
    for tool in _TOOLS:
        path = shutil.which(tool, path="/usr/bin:/bin:/usr/sbin:/sbin")
        if path:
            _copy_file(path, dest)
            elves.append(Path(path))
    for lib in _libraries(elves):
        _copy_file(lib, dest)
    # R's libraries (BLAS, LAPACK) are found through R's own ldpaths too
    # This machine's locales (C.UTF-8 at least), as an image made for R holds its own:
    # the workers get the primary's LANG and LC_* there.
    if os.path.isdir("/usr/lib/locale"):
        shutil.copytree("/usr/lib/locale", dest / "usr/lib/locale", symlinks=True,
                        dirs_exist_ok=True)
    (dest / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (dest / "etc/group").write_text("root:x:0:\n")
    (dest / MARKER_FILE.lstrip("/")).write_text(marker + "\n")
    for path, text in (files or {}).items():
        target = dest / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return dest


def import_image(tree: Path, name: str, *, env: Mapping[str, str] | None = None,
                 engine: str = "podman") -> str:
    """``podman import`` of the tree ``tree`` as image ``name``; returns its id."""
    tar = subprocess.Popen(["tar", "-C", str(tree), "--numeric-owner", "-cf", "-", "."],
                           stdout=subprocess.PIPE)
    try:
        out = subprocess.run(
            [engine, "import", "--change", "CMD [\"/bin/sh\"]", "-", name],
            stdin=tar.stdout, capture_output=True, text=True, env=dict(env or os.environ),
            check=False, timeout=120)
    finally:
        if tar.stdout:
            tar.stdout.close()
        tar.wait()
    if out.returncode != 0:
        raise TestbedError(f"{engine} import {name} failed: {out.stderr.strip()}")
    image_id = subprocess.run([engine, "image", "inspect", "--format", "{{.Id}}", name],
                              capture_output=True, text=True, env=dict(env or os.environ),
                              check=True).stdout.strip()
    return image_id


def on_host(tb: Testbed, host: TestHost, argv: list[str], *, timeout: float = 60,
            stdin: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` on ``host`` as its ssh sessions run (its network, hostname and mount
    namespaces: its own container store), without ssh."""
    pids = sshd_pids_using(str(host_dir(tb.workdir, host)))
    if not pids:
        raise TestbedError(f"no sshd runs on {host.hostname}")
    return subprocess.run(["nsenter", "-t", str(min(pids)), "-m", "-n", "-u", *argv],
                          capture_output=True, text=True, timeout=timeout, stdin=stdin,
                          check=False)


def containers_left(tb: Testbed, engine: str = "podman") -> dict[str, list[str]]:
    """The containers on each host of ``tb`` (by hostname; hosts with none left out)."""
    left = {}
    for h in tb.hosts:
        out = on_host(tb, h, [engine, "ps", "-a", "--format", "{{.Names}} {{.Status}}"])
        if out.returncode != 0:
            raise TestbedError(f"{engine} ps on {h.hostname}: {out.stderr.strip()}")
        names = out.stdout.split("\n")
        if any(n.strip() for n in names):
            left[h.hostname] = [n for n in names if n.strip()]
    return left


def save_image(name: str, archive: Path, *, env: Mapping[str, str] | None = None) -> Path:
    """``podman save`` of ``name`` (docker-archive: the image id stays the same) to
    ``archive``."""
    out = subprocess.run(["podman", "save", "--format", "docker-archive", "-o", str(archive),
                          name], capture_output=True, text=True, env=dict(env or os.environ),
                         check=False, timeout=120)
    if out.returncode != 0:
        raise TestbedError(f"podman save {name}: {out.stderr.strip()}")
    return archive


def load_image(tb: Testbed, hosts: Iterable[TestHost], archive: Path) -> None:
    """Load the image archive ``archive`` into the stores of ``hosts``."""
    for h in hosts:
        with archive.open("rb") as f:
            out = on_host(tb, h, ["podman", "load", "-q"], stdin=f.fileno())
        if out.returncode != 0:
            raise TestbedError(f"podman load on {h.hostname}: {out.stderr.strip()}")
