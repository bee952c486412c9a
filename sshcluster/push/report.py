"""A push's verdicts for people: one line per host, then the totals."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from sshcluster.push.result import PushResult
from sshcluster.quoting import printable

__all__ = ["print_push"]


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover - the loop returns


def _shown(text: str) -> str:
    """``text`` for one line of the terminal: what a host said, or a local path, with no
    control character a terminal would act on (an escape sequence a host printed shows
    as ``\\x1b[...``), and a name that is not UTF-8 with its bytes as ``\\xe9``; then
    escaped for rich's markup."""
    safe = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return escape(printable(safe, newlines=False))


def print_push(result: PushResult, console: Console) -> None:
    """Print one verdict per host, the symlinks left out and the totals."""
    hosts = [_shown(h.host) for h in result.hosts]
    width = max((len(h) for h in hosts), default=0)
    for h, host in zip(result.hosts, hosts, strict=True):
        mark = "[green]ok    [/]" if h.ok else "[red]FAILED[/]"
        console.print(f"{mark} {host.ljust(width)}  {_shown(h.detail)}", highlight=False)
    for path in result.skipped:
        console.print(f"[yellow]skipped[/] {_shown(path)}: a symlink that leads outside its "
                      "source (or not a file), not followed", highlight=False)
    ok = sum(h.ok for h in result.hosts)
    console.print(f"{ok}/{len(result.hosts)} hosts have the files in {_shown(result.dest)}; "
                  f"{_size(result.bytes_out)} sent from here in {result.seconds:.1f} s "
                  f"({result.fanout})", highlight=False)
