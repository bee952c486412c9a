"""What the check's remote script said on one host: its ``KEY=value`` lines (the keys are
:class:`sshcluster.protocol.Fact`), and its other lines (R's and the shell's own words).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from sshcluster.protocol import Fact

_LINE = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$")


@dataclass
class Facts:
    """What the remote script reported so far: ``KEY=value`` lines, and any other lines
    (error messages from R or the shell) in ``other``."""

    values: dict[str, list[str]] = field(default_factory=dict)
    other: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        """Record one output line."""
        line = line.rstrip("\r\n")
        m = _LINE.match(line)
        if m:
            self.values.setdefault(m.group(1), []).append(m.group(2))
        elif line.strip():
            self.other.append(line)

    def get(self, key: str) -> str | None:
        """The last value reported for ``key``, or None."""
        v = self.values.get(key)
        return v[-1] if v else None

    def all(self, key: str) -> list[str]:
        """Every value reported for ``key``."""
        return self.values.get(key, [])

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def number(self, key: str) -> float | None:
        """The value of ``key`` as a number, or None."""
        v = self.get(key)
        try:
            return float(v) if v is not None else None
        except ValueError:
            return None

    def span(self, key: str) -> float:
        """Seconds between the two uptime stamps of ``key`` (``"start end"``), or 0."""
        v = self.get(key)
        if not v:
            return 0.0
        parts = v.split()
        try:
            return max(0.0, float(parts[-1]) - float(parts[-2]))
        except (ValueError, IndexError):
            return 0.0


def r_died(facts: Facts) -> str:
    """Why R gave no answer: its exit status and last words."""
    said = "; ".join(facts.other[-3:])
    return f"R stopped early (exit status {facts.get(Fact.R_EXIT)}){': ' + said if said else ''}"


def parse_facts(lines: Iterable[str]) -> Facts:
    """Collect the remote script's output lines."""
    facts = Facts()
    for line in lines:
        facts.add(line)
    return facts


__all__ = ["Facts", "parse_facts", "r_died"]
