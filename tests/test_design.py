"""The package's shape: the import graph has no cycle and no arrow from a lower layer to a
higher one, and every module stays small enough to read in one sitting.

The graph is read from the source with :mod:`ast` (nothing is imported): every
``import`` and ``from ... import`` of an ``sshcluster`` module counts, also those inside
functions and under ``if TYPE_CHECKING:``, since each is an arrow in the design.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sshcluster"

#: The layers, lowest first: a module may import from its own layer and the ones below.
#: A module belongs to the layer of the longest prefix here that names it (``sshcluster``
#: alone is the package's ``__init__``, the public API).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("sshcluster.errors", "sshcluster.quiet", "sshcluster.version",
              "sshcluster.protocol", "sshcluster.net", "sshcluster.files",
              "sshcluster.quoting", "sshcluster.commands", "sshcluster.yamlfile",
              "sshcluster.helpformat", "sshcluster.lazy")),
    # What the inventory says, and what follows from it alone.
    ("nouns", ("sshcluster.requirements", "sshcluster.inventory", "sshcluster.dump",
               "sshcluster.connections", "sshcluster.primary",
               "sshcluster.packages.reference", "sshcluster.containers.spec")),
    # What OpenSSH does: config, connections, host keys, the ssh command line.
    ("ssh", ("sshcluster.ssh",)),
    # The preflight check, with the steps the sub-systems contribute to it.
    ("check", ("sshcluster.check", "sshcluster.preflight", "sshcluster.packages.drift",
               "sshcluster.push.shared", "sshcluster.push.marker",
               "sshcluster.push.fanout_check", "sshcluster.containers.check")),
    # The R bootstrap: the launch.
    ("launch", ("sshcluster.bootstrap", "sshcluster.launchplan", "sshcluster.statements",
                "sshcluster.containers.launch")),
    # The sub-systems built on the check and the launch.
    ("subsystems", ("sshcluster.ec2", "sshcluster.packages", "sshcluster.push",
                    "sshcluster.jobs", "sshcluster.testing", "sshcluster.init",
                    "sshcluster.containers",
                    "sshcluster.demo")),
    ("api", ("sshcluster",)),
    # The command line: the root command, and each sub-system's own commands.
    ("cli", ("sshcluster.cli", "sshcluster.__main__", "sshcluster.console",
             "sshcluster.ec2.cli", "sshcluster.jobs.cli", "sshcluster.packages.cli",
             "sshcluster.push.cli", "sshcluster.push.report", "sshcluster.testing.cli",
             "sshcluster.containers.cli", "sshcluster.status.cli")),
)

#: The most lines a Python module may have.
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports (``from pkg import mod`` is an arrow
    to ``pkg.mod`` when that is a module, else to ``pkg``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "sshcluster")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "sshcluster":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    """The import graph: module -> the package's modules it imports."""
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def layer_of(module: str) -> int | None:
    """The index in :data:`LAYERS` of the module's layer (None: in none)."""
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                    best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), and the
    modules that import themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_arrows_it_should() -> None:
    g = graph()
    assert "sshcluster.check.preflight" in g["sshcluster.check.steps"] | {
        m for m, deps in g.items() if "sshcluster.check.steps" in deps}
    assert "sshcluster.inventory" in g["sshcluster.bootstrap"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_every_module_has_a_layer() -> None:
    assert [m for m in graph() if layer_of(m) is None] == []


def test_no_import_goes_up_a_layer() -> None:
    upward = []
    for module, deps in sorted(graph().items()):
        mine = layer_of(module)
        for dep in sorted(deps):
            theirs = layer_of(dep)
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{module} ({LAYERS[mine][0]}) -> {dep} ({LAYERS[theirs][0]})")
    assert upward == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=module_name)
def test_every_module_is_small_enough_to_read(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module_name(path)} has {lines} lines: split it by idea"


def test_the_readme_shows_the_real_tree() -> None:
    """README.md's design tree is scripts/readme_tree.py's output for the package as it is
    (run ``python3 scripts/readme_tree.py --write`` after adding or moving a module)."""
    spec = importlib.util.spec_from_file_location(
        "readme_tree", PACKAGE.parent / "scripts" / "readme_tree.py")
    assert spec is not None and spec.loader is not None
    readme_tree = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(readme_tree)
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    assert readme_tree.tree() in readme
    assert readme_tree.readme_with_tree(readme) == readme
