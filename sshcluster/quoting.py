"""The quoting functions: every string that reaches R or a shell goes through one of them.

``r_string`` makes an R string literal; ``shell_quote`` makes one POSIX shell word;
``printable`` makes text from a host or a record safe to show on a terminal.
Both are total over the strings they accept and refuse (with :class:`QuotingError`)
the few they cannot represent, rather than producing something that means
another thing.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable

from sshcluster.errors import QuotingError

_R_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\v": "\\v",
}


#: The most bytes of a value, as written (escapes whole), in one line of
#: :func:`r_long_string`: a line stays under the 4,095 bytes R reads of it at a time.
R_PIECE = 2048


def r_long_string(value: str) -> str:
    """Return an R expression whose value is ``value``: :func:`r_string` for a short one,
    a ``paste0()`` of pieces of at most :data:`R_PIECE` bytes as written (escapes
    whole), one per line, for a long one. R reads a file that Rscript runs 4,095 bytes
    of a line at a time, and a literal cut there in the middle of an escape does not
    parse (``source()`` reads whole lines); and the fewer lines a statement has, the
    sooner Rscript has parsed it (it parses it again for each line)."""
    whole = r_string(value)
    if len(whole) <= R_PIECE:
        return whole
    pieces: list[str] = []
    piece: list[str] = []
    size = 2  # (the quotes)
    for ch in value:
        written = r_string(ch)[1:-1]
        if size + len(written) > R_PIECE:
            pieces.append('"' + "".join(piece) + '"')
            piece, size = [], 2
        piece.append(written)
        size += len(written)
    pieces.append('"' + "".join(piece) + '"')
    return "paste0(\n" + ",\n".join(pieces) + ")"


def r_string(value: str) -> str:
    """Return an R string literal (double-quoted, ASCII only) whose value is ``value``.

    Non-ASCII characters are written as ``\\u{XXXX}`` / ``\\U{XXXXXX}`` escapes so the
    generated file means the same thing whatever encoding R reads it in. NUL and
    lone surrogates cannot exist in an R string and raise :class:`QuotingError`.

    >>> r_string('a "quoted" $(word)')
    '"a \\\\"quoted\\\\" $(word)"'
    """
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in _R_ESCAPES:
            out.append(_R_ESCAPES[ch])
        elif code == 0:
            raise QuotingError("cannot put a NUL character into an R string")
        elif 0xD800 <= code <= 0xDFFF:
            raise QuotingError(f"cannot put the lone surrogate U+{code:04X} into an R string")
        elif code < 0x20 or code == 0x7F:
            # \u rather than \x: R refuses a literal that mixes \x and \u escapes.
            out.append(f"\\u{{{code:04x}}}")
        elif code < 0x80:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{{{code:04x}}}")
        else:
            out.append(f"\\U{{{code:06x}}}")
    out.append('"')
    return "".join(out)


def r_vector(values: Iterable[str]) -> str:
    """Return an R character vector ``c("a", "b")`` (``character(0)`` when empty)."""
    items = [r_string(v) for v in values]
    return f"c({', '.join(items)})" if items else "character(0)"


def shell_quote(value: str) -> str:
    """Return ``value`` as one POSIX shell word (single-quoted where needed).

    NUL cannot be passed in an argument vector and raises :class:`QuotingError`.
    """
    if "\x00" in value:
        raise QuotingError("cannot put a NUL character into a shell word")
    return shlex.quote(value)


def shell_join(words: Iterable[str]) -> str:
    """Return a shell command line made of ``words``, each quoted by :func:`shell_quote`."""
    return " ".join(shell_quote(w) for w in words)


#: Control characters a terminal acts on (C0 but newline and tab, DEL, C1), each shown
#: as its escape: a host's output or a record's field cannot move the cursor, retitle
#: the window or forge a line of ours.
_CONTROLS = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7f, *range(0x80, 0xa0)]
             if c not in (0x0a, 0x09)}


def printable(text: str, *, newlines: bool = True) -> str:
    """``text`` with the control characters a terminal would act on escaped (``\\x1b``);
    with ``newlines`` false, a newline too (for one line of a table)."""
    out = text.translate(_CONTROLS)
    return out if newlines else out.replace("\n", "\\n")


__all__ = ["printable", "r_long_string", "r_string", "r_vector", "shell_join",
           "shell_quote"]
