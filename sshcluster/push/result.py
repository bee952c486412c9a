"""What a push did: one verdict per host, and the whole run's figures."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["HostPush", "PushResult"]


@dataclass(frozen=True)
class HostPush:
    """One host's verdict.

    ``ok`` says whether the host now has every file; ``detail`` what was done or why it
    failed (naming the host, and for a full disk the path: also in ``path``).
    ``files``/``bytes`` are what was sent to it; ``via`` how (``direct``, ``chain`` or
    ``shared_dir``).
    """

    host: str
    ok: bool
    detail: str
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    via: str = "direct"
    path: str | None = None


@dataclass(frozen=True)
class PushResult:
    """A whole push: the destination, every host's verdict in inventory order, the
    symlinks left out (they lead outside their source), the bytes the primary wrote to
    its ssh sessions and the wall time."""

    dest: str
    hosts: tuple[HostPush, ...]
    skipped: tuple[str, ...] = ()
    bytes_out: int = 0
    seconds: float = 0.0
    fanout: str = "direct"

    @property
    def ok(self) -> bool:
        return all(h.ok for h in self.hosts)

    @property
    def failed(self) -> tuple[HostPush, ...]:
        return tuple(h for h in self.hosts if not h.ok)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
