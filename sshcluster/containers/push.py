"""``sshcluster image push IMAGE INVENTORY``: a local image to the hosts that lack it.

For hosts with no registry: the image's id (its digest) is read here and on every host
at once; the hosts that have it get nothing; for the others the image is saved here
once (``ENGINE save``, gzip), then streamed to all of them at once over the launch's own
ssh, and loaded there (``gzip -dc | ENGINE load``); each host's id is read again. A host
that fails does not stop the others: :class:`ImagePush` holds every host's outcome.

Example::

    result = push_image("localhost/myr:1", load_inventory("hosts.yaml"))
    assert result.ok, result.failed
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from sshcluster.bootstrap import END_OF_SCRIPT, READ_SCRIPT
from sshcluster.errors import PushError
from sshcluster.inventory import Host, Inventory
from sshcluster.quoting import shell_join, shell_quote
from sshcluster.ssh.command import ssh_command

__all__ = ["HostImage", "ImagePush", "local_engine", "local_image_id", "push_image"]

#: Called with (host label, bytes sent to it so far, bytes in all).
Progress = Callable[[str, int, int], None]
#: Seconds an id look-up may take; a load may take this per 100 MB more.
SMALL_TIMEOUT = 60
_CHUNK = 1 << 20
_SCRIPT = resources.files("sshcluster.containers").joinpath("image.sh").read_text("utf-8")


@dataclass(frozen=True)
class HostImage:
    """One host's outcome: ``sent`` (it lacked the digest and has it now), ``had``
    (it had it: nothing sent) or ``failed`` (``detail`` says why)."""

    label: str
    outcome: Literal["sent", "had", "failed"]
    detail: str = ""
    sent_bytes: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class ImagePush:
    """Every host's outcome of one push of ``image`` (id ``digest``)."""

    image: str
    digest: str
    hosts: tuple[HostImage, ...]
    archive_bytes: int = 0

    @property
    def ok(self) -> bool:
        return all(h.outcome != "failed" for h in self.hosts)

    @property
    def failed(self) -> tuple[HostImage, ...]:
        return tuple(h for h in self.hosts if h.outcome == "failed")


def local_engine(engine: str = "auto") -> str:
    """The engine on this machine: ``engine``, or for ``auto`` podman, else docker."""
    names = ("podman", "docker") if engine == "auto" else (engine,)
    for name in names:
        if shutil.which(name):
            return name
    raise PushError(f"{' or '.join(names)} is not installed on this machine",
                    hint="install podman (or docker) here, where the image is")


def local_image_id(image: str, engine: str) -> str:
    """The id (digest, without ``sha256:``) of ``image`` in this machine's store."""
    out = subprocess.run([engine, "image", "inspect", "--format", "{{.Id}}", image],
                         capture_output=True, text=True, check=False, timeout=SMALL_TIMEOUT)
    if out.returncode != 0 or not out.stdout.strip():
        raise PushError(f"{image} is not in {engine}'s image store on this machine",
                        hint=f"build or pull it here first ('{engine} images' lists them)")
    return out.stdout.strip().removeprefix("sha256:")


def _command(inventory: Inventory, host: Host, mode: str, image: str) -> list[str]:
    """The ssh command that runs image.sh's ``mode`` for ``image`` on ``host`` (with the
    host's own engine, if its ``container:`` names one)."""
    engine = host.container.engine if host.container else "auto"
    return [*ssh_command(inventory, host), *(["-l", host.user] if host.user else []), "--",
            host.host, f"exec sh -c {shell_quote(READ_SCRIPT)} sshcluster-image "
                       f"{shell_join([mode, engine, image])}"]


def _answer(out: bytes) -> tuple[str, str]:
    """("id", ID) or ("failed", WHY) from what image.sh printed."""
    for line in out.decode(errors="replace").splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[0] == "sshcluster-image":
            return parts[1], parts[2].strip()
    return "failed", ""


def _script() -> bytes:
    return f"{_SCRIPT}{END_OF_SCRIPT}\n".encode()


def _remote_id(inventory: Inventory, host: Host, image: str) -> tuple[str, str]:
    try:
        done = subprocess.run(_command(inventory, host, "id", image), input=_script(),
                              capture_output=True, timeout=SMALL_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return "failed", f"no answer within {SMALL_TIMEOUT} s"
    what, value = _answer(done.stdout)
    if what == "failed" and not value:
        value = done.stderr.decode(errors="replace").strip() or f"ssh exited {done.returncode}"
    return what, value


def _save(image: str, engine: str, path: Path) -> int:
    """``ENGINE save IMAGE``, gzip-compressed (fast level) to ``path``; its size."""
    with subprocess.Popen([engine, "save", image], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc, \
            gzip.open(path, "wb", compresslevel=1) as out:
        assert proc.stdout is not None
        shutil.copyfileobj(proc.stdout, out, _CHUNK)
        err = proc.stderr.read() if proc.stderr else b""
    if proc.returncode != 0:
        raise PushError(f"{engine} save {image} failed: {err.decode(errors='replace').strip()}")
    return path.stat().st_size


def _send(inventory: Inventory, host: Host, image: str, digest: str, archive: Path,
          progress: Progress | None) -> HostImage:
    t0 = time.monotonic()
    total = archive.stat().st_size
    sent = 0
    proc = subprocess.Popen(_command(inventory, host, "load", image), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    out: list[bytes] = []
    readers = [threading.Thread(target=lambda s=s: out.append(s.read()))
               for s in (proc.stdout, proc.stderr)]
    for r in readers:
        r.start()
    try:
        assert proc.stdin is not None
        proc.stdin.write(_script())
        with archive.open("rb") as f:
            while chunk := f.read(_CHUNK):
                proc.stdin.write(chunk)
                sent += len(chunk)
                if progress is not None:
                    progress(host.label, sent, total)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    try:
        proc.wait(timeout=SMALL_TIMEOUT + total / 1e6)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for r in readers:
        r.join()
    said = b"".join(out)
    what, value = _answer(said)
    seconds = time.monotonic() - t0
    if what == "id" and value == digest:
        return HostImage(host.label, "sent", f"loaded, id sha256:{digest[:12]}", sent, seconds)
    if what == "failed" and value:
        why = value
    elif what == "id":
        why = f"loaded, but its id is sha256:{value[:12]}" if value else "not loaded"
    else:
        last = said.decode(errors="replace").strip().splitlines()
        why = last[-1] if last else f"ssh exited {proc.returncode}"
    return HostImage(host.label, "failed", why, sent, seconds)


def push_image(image: str, inventory: Inventory, *, engine: str = "auto",
               hosts: Sequence[Host] | None = None, progress: Progress | None = None,
               note: Callable[[str], None] | None = None) -> ImagePush:
    """Give every host of ``inventory`` (or ``hosts``) the local image ``image``, by
    its digest; see the module's docstring. Raises :class:`PushError` when nothing can
    start (no engine or no such image here); a host's failure is in the result."""
    eng = local_engine(engine)
    digest = local_image_id(image, eng)
    targets = tuple(hosts if hosts is not None else inventory.hosts)
    with ThreadPoolExecutor(max_workers=max(1, min(64, len(targets)))) as pool:
        ids = list(pool.map(lambda h: _remote_id(inventory, h, image), targets))
    outcome: dict[str, HostImage] = {}
    lacking = []
    for h, (what, value) in zip(targets, ids, strict=True):
        if what == "failed":
            outcome[h.label] = HostImage(h.label, "failed", value)
        elif value == digest:
            outcome[h.label] = HostImage(h.label, "had", f"has sha256:{digest[:12]}")
        else:
            lacking.append(h)
    size = 0
    if lacking:
        with tempfile.TemporaryDirectory(prefix="sshcluster-image-") as tmp:
            archive = Path(tmp) / "image.tar.gz"
            if note:
                note(f"saving {image} (sha256:{digest[:12]}) for {len(lacking)} "
                     f"host{'s' if len(lacking) != 1 else ''}")
            size = _save(image, eng, archive)
            with ThreadPoolExecutor(max_workers=min(64, len(lacking))) as pool:
                for result in pool.map(lambda h: _send(inventory, h, image, digest, archive,
                                                       progress), lacking):
                    outcome[result.label] = result
    return ImagePush(image, digest, tuple(outcome[h.label] for h in targets), size)
