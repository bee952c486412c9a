"""Help texts that never split a word: click's formatter breaks a word longer than the
column (``paralle`` / ``lCluster``), and cuts a command's one-line summary with ``...``
(``(root, network...``). Here words move to the next line whole (a line may then run
past the terminal's edge), hyphenated words stay together, and every command's summary
is its help's first sentence, wrapped rather than cut.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Iterator

import click
from click.formatting import iter_rows, measure_table


def wrap(text: str, width: int, indent: str = "") -> str:
    """``text`` filled to ``width`` paragraph by paragraph, as click does (a paragraph
    whose first line is ``\\b`` is kept as written), without breaking any word."""
    out: list[str] = []
    for block in _paragraphs(text.expandtabs()):
        if block[0].strip() == "\b":
            out.append("\n".join(indent + line for line in block[1:]))
            continue
        inner = indent + " " * (len(block[0]) - len(block[0].lstrip()))
        out.append(textwrap.fill(" ".join(line.strip() for line in block), max(width, 20),
                                 initial_indent=inner, subsequent_indent=inner,
                                 break_long_words=False, break_on_hyphens=False))
    return "\n\n".join(out)


def _paragraphs(text: str) -> Iterator[list[str]]:
    block: list[str] = []
    for line in text.splitlines():
        if line.strip():
            block.append(line)
        elif block:
            yield block
            block = []
    if block:
        yield block


class HelpFormatter(click.HelpFormatter):
    """click's formatter with :func:`wrap` for paragraphs and definition lists."""

    def write_text(self, text: str) -> None:
        self.write(wrap(text, self.width, " " * self.current_indent))
        self.write("\n")

    def write_dl(self, rows: Iterable[tuple[str, str]], col_max: int = 30,
                 col_spacing: int = 2) -> None:
        rows = list(rows)
        widths = measure_table(rows)
        first_col = min(widths[0], col_max) + col_spacing
        for first, second in iter_rows(rows, len(widths)):
            self.write(f"{'':>{self.current_indent}}{first}")
            if not second:
                self.write("\n")
                continue
            if len(first) <= first_col - col_spacing:
                self.write(" " * (first_col - len(first)))
            else:
                self.write("\n" + " " * (first_col + self.current_indent))
            lines = wrap(second, max(self.width - first_col - 2, 10)).splitlines()
            self.write(f"{lines[0] if lines else ''}\n")
            for line in lines[1:]:
                self.write(f"{'':>{first_col + self.current_indent}}{line}\n" if line
                           else "\n")


class HelpContext(click.Context):
    """A context whose help uses :class:`HelpFormatter`."""

    formatter_class = HelpFormatter


def first_sentence(text: str) -> str:
    """The first sentence of a help text (up to the first ". " or blank line)."""
    paragraph = " ".join(text.strip().split("\n\n", 1)[0].split())
    head, dot, _ = paragraph.partition(". ")
    return head + ("." if dot else "")


def use_help_formatter(group: click.Group) -> None:
    """Give ``group`` and every command under it :class:`HelpContext`, and a summary
    (``short_help``) that is the first sentence of its help, never cut."""
    commands: list[click.Command] = [group]
    while commands:
        cmd = commands.pop()
        cmd.context_class = HelpContext
        if not cmd.short_help and cmd.help:
            cmd.short_help = first_sentence(cmd.help)
        if isinstance(cmd, click.Group):
            commands.extend(cmd.commands.values())


__all__ = ["HelpContext", "HelpFormatter", "first_sentence", "use_help_formatter", "wrap"]
