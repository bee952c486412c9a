"""The generated file's R code as short top-level statements.

Rscript (``Rscript cluster.R``), R's console (code pasted or sent line by line) and
``R CMD BATCH`` parse a statement again from its start for each line they add to it:
one ``local({...})`` around the launcher's 2,000 lines took ``Rscript cluster.R`` 5.5 s
before it ran anything (``source()`` parses a file once). :func:`in_own_environment`
evaluates the launcher's code where ``local()`` would, in parts of about
:data:`STATEMENT_LINES` lines.
"""

from __future__ import annotations

#: The environment the launcher's code is defined in while the file runs (the one name
#: of ours besides those the bootstrap's docstring lists; the last statement, or an
#: error in any, removes it).
LAUNCH_ENV = ".sshcluster_launch"

#: Lines of the launcher's code in one statement of the file, at least: a part ends at
#: the next place it can (see :func:`_r_parts`), mostly within a few lines.
STATEMENT_LINES = 40


def in_own_environment(code: str, call: list[str]) -> list[str]:
    """The launcher's R ``code`` (definitions) and then ``call``, evaluated in an
    environment of their own, as ``local()`` would, but as many short statements:
    Rscript, R's console and R CMD BATCH parse a statement again from its start for each
    line they add to it, so that one ``local({...})`` of 2,000 lines took them seconds
    (``source()`` parses a file once).

    As in ``local()``, an error stops the rest: each part runs only while the
    environment is there, and an error in a part takes it out of the caller's (R's
    console goes on to the next statement after an error; source() and Rscript stop).
    The last statement takes it out before its call runs, whatever that call does."""
    gone = (f"error = function(e) rm({LAUNCH_ENV}, "
            "envir = parent.env(parent.env(environment())))")
    out = [f"{LAUNCH_ENV} <- new.env()  # (the launcher's code, defined below, part by part)"]
    for part in _r_parts(code, STATEMENT_LINES):
        out += [f"if (exists({LAUNCH_ENV!r}, inherits = FALSE)) evalq(withCallingHandlers({{",
                part, f"}}, {gone}), {LAUNCH_ENV})"]
    take = (f"local({{ e <- {LAUNCH_ENV}; rm({LAUNCH_ENV}, envir = parent.env(environment()));"
            " e })")
    return [*out, f"if (exists({LAUNCH_ENV!r}, inherits = FALSE)) evalq({{", *call,
            f"}}, {take})", ""]


def _r_parts(code: str, most: int) -> list[str]:
    """``code`` (R: top-level statements) cut into parts of about ``most`` lines, each
    whole statements: a part ends at a line of depth 0 (outside strings and comments)
    that a blank line follows and whose next line starts a statement at column 0 (not
    ``else``, a bracket or an operator), the line before not ending in an operator."""
    lines = code.split("\n")
    depth_after = _depths(code)
    parts: list[str] = []
    start = 0
    for i in range(len(lines) - 2):
        if i + 1 - start < most or depth_after[i] or lines[i + 1].strip():
            continue
        nxt = next((ln for ln in lines[i + 2:] if ln.strip()), "")
        last = lines[i].rstrip()
        if not any(q in last for q in "'\"`"):  # (then a # starts a comment)
            last = last.split("#", 1)[0].rstrip()
        starts = nxt[:1].isalpha() or nxt.startswith(("#", "."))
        if not starts or nxt.startswith("else") or last.endswith(_CONTINUED):
            continue
        parts.append("\n".join(lines[start:i + 1]))
        start = i + 1
    parts.append("\n".join(lines[start:]))
    return [p for p in parts if p.strip()]


#: The ends of a line that continue its expression on the next.
_CONTINUED = ("<-", "=", ",", "+", "-", "*", "/", "|", "&", "(", "[", "{", "%", "~", "else",
              "<", ">", "!")


def _depths(code: str) -> list[int]:
    """The bracket depth at the end of each line of R ``code``, outside strings,
    backquoted names and comments (a string spanning lines keeps its line open: its
    depth is given as 1)."""
    out: list[int] = []
    depth, quote, escaped, comment = 0, "", False, False
    for ch in code:
        if ch == "\n":
            comment = False
            out.append(depth + (1 if quote else 0))
            continue
        if comment:
            continue
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "'\"`":
            quote = ch
        elif ch == "#":
            comment = True
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
    out.append(depth + (1 if quote else 0))
    return out
