"""A package's names, imported from their modules on first use (PEP 562).

``import sshcluster`` and each sub-package name their API in ``__init__``; importing
every module behind those names at once would make every command pay for asyncssh,
boto3 and the rest, whichever it needs. A package sets ``__getattr__ = exports(...)``
and lists the names under ``if TYPE_CHECKING:`` for the type checker.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["exports"]


def exports(package: str, modules: dict[str, tuple[str, ...]]) -> Callable[[str], Any]:
    """The ``__getattr__`` of ``package``: ``modules`` maps each module (relative to the
    package) to the names it gives."""
    where = {name: f"{package}.{module}" for module, names in modules.items()
             for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name]), name)

    return __getattr__
