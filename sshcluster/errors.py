"""The one exception tree of sshcluster.

Every error raised on purpose is a :class:`SshclusterError`; its ``str()`` is a
message a user can act on (what was wrong, where, what to do), so the CLI can
print it as it is, without a traceback. Subclasses carry the data behind the
message (the file and line, the host, the check, the AWS error code) so that
code using the API can branch on it.
"""

from __future__ import annotations

from typing import Any


class SshclusterError(Exception):
    """Root of every error sshcluster raises on purpose.

    ``hint`` is an optional sentence on what to do about it.
    """

    #: Exit status the CLI uses for this kind of error.
    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message)

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nhint: {self.hint}"
        return self.message


class InventoryError(SshclusterError):
    """The inventory file is missing, is not YAML, or has a wrong value.

    ``path`` is the file, ``line`` the 1-based line (None when not known, e.g. for
    a missing file) and ``field`` the dotted field name such as ``hosts[2].ncore``.
    """

    exit_code = 2

    def __init__(
        self,
        problem: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.problem = problem
        where = path or "<inventory>"
        if line is not None:
            where += f" line {line}"
        message = f"{where}: {field}: {problem}" if field else f"{where}: {problem}"
        super().__init__(message, hint=hint)


class RenderError(SshclusterError):
    """The inventory is valid but cannot be turned into an R bootstrap as asked."""

    exit_code = 2


class QuotingError(SshclusterError, ValueError):
    """A string cannot be represented safely (for example it contains a NUL byte)."""

    exit_code = 2


class TestbedError(SshclusterError):
    """The local SSH test hosts cannot be built or torn down."""

    __test__ = False  # not a pytest test class, despite the name


class HostError(SshclusterError):
    """Something went wrong with one host; ``host`` names it, ``check`` the step."""

    def __init__(
        self, message: str, *, host: str, check: str | None = None, hint: str | None = None
    ) -> None:
        self.host = host
        self.check = check
        super().__init__(message, hint=hint)


class CheckFailed(SshclusterError):
    """A preflight check found at least one failed host; ``report`` has every host's outcome."""

    def __init__(self, message: str, *, report: Any, hint: str | None = None) -> None:
        self.report = report
        super().__init__(message, hint=hint)


class OutputExistsError(SshclusterError):
    """A command would replace a file that is not its own; ``path`` is the file."""

    exit_code = 2

    def __init__(self, message: str, *, path: str, hint: str | None = None) -> None:
        self.path = path
        super().__init__(message, hint=hint)


class UnsafePathError(SshclusterError):
    """A file cannot be written safely: a symlink another user planted, a symlink loop."""

    exit_code = 2


class PackagesError(SshclusterError):
    """The R package environment cannot be known or made: no reference, a lockfile that
    cannot be read, a sync that could not run at all."""


class SyncFailed(SshclusterError):
    """``sync`` left some host without the environment; ``report`` (a
    :class:`~sshcluster.packages.SyncReport`) holds every host's outcome."""

    def __init__(self, message: str, *, report: object, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.report = report


class EC2Error(SshclusterError):
    """AWS refused or failed a request; ``code`` is AWS's error code when there is one."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        operation: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.code = code
        self.operation = operation
        super().__init__(message, hint=hint)


class NoRegion(EC2Error):
    """No AWS region to look in: none given, no default one, and no cluster records on
    this machine (so, as far as this machine knows, no clusters)."""


class NoSuchCluster(EC2Error):
    """A cluster name that is no cluster in ``region``: no record of it on this machine and
    nothing there tagged with it. ``existing`` are the names of the clusters there are
    (in the regions looked in), so a mistyped name can be told from an empty account."""

    def __init__(self, message: str, *, name: str, region: str,
                 existing: tuple[str, ...] = (), hint: str | None = None) -> None:
        self.name = name
        self.region = region
        self.existing = existing
        super().__init__(message, hint=hint)


class ForeignCluster(EC2Error):
    """Cluster ``name`` in ``region`` belongs to someone else (its ``sshcluster:owner``
    tag names ``owners``); ``down`` and ``gc`` leave it alone unless told otherwise."""

    def __init__(self, message: str, *, name: str, region: str, owners: tuple[str, ...],
                 hint: str | None = None) -> None:
        self.name = name
        self.region = region
        self.owners = owners
        super().__init__(message, hint=hint)


class PushError(SshclusterError):
    """A push cannot start: a source that cannot be read, no destination, a bad name.

    (A host that fails during a push is not an exception: its verdict says why.)"""

    exit_code = 2


__all__ = [
    "CheckFailed",
    "EC2Error",
    "ForeignCluster",
    "HostError",
    "InventoryError",
    "NoRegion",
    "NoSuchCluster",
    "OutputExistsError",
    "PackagesError",
    "PushError",
    "QuotingError",
    "RenderError",
    "SshclusterError",
    "SyncFailed",
    "TestbedError",
    "UnsafePathError",
]


class HostLeased(HostError):
    """A host is leased to another job (``sshcluster run``); ``holder`` says which job
    holds it: ``job``, ``who``, ``since``, ``script`` (see :class:`sshcluster.jobs.Lease`)."""

    def __init__(self, message: str, *, host: str, holder: Any,
                 hint: str | None = None) -> None:
        self.holder = holder
        super().__init__(message, host=host, check="lease", hint=hint)
