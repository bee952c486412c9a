"""The README's design tree, made from the package itself.

    python3 scripts/readme_tree.py           # print the tree
    python3 scripts/readme_tree.py --write   # put it into README.md, between its markers

Each line is an entry of ``sshcluster/``: a sub-package or module with the first phrase
of its docstring (up to the first ``:`` or ``.``), a folder of data with its files.
tests/test_design.py fails when README.md and the package differ.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sshcluster"
README = ROOT / "README.md"
BEGIN = "<!-- design tree: made by scripts/readme_tree.py, do not edit by hand -->"
END = "<!-- end of design tree -->"
_SKIP = {"__pycache__", "py.typed", "__init__.py", "__main__.py"}
_COLUMN = 18


def summary(path: Path) -> str:
    """The first phrase of the module's docstring, without reST markup."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    first = re.sub(r":[a-z]+:`~?(?:[\w.]+\.)?([^`]+)`", r"\1", first)
    first = first.replace("``", "`")
    return re.split(r"(?<!\.\.)[:.](?:\s|$)", first, maxsplit=1)[0].strip()


def entries(directory: Path) -> list[tuple[str, str]]:
    """(name, description) of each entry of ``directory``, folders first."""
    out: list[tuple[str, str]] = []
    for d in sorted(p for p in directory.iterdir() if p.is_dir() and p.name not in _SKIP):
        init = d / "__init__.py"
        if init.exists():
            out.append((f"{d.name}/", summary(init)))
        else:
            files = sorted(f.name + ("/" if f.is_dir() else "") for f in d.iterdir()
                           if f.name not in _SKIP)
            out.append((f"{d.name}/", " ".join(files)))
            for sub in sorted(p for p in d.iterdir() if p.is_dir() and p.name not in _SKIP):
                names = " ".join(sorted(f.name for f in sub.iterdir() if f.is_file()))
                out.append((f"{d.name}/{sub.name}/", names))
    for f in sorted(p for p in directory.iterdir() if p.is_file() and p.name not in _SKIP):
        out.append((f.name, summary(f) if f.suffix == ".py" else ""))
    return out


def tree() -> str:
    """The design tree, as the README shows it (a fenced block)."""
    lines = ["```text", "sshcluster/"]
    for name, text in entries(PACKAGE):
        lines.append(f"  {name:{_COLUMN - 2}}{text}".rstrip())
    return "\n".join([*lines, "```"])


def readme_with_tree(readme: str) -> str:
    """``readme`` with the part between the markers replaced by :func:`tree`."""
    start = readme.index(BEGIN) + len(BEGIN)
    end = readme.index(END)
    return readme[:start] + "\n" + tree() + "\n" + readme[end:]


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        README.write_text(readme_with_tree(README.read_text(encoding="utf-8")), encoding="utf-8")
    elif not argv:
        print(tree())
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
