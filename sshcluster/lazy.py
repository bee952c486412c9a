"""A package's names, imported from their modules on first use (PEP 562).

``import sshcluster`` and each sub-package name their API in ``__init__``; importing
every module behind those names at once would make every command pay for asyncssh,
boto3 and the rest, whichever it needs. A package sets ``__getattr__ = exports(...)``
and lists the names under ``if TYPE_CHECKING:`` for the type checker.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

__all__ = ["exports", "listing"]


def exports(package: str, modules: dict[str, tuple[str, ...]]) -> Callable[[str], Any]:
    """The ``__getattr__`` of ``package``: ``modules`` maps each module (relative to the
    package) to the names it gives. A module of the package is an attribute too, as it
    would be had ``__init__`` imported it."""
    where = {name: f"{package}.{module}" for module, names in modules.items()
             for name in names}

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}"):
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def listing(namespace: dict[str, Any], modules: dict[str, tuple[str, ...]]
            ) -> Callable[[], list[str]]:
    """The ``__dir__`` of a package whose ``__getattr__`` is :func:`exports`'s."""
    def __dir__() -> list[str]:
        return sorted({*namespace, *(n for names in modules.values() for n in names)})

    return __dir__
