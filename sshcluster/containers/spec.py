"""The ``container:`` of an inventory: which image a host's workers run in, and how.

Read once, at the edge (:func:`read_container`, called by the inventory's reader for the
top level and for each host); a host's own ``container:`` keys override the top level's
key by key. Past the edge a :class:`Container` is trusted.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any, Literal

from sshcluster.yamlfile import Map, Reader, Seq, describe, join_field

__all__ = ["CONTAINER_KEYS", "ENGINES", "PULLS", "Container", "Engine", "Pull", "container_from",
           "read_container"]

#: Which program runs the container: ``podman``, ``docker``, or ``auto`` (podman if the
#: host has it, else docker).
Engine = Literal["podman", "docker", "auto"]
ENGINES: tuple[Engine, ...] = ("podman", "docker", "auto")
#: When the engine pulls the image (its ``--pull``): ``missing`` (the default),
#: ``always`` or ``never`` (the image must be on the host: ``sshcluster image push``).
Pull = Literal["missing", "always", "never"]
PULLS: tuple[Pull, ...] = ("missing", "always", "never")
CONTAINER_KEYS = ("image", "engine", "options", "pull")

# An image reference: [registry[:port]/]path[:tag][@sha256:hex], or an image id.
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}\Z")
# What an option may hold: it reaches the host's shell, single-quoted (no backslash:
# fish reads it as an escape even in quotes; no control characters).
_OPTION = re.compile(r"^[^\x00-\x1f\x7f\\]+\Z")


@dataclass(frozen=True)
class Container:
    """A host's container: ``image`` (a reference the engine understands), ``engine``
    (see :data:`Engine`), ``options`` (extra ``run`` arguments, one word each: volumes,
    devices, ``--gpus``) and ``pull`` (see :data:`Pull`)."""

    image: str
    engine: Engine = "auto"
    options: tuple[str, ...] = ()
    pull: Pull = "missing"

    @property
    def options_line(self) -> str:
        """``options`` as one line of sh words (the host's script splits it again)."""
        return shlex.join(self.options)


def read_container(reader: Reader, value: Any, where: str, line: int,
                   base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``container:`` mapping ``value`` at ``where`` (line ``line``), validated, over
    ``base`` (the top level's keys, for a host): a dict of :class:`Container` fields.
    A plain string is the image alone. Raises the reader's
    :class:`~sshcluster.errors.InventoryError`."""
    if isinstance(value, str):
        value = _image_only(reader, value, where, line)
    m = reader.mapping(value, where, line, CONTAINER_KEYS)
    out = dict(base or {})
    for key in m:
        kline = reader.line_of(m, key)
        name = join_field(where, key)
        item = m[key]
        if key == "image":
            if not isinstance(item, str) or not _IMAGE.match(item):
                raise reader.fail(f"expected an image such as rocker/r-ver:4.4.1 or "
                                  f"localhost/mine:1, got {describe(item)}", line=kline,
                                  field=name)
            out["image"] = item
        elif key in ("engine", "pull"):
            out[key] = reader.choice(item, name, kline, ENGINES if key == "engine" else PULLS)
        elif key == "options":
            out["options"] = _options(reader, item, name, kline)
    if "image" not in out:
        raise reader.fail("no image", line=line, field=where,
                          hint="name one, e.g. 'container: {image: rocker/r-ver:4.4.1}'")
    return out


def _image_only(reader: Reader, value: str, where: str, line: int) -> Map:
    m = Map(image=value)
    m.line, m.key_lines = line, {"image": line}
    return m


def _options(reader: Reader, value: Any, where: str, line: int) -> tuple[str, ...]:
    items = list(value) if isinstance(value, Seq) else None
    if isinstance(value, str):
        try:
            items = shlex.split(value)
        except ValueError as e:
            raise reader.fail(f"cannot split into words: {e}", line=line, field=where,
                              hint="write a list, one word per item") from None
    if items is None or not all(isinstance(o, str) and _OPTION.match(o) for o in items):
        raise reader.fail(f"expected a list of run options such as ['--gpus', 'all'], got "
                          f"{describe(value)}", line=line, field=where,
                          hint="one word per item, no backslash or control character")
    for bad in ("--name", "--network", "--net", "--rm", "-d", "--detach", "--pull"):
        if any(o == bad or o.startswith(bad + "=") for o in items):
            raise reader.fail(f"{bad} is set by sshcluster itself", line=line, field=where,
                              hint=f"leave {bad} out of options")
    return tuple(items)


def container_from(fields: dict[str, Any]) -> Container:
    """A :class:`Container` from :func:`read_container`'s fields."""
    return Container(**fields)
