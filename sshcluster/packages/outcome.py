"""What one ``sync`` did: every host's outcome (:class:`HostSync`), and the run's
(:class:`SyncReport`), as plain values and as the lines ``sshcluster sync`` prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sshcluster.inventory import Host
from sshcluster.packages.reference import Reference
from sshcluster.quoting import printable

Outcome = Literal["up to date", "copied", "installed", "shared", "failed"]


@dataclass(frozen=True)
class HostSync:
    """One host's outcome: ``outcome``, a sentence, the bytes sent to it, its library
    (as the host names it), the packages that will not load (name: R's error)."""

    host: Host
    outcome: Outcome
    detail: str = ""
    sent: int = 0
    library: str | None = None
    seconds: float = 0.0
    load_errors: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The host as named in the inventory."""
        return self.host.label

    @property
    def ok(self) -> bool:
        """True when the host now has the environment."""
        return self.outcome != "failed"


@dataclass(frozen=True)
class SyncReport:
    """Every host's outcome of one ``sync``, and the reference it synced to."""

    reference: Reference
    hosts: tuple[HostSync, ...]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every host has the environment."""
        return all(h.ok for h in self.hosts)

    @property
    def failed(self) -> tuple[HostSync, ...]:
        """The hosts that did not get it."""
        return tuple(h for h in self.hosts if not h.ok)

    @property
    def sent(self) -> int:
        """Bytes sent to all hosts together."""
        return sum(h.sent for h in self.hosts)

    def __getitem__(self, label: str) -> HostSync:
        for h in self.hosts:
            if label in (h.label, h.host.host):
                return h
        raise KeyError(label)

    def to_dict(self) -> dict[str, object]:
        """The report as plain values (``sshcluster sync --json``)."""
        return {"ok": self.ok, "library": self.reference.digest, "sent": self.sent,
                "seconds": round(self.seconds, 3), "reference": self.reference.to_dict(),
                "hosts": [{"host": h.label, "ok": h.ok, "outcome": h.outcome,
                           "detail": h.detail, "sent": h.sent, "library": h.library or "",
                           "load_errors": h.load_errors, "seconds": round(h.seconds, 3)}
                          for h in self.hosts]}

    def verdicts(self) -> list[str]:
        """One line per host: its outcome, what it got, what was sent (the host's words
        with their control characters escaped)."""
        width = max([4, *(len(h.label) for h in self.hosts)])
        return [f"{h.label.ljust(width)}  {h.outcome.upper() if not h.ok else h.outcome}: "
                f"{printable(h.detail, newlines=False)}"  # (what the host said)
                + (f" ({size(h.sent)} sent)" if h.sent else "") for h in self.hosts]

    def summary(self) -> str:
        """One line: how many hosts have the environment, what was sent, how long."""
        n = len(self.hosts)
        good = n - len(self.failed)
        return (f"{good} of {n} host{'s' if n != 1 else ''} have the {len(self.reference.names)} "
                f"packages of {self.reference.source} (library {self.reference.digest}); "
                f"{size(self.sent)} sent, {self.seconds:.1f} s")


def size(n: int) -> str:
    """``n`` bytes for a person (``14.7 KB``)."""
    for unit in ("B", "KB", "MB"):
        if n < 1000 or unit == "MB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


__all__ = ["HostSync", "Outcome", "SyncReport", "size"]
