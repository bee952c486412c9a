"""The marker file of the check's ``shared_dir`` step: one per check run, written once (by
the primary when it has the directory, else by the first host) and looked for by every
host (the step is :func:`~sshcluster.push.shared.shared_dir_step`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from dataclasses import dataclass, field

from sshcluster.inventory import Inventory


@dataclass
class SharedMarker:
    """The marker of one check run: where, what, who wrote it, and who has looked."""

    directory: str
    name: str
    content: str
    writer: str  # "the primary", or the label of the first host
    waiting: set[str]  # the hosts that have not looked yet
    written: asyncio.Future[str | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    all_looked: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def path(self) -> str:
        return f"{self.directory.rstrip('/')}/{self.name}"

    def looked(self, label: str) -> None:
        """``label`` is done with the marker (or will never look: it failed before)."""
        if label == self.writer and not self.written.done():
            self.written.set_result(f"{label}, which was to write it, did not get that far")
        self.waiting.discard(label)
        if not self.waiting:
            self.all_looked.set()

    def remove_local(self) -> None:
        """The primary's marker goes at the end of the check."""
        if self.writer == "the primary":
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def start_marker(inventory: Inventory) -> SharedMarker | None:
    """The marker for ``inventory``'s ``shared_dir`` (None without one); written here at
    once when this machine has the directory."""
    d = inventory.shared_dir
    if not d:
        return None
    labels = [h.label for h in inventory.hosts]
    name = f".sshcluster-check-{secrets.token_hex(8)}"
    marker = SharedMarker(d, name, secrets.token_hex(16), labels[0], set(labels))
    if os.path.isabs(d) and os.path.isdir(d):
        try:
            with open(marker.path, "x") as f:
                f.write(marker.content)
        except OSError:
            pass  # then the first host writes it
        else:
            marker.writer = "the primary"
            marker.written.set_result(None)
    return marker


__all__ = ["SharedMarker", "start_marker"]
