"""How a rendered bootstrap starts the cluster: :class:`RenderOptions` (what a caller
asks for) merged with the inventory's settings into one plan (:func:`plan_of`), checked
once: a classic launch cannot use a reverse tunnel, worker output or leases.

    launch_tunnel(inventory)                 # "reverse" for the fast launch by default
    launch_plan(inventory, RenderOptions(worker_output="console"))   # ("fast", "console")
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sshcluster.errors import RenderError
from sshcluster.inventory import Inventory, Launch, Register, Tunnel, worker_output
from sshcluster.primary import refuse_ipv6_primary
from sshcluster.protocol import REGISTER_NEEDS
from sshcluster.quoting import r_string
from sshcluster.ssh.command import CONNECT_TIMEOUT

if TYPE_CHECKING:
    from sshcluster.check.report import CheckReport

#: :attr:`RenderOptions.library_digest`'s default: the library ``sshcluster sync`` makes
#: for the inventory's own ``r_packages`` or ``lockfile`` (:func:`with_library`).
INVENTORY_LIBRARY = "auto"


def r_register(register: tuple[Register, ...]) -> str:
    """The bootstrap's ``register`` field: the registrations, and what each needs (the R
    code asks of a previous cluster's registrations too)."""
    def vec(v: tuple[str, ...]) -> str:
        return f"c({', '.join(r_string(x) for x in v)})" if v else "character(0)"
    needs = ", ".join(f"{k} = {vec(v)}" for k, v in REGISTER_NEEDS.items())
    return f"list(what = {vec(register)}, needs = list({needs}))"


@dataclass(frozen=True)
class RenderOptions:
    """How the bootstrap starts the cluster.

    ``connect_timeout`` bounds each ssh connection attempt; ``extra_ssh_options`` are
    ``-o`` options (``"Name=value"``) added to every ssh command. ``launch``, ``tunnel``
    ``fork`` and ``worker_output`` override the inventory's; ``register`` adds to the
    inventory's list.
    """

    connect_timeout: int = CONNECT_TIMEOUT
    extra_ssh_options: tuple[str, ...] = ()
    note: str | None = None
    launch: Launch | None = None
    tunnel: Tunnel | None = None
    fork: bool | None = None
    register: tuple[Register, ...] = ()
    worker_output: str | None = None
    #: Whether the cluster takes its hosts' leases (None: the inventory's ``lease``);
    #: ``sshcluster run`` renders with False, since the job holds them itself.
    lease: bool | None = None
    #: A directory (on the primary) for the workers' output lines, a file per host, in
    #: place of the primary's stdout (``sshcluster run``'s record; ``~`` is expanded).
    worker_logs: str | None = None
    #: The primary R runs on one of the hosts (a detached job's): behind the reverse
    #: tunnel every host's session asks for a port of its own, not the primary's, and
    #: that R puts sync's library first too, as its workers do.
    own_ports: bool = False
    #: The content hash of the R package environment ``sshcluster sync`` gave the
    #: hosts (``Reference.digest``): its library goes first on the workers' .libPaths(),
    #: before anything is loaded there. By default (:data:`INVENTORY_LIBRARY`) the
    #: inventory's own (:func:`with_library`); None: the hosts' own libraries only.
    library_digest: str | None = INVENTORY_LIBRARY


@dataclass(frozen=True)
class Plan:
    """The options and the inventory's settings, merged."""

    launch: Launch
    tunnel: Tunnel
    fork: bool
    register: tuple[Register, ...]
    worker_output: str
    lease: bool


def with_library(inventory: Inventory, options: RenderOptions,
                 checked: CheckReport | None = None) -> RenderOptions:
    """``options`` with the library the workers load their packages from first settled:
    by default (:data:`INVENTORY_LIBRARY`) the one ``sshcluster sync`` makes for the
    inventory's ``r_packages`` or ``lockfile`` (the digest of its reference, as sync and
    the check name it), none when the inventory names no packages; a digest or None the
    caller gave stays. ``checked``: the check of this inventory, whose reference is used
    as it is (the primary's R then lists its packages once per job, not twice); without
    it the reference is read here (the lockfile, or one Rscript run on the primary).

    Every rendering path goes through here (:func:`~sshcluster.bootstrap.render` does
    for a caller that did not), so the file and sync never disagree on the library."""
    if options.library_digest != INVENTORY_LIBRARY:
        return options
    if checked is not None:
        ref = checked.reference
    else:
        # (here: the packages package imports the bootstrap, which imports this module)
        from sshcluster.packages.reference import reference

        ref = reference(inventory)
    return replace(options, library_digest=ref.digest if ref else None)


def plan_of(inventory: Inventory, opts: RenderOptions) -> Plan:
    launch = opts.launch or inventory.launch
    asked = opts.tunnel or inventory.tunnel
    tunnel = asked or ("none" if launch == "classic" else "reverse")
    if launch == "classic" and asked == "reverse":
        raise RenderError("the classic launch cannot use a reverse tunnel",
                          hint="use the fast launch (the default) with the reverse tunnel")
    if tunnel == "none":  # (named as the user chose it: the options', else the inventory's)
        refuse_ipv6_primary(inventory, asked="--tunnel none" if opts.tunnel else None if (
            inventory.tunnel or inventory.launch == "classic") else "--launch classic")
    register = tuple(dict.fromkeys((*inventory.register, *opts.register)))
    fork = inventory.fork if opts.fork is None else opts.fork
    output = worker_output(opts.worker_output, lambda why: RenderError(
        f"worker_output: {why}")) if opts.worker_output else inventory.worker_output
    if launch == "classic" and output != "none":
        raise RenderError("worker_output is for the fast launch",
                          hint="use the fast launch, or makeCluster's own outfile")
    lease = inventory.lease if opts.lease is None else opts.lease
    if launch == "classic" and lease:
        raise RenderError("lease: true is for the fast launch (its ssh session on each "
                          "host holds the lease)",
                          hint="use the fast launch, or 'sshcluster run', which leases "
                               "the hosts for any launch")
    return Plan(launch=launch, tunnel=tunnel, fork=fork, register=register,
                 worker_output=output, lease=lease)


def launch_tunnel(inventory: Inventory, options: RenderOptions | None = None) -> Tunnel:
    """The tunnel the rendered file's launch will use, whatever sets it: an option, the
    inventory, or the default (the reverse tunnel for the fast launch, none for the
    classic one). The check takes its callback's route from it."""
    return plan_of(inventory, options or RenderOptions()).tunnel


def launch_plan(inventory: Inventory, options: RenderOptions | None = None
                ) -> tuple[Launch, str]:
    """The launch (``fast``/``classic``) and the ``worker_output`` the rendered file will
    use, from the options and the inventory."""
    plan = plan_of(inventory, options or RenderOptions())
    return plan.launch, plan.worker_output


__all__ = ["INVENTORY_LIBRARY", "Plan", "RenderOptions", "launch_plan", "launch_tunnel",
           "plan_of", "r_register", "with_library"]
