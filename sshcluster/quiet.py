"""What third parties may print when sshcluster is imported: only what a user can act on.

asyncssh's imports touch cryptography's deprecated DSA names, and each touch warns (10
lines, with cryptography >= 48) before any command of ours has said a word, on every
``sshcluster`` command and every ``import sshcluster``. A user can do nothing about it,
so that one category is ignored when it comes from asyncssh's own modules; every other
warning, and that one from anywhere else, still shows. Imported first by
``sshcluster/__init__.py``.
"""

from __future__ import annotations

import warnings

__all__: list[str] = []

try:
    from cryptography.utils import CryptographyDeprecationWarning
except ImportError:  # pragma: no cover - cryptography comes with asyncssh
    pass
else:
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning,
                            module=r"asyncssh(\.|$)")
