"""A push's verdicts for people: one line per host, then the totals."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from sshcluster.push.result import PushResult

__all__ = ["print_push"]


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover - the loop returns


def print_push(result: PushResult, console: Console) -> None:
    """Print one verdict per host, the symlinks left out and the totals."""
    width = max((len(h.host) for h in result.hosts), default=0)
    for h in result.hosts:
        mark = "[green]ok    [/]" if h.ok else "[red]FAILED[/]"
        console.print(f"{mark} {escape(h.host.ljust(width))}  {escape(h.detail)}",
                      highlight=False)
    for path in result.skipped:
        console.print(f"[yellow]skipped[/] {escape(path)}: a symlink that leads outside its "
                      "source (or not a file), not followed", highlight=False)
    ok = sum(h.ok for h in result.hosts)
    console.print(f"{ok}/{len(result.hosts)} hosts have the files in {escape(result.dest)}; "
                  f"{_size(result.bytes_out)} sent from here in {result.seconds:.1f} s "
                  f"({result.fanout})", highlight=False)
