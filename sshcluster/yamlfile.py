"""Reading YAML files a user wrote: line numbers kept, hostile input refused.

The inventory (:mod:`sshcluster.inventory`) and the EC2 cluster spec
(:mod:`sshcluster.ec2`) are read the same way: :func:`load_yaml` gives :class:`Map` and
:class:`Seq` objects that remember the line of every key and item, and a
:class:`Reader` turns every mistake into an :class:`~sshcluster.errors.InventoryError`
naming the file, the line and the field.

A YAML file can also be an attack, or an accident that looks like one. Each of these is
a clear error (exit status 2), never a traceback, a hang or a memory blow-up:

* aliases that expand exponentially ("billion laughs") or refer to themselves: the
  document's values are counted, aliases expanded, before anything is built from them;
* nesting deeper than any inventory needs;
* numbers with more digits than any setting can have (Python refuses to convert
  integers of thousands of digits, with a ValueError);
* a file far larger than an inventory.

Messages never print a whole value: :func:`describe` shortens it.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from sshcluster.errors import InventoryError, UnsafePathError
from sshcluster.files import file_kind, read_regular

#: The largest file read (an inventory of 10,000 hosts is under 1 MiB).
MAX_BYTES = 4 * 1024 * 1024
#: The most values (scalars, lists, mappings) a document may hold once aliases are
#: expanded: generous for 10,000 hosts, far below what would exhaust memory.
MAX_VALUES = 200_000
#: The deepest nesting of lists and mappings.
MAX_DEPTH = 32
#: The most characters of a number (integers with more digits are no setting).
MAX_NUMBER_CHARS = 40

_SAFE_PATH = re.compile(r"^[^\x00-\x1f\x7f]+\Z")
_HOSTNAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\Z")
_NUMBER = re.compile(r"^\s*[+-]?[0-9]+\s*\Z")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?\Z")


class Map(dict[Any, Any]):
    """A YAML mapping with ``line`` (where it starts) and ``key_lines`` (each key's line)."""

    line: int = 0
    key_lines: dict[Any, int]


class Seq(list[Any]):
    """A YAML sequence with ``line`` (where it starts) and ``item_lines``."""

    line: int = 0
    item_lines: list[int]


class _Loader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every mapping key and sequence item."""


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int) -> None:
        self.key = key
        self.line = line


class _TooBig(Exception):
    def __init__(self, problem: str, line: int | None, hint: str | None = None) -> None:
        self.problem = problem
        self.line = line
        self.hint = hint


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Map:
    # Flattened, a merge key's (<<: *base) pairs come first; a key of the mapping's own
    # overrides one merged (as YAML says), but twice a key of its own is a mistake.
    own = {id(k) for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"}
    loader.flatten_mapping(node)
    result = Map()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    merged: set[Any] = set()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            duplicate = key in result and key not in merged
        except TypeError:  # unhashable key such as a list
            raise yaml.constructor.ConstructorError(
                None, None, "a key must be a plain word", key_node.start_mark
            ) from None
        (merged.discard if id(key_node) in own else merged.add)(key)
        if duplicate:
            raise _DuplicateKey(describe(key, quote=False), line)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = line
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> Seq:
    result = Seq(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


def _decimal(node: yaml.ScalarNode) -> None:
    # YAML 1.1 reads 1:00 as 60 (base 60), and an unquoted IPv6 address such as
    # 1:2:3:4:5:6:7:8 as a number too: never what an inventory means.
    if ":" in str(node.value):
        raise _TooBig(f"{node.value} would be read as a number in base 60 (YAML 1.1)",
                      node.start_mark.line + 1, f"quote it if it is text: '{node.value}'")
    if len(str(node.value)) > MAX_NUMBER_CHARS:
        raise _TooBig(f"a number with {len(str(node.value))} characters is no setting",
                      node.start_mark.line + 1)


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    _decimal(node)
    value: int = yaml.SafeLoader.construct_yaml_int(loader, node)
    return value


def _construct_float(loader: _Loader, node: yaml.ScalarNode) -> float:
    _decimal(node)
    value: float = yaml.SafeLoader.construct_yaml_float(loader, node)
    return value


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def _measure(root: yaml.Node) -> None:
    """Count the values of the node graph as if aliases were expanded, and its depth,
    without building anything: raise :class:`_TooBig` past the limits or on a cycle."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        kids: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            kids = [n for pair in node.value for n in pair]
        if children_done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > MAX_VALUES:
                raise _TooBig(f"the document expands to more than {MAX_VALUES:,} values "
                              "(aliases that repeat aliases?)", node.start_mark.line + 1)
            if depth[key] > MAX_DEPTH:
                raise _TooBig(f"values are nested more than {MAX_DEPTH} deep",
                              node.start_mark.line + 1)
            continue
        if key in size:
            continue
        if key in on_path:
            raise _TooBig("an alias refers to the value that contains it",
                          node.start_mark.line + 1)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in size)
        if len(on_path) > MAX_DEPTH + 1:
            raise _TooBig(f"values are nested more than {MAX_DEPTH} deep",
                          node.start_mark.line + 1)


def load_yaml(text: str, reader: Reader) -> Any:
    """Load YAML ``text`` with line numbers (:class:`Map`, :class:`Seq`).

    Syntax errors, duplicate keys and hostile documents become an
    :class:`~sshcluster.errors.InventoryError` naming ``reader.path`` and the line.
    """
    if len(text) > MAX_BYTES:
        raise reader.fail(f"the file is {len(text):,} characters long, more than any "
                          f"inventory ({MAX_BYTES:,})", line=None)
    loader = None
    try:
        loader = _Loader(text)  # (checks every character: ReaderError below)
        node = loader.get_single_node()
        if node is None:
            return None
        _measure(node)
        return loader.construct_document(node)
    except _DuplicateKey as e:
        raise reader.fail(f"key '{e.key}' appears twice", line=e.line) from None
    except _TooBig as e:
        raise reader.fail(f"refused: {e.problem}", line=e.line, hint=e.hint) from None
    except RecursionError:
        raise reader.fail(f"refused: values are nested more than {MAX_DEPTH} deep",
                          line=None) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        tab = _tab_line(text, line)
        if tab is not None:
            raise reader.fail("YAML does not allow tabs for indentation (a tab on this "
                              "line)", line=tab,
                              hint="indent with spaces only; most editors can convert "
                                   "tabs to spaces") from None
        problem = describe(e.problem or str(e), limit=200, quote=False)
        raise reader.fail(f"not valid YAML: {problem}", line=line,
                          hint="check the indentation and quoting near that line") from None
    except yaml.reader.ReaderError as e:  # (a NUL, a terminal's escape: never a traceback)
        char = e.character if isinstance(e.character, str) else chr(e.character or 0)
        raise reader.fail(f"not valid YAML: the character {char!r} (U+{ord(char):04X}) is "
                          "not allowed in YAML", line=text[:e.position].count("\n") + 1,
                          hint="remove it (a control character pasted from a terminal?)"
                          ) from None
    except (yaml.YAMLError, ValueError) as e:
        raise reader.fail(f"not valid YAML: {describe(str(e), limit=200, quote=False)}",
                          line=None) from None
    finally:
        if loader is not None:
            loader.dispose()


def _tab_line(text: str, line: int | None) -> int | None:
    """The line YAML's parser stopped at (or the one before), if a tab is in its indent
    or stands where YAML expected a value; None when no tab is to blame."""
    lines = text.splitlines()
    for n in (line, line - 1 if line else None):
        if n is not None and 0 < n <= len(lines):
            body = lines[n - 1]
            indent = body[: len(body) - len(body.lstrip(" \t"))]
            if "\t" in indent or re.search(r"[:-]\s*\t", body):
                return n
    return None


def read_text(path: str | os.PathLike[str], *, example: str,
              what: str = "an inventory file") -> str:
    """Read a UTF-8 text file of at most :data:`MAX_BYTES`; a missing, unreadable or huge
    file is an :class:`~sshcluster.errors.InventoryError`; ``example`` is the hint for a
    missing file (how to get a first one)."""
    name = str(path)
    try:
        # (a FIFO or device is refused at once, never waited on)
        raw = read_regular(path, limit=MAX_BYTES + 1)
    except UnsafePathError:
        try:
            kind = file_kind(os.stat(path).st_mode)
        except OSError:
            kind = "not a regular file"
        raise InventoryError(f"is {kind}, not {what}", path=name,
                             hint=f"name a regular file; {example}") from None
    except FileNotFoundError:
        raise InventoryError("no such file", path=name, hint=example) from None
    except IsADirectoryError:
        raise InventoryError(f"is a directory, not {what}", path=name) from None
    except OSError as e:
        raise InventoryError(f"cannot be read: {e.strerror}", path=name) from None
    if len(raw) > MAX_BYTES:
        raise InventoryError(f"is larger than {MAX_BYTES // (1024 * 1024)} MiB, not {what}",
                             path=name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InventoryError(f"is not a UTF-8 text file (byte 0x{raw[e.start]:02x})", path=name,
                             line=raw[:e.start].count(b"\n") + 1, hint="save it as UTF-8") from None


class Reader:
    """Validates one document, raising InventoryError with file, line and field."""

    def __init__(self, path: str | None, base_dir: Path) -> None:
        self.path = path
        self.base_dir = base_dir

    def fail(self, problem: str, *, line: int | None, field: str | None = None,
             hint: str | None = None) -> InventoryError:
        """The error to raise for ``problem`` at ``line`` in ``field``."""
        return InventoryError(problem, path=self.path, line=line, field=field, hint=hint)

    def mapping(self, value: Any, where: str, line: int | None, allowed: tuple[str, ...],
                required: tuple[str, ...] = (), hints: Mapping[str, str] | None = None
                ) -> Map:
        """``value`` as a mapping whose keys are all ``allowed`` and include ``required``
        (``hints``: what to say about a missing one)."""
        if not isinstance(value, Map):
            raise self.fail(f"expected a mapping of {', '.join(allowed)}, got {describe(value)}",
                            line=line, field=where)
        for key in value:
            if key not in allowed:
                close = closest(str(key), allowed)
                hint = f"did you mean '{close}'?" if close else (
                    f"allowed here: {', '.join(allowed)}")
                raise self.fail(f"unknown key {describe(key)}", line=value.key_lines[key],
                                field=join_field(where, describe(key, quote=False)),
                                hint=hint)
        for key in required:
            if key not in value:
                raise self.fail(f"'{key}' is required", line=value.line, field=where,
                                hint=(hints or {}).get(key))
        return value

    def line_of(self, m: Map, key: str) -> int:
        """The line of ``key`` in ``m`` (the mapping's own line if it has no such key)."""
        return m.key_lines.get(key, m.line)

    def integer(self, value: Any, where: str, line: int, *, low: int, high: int,
                what: str) -> int:
        """``value`` as a whole number in ``low..high``."""
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            if isinstance(value, str) and _NUMBER.match(value):
                raise self.fail(f"expected {what}, got {describe(value)}, which is quoted "
                                "text (a string), not a number", line=line, field=where,
                                hint=f"write it without quotes: {value.strip()}")
            raise self.fail(f"expected {what}, got {describe(value)}", line=line, field=where)
        return value

    def port(self, value: Any, where: str, line: int) -> int:
        """``value`` as a TCP port number."""
        return self.integer(value, where, line, low=1, high=65535,
                            what="a TCP port number (1-65535)")

    def path_value(self, value: Any, where: str, line: int) -> str:
        """``value`` as a file path, ``~`` expanded, relative to the file's directory."""
        if not isinstance(value, str) or not value or not _SAFE_PATH.match(value):
            raise self.fail(f"expected a file path, got {describe(value)}", line=line,
                            field=where)
        expanded = Path(os.path.expanduser(value))
        if not expanded.is_absolute():
            expanded = self.base_dir / expanded
        return str(expanded)

    def choice(self, value: Any, where: str, line: int, choices: tuple[str, ...]) -> str:
        """``value`` as one of ``choices`` (a "did you mean" hint when it is close)."""
        if not isinstance(value, str) or value not in choices:
            close = closest(str(value), choices) if isinstance(value, str) else None
            hint = f"did you mean '{close}'?" if close else None
            raise self.fail(f"expected one of {', '.join(choices)}, got {describe(value)}",
                            line=line, field=where, hint=hint)
        return value

    def boolean(self, value: Any, where: str, line: int) -> bool:
        """``value`` as true or false."""
        if not isinstance(value, bool):
            raise self.fail(f"expected true or false, got {describe(value)}", line=line,
                            field=where)
        return value

    def hostname(self, value: Any, where: str, line: int | None, *, allow_auto: bool = False) -> str:  # noqa: E501
        """``value`` as an IP address (normalised), a host name or an ssh alias; with
        ``allow_auto`` also ``auto``. Nothing a shell or ssh could take for an option."""
        if isinstance(value, bool) or value is None or isinstance(value, (Map, Seq)):
            raise self.fail(f"expected a host name or address, got {describe(value)}",
                            line=line, field=where)
        if not isinstance(value, str):
            # (YAML made a number or a date of it: 010 is 8, 10.10 is 10.1)
            raise self.fail(f"expected a host name or address, got {describe(value)}, "
                            "which YAML read as a number or a date", line=line, field=where,
                            hint="quote the host name: host: \"...\"")
        text = value
        if allow_auto and text == "auto":
            return text
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        address = self.address(text)
        if address is not None:
            return address
        if not _HOSTNAME.match(text) or len(text) > 253:
            raise self.fail(
                f"{describe(text)} is not a valid host name, IP address or ssh alias",
                line=line, field=where,
                hint="use letters, digits, '.', '-' and '_' only; no spaces, quotes or shell "
                     "characters, and no leading '-'",
            )
        return text

    def user(self, value: Any, where: str, line: int) -> str:
        """``value`` as a login name (no shell characters, no leading '-')."""
        if not isinstance(value, str) or not _USER.match(value) or len(value) > 64:
            raise self.fail(
                f"{describe(value)} is not a valid user name", line=line, field=where,
                hint="use letters, digits, '.', '-' and '_'; no spaces, quotes or shell "
                     "characters, and no leading '-'",
            )
        return value

    def address(self, value: Any) -> str | None:
        """``value`` as a normalised IP address, or None if it is not one."""
        text = str(value)
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            return None


def join_field(where: str, key: str) -> str:
    """``where.key``, or ``key`` at the top level."""
    return f"{where}.{key}" if where else key


def describe(value: Any, *, limit: int = 60, quote: bool = True) -> str:
    """How a value is shown in a message: its kind for lists and mappings, else its repr
    (or text, without ``quote``), cut to ``limit`` characters."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a yes/no value)"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int) and value.bit_length() > 128:
        return "a number with too many digits"
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def closest(word: str, choices: tuple[str, ...]) -> str | None:
    """The choice closest to ``word``, for a "did you mean" hint, or None."""
    matches = difflib.get_close_matches(word[:100], choices, n=1, cutoff=0.6)
    return matches[0] if matches else None


__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NUMBER_CHARS",
    "MAX_VALUES",
    "Map",
    "Reader",
    "Seq",
    "closest",
    "describe",
    "join_field",
    "load_yaml",
    "read_text",
]
