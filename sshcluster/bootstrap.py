"""The R bootstrap: an R file that a user ``source()``s on the primary to get ``parallelCluster``.

:func:`render` gives the same bytes for the same inventory and options. With
``r_packages`` (and no library named in the options) it reads the primary's versions of
them, which name sync's library, with one Rscript run on the primary
(:func:`~sshcluster.launchplan.with_library`); with a ``lockfile``, from the file.
Every value reaches R through :func:`~sshcluster.quoting.r_string` and the ssh command
through :func:`~sshcluster.quoting.shell_quote`.

The file is R source: a version check, the names R users know from the hand-written
snippet (``primary``, ``machineAddresses``, ``spec``), then, in an environment of its own
(as ``local()`` would, but in short statements: :mod:`sshcluster.statements`), the
launcher's R code (``sshcluster/R/*.R``, pasted as it is) and one call with the data
Python supplies. Only ``parallelCluster``, ``sshcluster_stop`` and (fast launch)
``sshcluster_repair`` reach the user's global environment besides those three.

Two launches:

* ``fast`` (the default, ``R/launch/*.R``): one ssh connection per host starts all of that
  host's workers at once, every connection to the R port proves it holds a per-worker
  secret before anything it sends is read, a failed or lost host is an error naming it
  with ssh's own message, and every ssh connection is a dead man's switch for its
  host's workers. By default (``fork``) each host starts one R and forks its workers
  from it. Values only known when the file is sourced (the port, temporary file names)
  are quoted there by R's ``shQuote``.
* ``classic`` (``R/classic.R``): ``parallel::makeCluster(type = "PSOCK", spec = ...)``,
  the call R users write by hand (one ssh, and one wait, per worker).

Example::

    from sshcluster.bootstrap import RenderOptions, write_bootstrap
    from sshcluster.inventory import load_inventory

    write_bootstrap(load_inventory("hosts.yaml"), "cluster.R",
                    RenderOptions(tunnel="reverse", register=("future",)))
"""

from __future__ import annotations

import os
import textwrap
from collections import Counter
from collections.abc import Sequence
from importlib import resources

from sshcluster.connections import (
    R_CONNECTIONS,
    R_MAX_CONNECTIONS,
    connection_note,
    connections_needed,
    workers_note,
)
from sshcluster.containers.launch import container_config, refuse_classic
from sshcluster.errors import RenderError
from sshcluster.files import atomic_write
from sshcluster.inventory import AUTO, Host, Inventory
from sshcluster.launchplan import (
    Plan,
    RenderOptions,
    launch_plan,
    launch_tunnel,
    plan_of,
    r_register,
    with_library,
)
from sshcluster.net import R_PORT_RANGE, r_address
from sshcluster.protocol import (
    HOST_SHELL,
    LAUNCH_CONNECTIONS,
    RELAY_MOST_WORKERS,
    USER_CONNECTIONS,
    WORKER_SHARED_R,
)
from sshcluster.quoting import r_long_string, r_string, shell_join
from sshcluster.ssh.command import CONNECT_TIMEOUT, known_hosts_option, rendered_ssh_command
from sshcluster.statements import in_own_environment
from sshcluster.version import __version__


def _known_hosts_forms(inventory: Inventory) -> str:
    """Both forms of :func:`known_hosts_option` as an R value: the file picks one."""
    if not inventory.known_hosts:
        return "NULL"
    current = shell_join(known_hosts_option(inventory, before_8_5=False))
    legacy = shell_join(known_hosts_option(inventory, before_8_5=True))
    return f"c(current = {r_long_string(current)},\n  before_8_5 = {r_long_string(legacy)})"


def spec_entries(inventory: Inventory) -> list[dict[str, str]]:
    """Return the PSOCK spec as R users build it by hand: each host repeated ``ncore``
    times, in inventory order, as ``{"host": ..., "user": ...}`` (plus ``rscript`` where
    the inventory sets it)."""
    _require_known_ncore(inventory)
    spec: list[dict[str, str]] = []
    for host in inventory.hosts:
        entry = {"host": host.host}
        if host.user:
            entry["user"] = host.user
        if host.rscript:
            entry["rscript"] = host.rscript
        spec.extend(dict(entry) for _ in range(host.ncore or 0))
    return spec


def render(inventory: Inventory, options: RenderOptions | None = None) -> str:
    """Return the text of the R bootstrap file for ``inventory``.

    With ``r_packages`` or a ``lockfile``, the workers load their packages first from
    the library ``sshcluster sync`` made for them: unless the options name it (or
    None), its name is read here (:func:`~sshcluster.launchplan.with_library`).

    Raises :class:`RenderError` when the inventory still has ``ncore: auto`` or
    ``primary: auto`` (run ``sshcluster render --check`` to fill them in), or when the
    options contradict each other.
    """
    opts = with_library(inventory, options or RenderOptions())
    plan = plan_of(inventory, opts)
    _require_known_ncore(inventory)
    refuse_classic(inventory, plan.launch)  # (containers)
    if inventory.primary.host == AUTO and plan.tunnel != "reverse":
        raise RenderError(
            f"{_where(inventory)}primary is 'auto' (or left out), but with tunnel: none the "
            "workers connect straight to the primary, so the file needs its address as they "
            "see it",
            hint="run 'sshcluster render --check' to detect it, write 'primary: ADDRESS', "
                 "or leave tunnel: none out (the default reverse tunnel needs no address)",
        )
    lines = _header(inventory, opts, plan)
    note = connection_note(inventory, launch=plan.launch, fork=plan.fork, lease=plan.lease)
    if note:
        lines += ["#", *(f"# {line}" for line in textwrap.wrap(note, 86))]
    lines += [
        "",
        "# Everything below needs R 4.1 (TCP no-delay sockets); nothing below runs before this.",
        f"if (getRversion() < {r_string(MIN_R_VERSION)})",
        f"  stop({r_string(f'sshcluster: this file needs R {MIN_R_VERSION} or later; this is R ')}"
        ", as.character(getRversion()), call. = FALSE)",
    ]
    # (through the tunnel the workers reach 127.0.0.1 on their own host; the primary's
    # own address, where the inventory knows it, is still what users mean by it; an
    # IPv4-mapped one as its IPv4 address, which R's IPv4-only sockets can reach)
    primary = r_address(inventory.primary.host) if inventory.primary.host != AUTO \
        else "127.0.0.1"
    lines += [
        "",
        "# The primary as the workers see it, and the machines with their R workers.",
        f"primary <- {r_string(primary)}",
        *([f"workdir <- {r_long_string(inventory.workdir)}"
           "  # where the workers start, on every host"] if inventory.workdir else []),
        "machineAddresses <- list(",
        *_r_items([_machine(inventory, h, opts, plan) for h in inventory.hosts]),
        ")",
        "",
        "# One spec entry per R worker: each machine repeated ncore times, as by hand.",
        "spec <- lapply(machineAddresses, function(machine) {",
        "  rep(list(machine[setdiff(names(machine), \"ncore\")]), machine$ncore)",
        "})",
        "spec <- unlist(spec, recursive = FALSE)",
        "",
    ]
    code, call = (_fast if plan.launch == "fast" else _classic)(inventory, opts, plan)
    code = [_R_SOURCES["common.R"], *code]
    if opts.library_digest:  # (start() puts it first, before it registers anything)
        code += [_R_SOURCES["library_dir.R"], _R_SOURCES["library.R"]]
    lines += in_own_environment("\n".join(code), call)
    text = "\n".join(lines)
    longest = max(len(line.encode()) for line in text.splitlines())
    if longest >= RSCRIPT_LINE:  # (long values are pieces: only a huge one gets here)
        raise RenderError(
            f"{_where(inventory)}a value of the inventory makes a line of {longest:,} bytes in "
            f"the file, and Rscript reads at most {RSCRIPT_LINE - 1:,} bytes of a line",
            hint="shorten the longest value (a path, a host's ssh options)")
    return text


#: Rscript reads a file it runs this many bytes of a line at a time, less one: a string
#: literal cut there in the middle of an escape does not parse (quoting.r_long_string).
RSCRIPT_LINE = 4096
#: The oldest R the generated file runs on.
MIN_R_VERSION = "4.1.0"

#: The launcher's R code and the scripts it runs, pasted as they are into the file.
_R_SOURCES = {
    name: resources.files("sshcluster").joinpath("R").joinpath(name).read_text(encoding="utf-8")
    for name in ("common.R", "proof.R", "classic.R", *WORKER_SHARED_R, "worker.R",
                 "library_dir.R", "library.R", *HOST_SHELL, "remote.sh", "supervisor.sh",
                 "read_script.sh", "relay.pl")
}
#: The fast launch's host script: the shell functions it shares with the check's, then
#: ``R/remote.sh``.
REMOTE_SCRIPT = "".join(_R_SOURCES[name] for name in (*HOST_SHELL, "remote.sh"))
#: The fast launch's R code, one idea per file, pasted in this order.
LAUNCH_FILES = ("start.R", "session.R", "accept.R", "node.R", "future.R", "stop.R",
                "repair.R", "show.R")
_LAUNCH_R = "".join(resources.files("sshcluster").joinpath("R").joinpath("launch").joinpath(
    name).read_text(encoding="utf-8") for name in LAUNCH_FILES)


def _compact(r_code: str) -> str:
    """R code without its comment lines and indentation (none of its strings spans lines):
    Rscript refuses an ``-e`` expression much longer than 10,000 characters."""
    return "\n".join(line.strip() for line in r_code.splitlines()
                     if line.strip() and not line.lstrip().startswith("#"))


#: The code each worker runs: a function (the proof, shared with the primary, then the
#: worker; not local(): see R/worker.R) that ``R/remote.sh`` hands R in the environment
#: and calls. Compacted: it reaches every host on each launch.
WORKER_CODE = "\n".join([
    "function() {", *(_compact(_R_SOURCES[name]) for name in WORKER_SHARED_R),
    _compact(_R_SOURCES["proof.R"]),
    # (the relay for big messages behind lanes, perl's: one R string, its comments out)
    "RELAY_PL <- " + r_string("\n".join(
        line for line in _R_SOURCES["relay.pl"].splitlines()
        if line.strip() and not line.lstrip().startswith("#")) + "\n"),
    _compact(_R_SOURCES["worker.R"]), "}", ""])

#: The command line ssh runs on each worker host (the last line of ``R/read_script.sh``):
#: it reads the host's script from the session's stdin up to :data:`END_OF_SCRIPT`, and
#: runs it only if it arrived whole, whatever the account's login shell.
READ_SCRIPT = _R_SOURCES["read_script.sh"].rstrip("\n").rsplit("\n", 1)[-1]
END_OF_SCRIPT = "# sshcluster: end of script"


def _r_items(items: Sequence[str], indent: str = "  ") -> list[str]:
    """R list items, one per line, commas between them."""
    return [f"{indent}{item}{',' if i < len(items) - 1 else ''}" for i, item in enumerate(items)]


def _machine(inventory: Inventory, host: Host, opts: RenderOptions, plan: Plan) -> str:
    """One machineAddresses entry: ``list(host=, user=, ncore=)`` as users write it (plus the
    host's ``rscript``, and for the classic launch the fields makeCluster needs)."""
    fields = [f"host = {r_string(host.host)}"]
    if host.user:
        fields.append(f"user = {r_string(host.user)}")
    fields.append(f"ncore = {host.ncore}L")
    if plan.launch == "classic":
        own_ssh = rendered_ssh_command(inventory, host, opts)
        if own_ssh != rendered_ssh_command(inventory, None, opts):
            fields.append(f"rshcmd = {r_long_string(shell_join(own_ssh))}")
        if host.rscript:
            # R uses a node's own rscript only when the node is "homogeneous".
            fields += [f"rscript = {r_string(host.rscript)}", "homogeneous = TRUE"]
    elif host.rscript:
        fields.append(f"rscript = {r_string(host.rscript)}")
    return f"list({', '.join(fields)})"


def _r_value(value: str | int | bool | Sequence[str] | None) -> str:
    """An R value for a config field."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return f"{value}L"
    if isinstance(value, str):
        return r_string(value)
    return f"c({', '.join(r_string(v) for v in value)})" if value else "character(0)"


def _library(inventory: Inventory, opts: RenderOptions) -> tuple[str, str]:
    """The config field that names sync's library: each host's root and the digest."""
    if not opts.library_digest:
        return ("library", "NULL")
    roots = list(dict.fromkeys(inventory.library_of(h) for h in inventory.hosts))
    return ("library", f"list(roots = {_r_value(roots)}, digest = "
                       f"{r_string(opts.library_digest)}, here = {_r_value(opts.own_ports)})")


def _call(function: str, config: Sequence[tuple[str, str]]) -> list[str]:
    return [f"{function}(list(", *_r_items([f"{k} = {v}" for k, v in config]), "))"]


def _fast(inventory: Inventory, opts: RenderOptions, plan: Plan
          ) -> tuple[list[str], list[str]]:
    """The fast launch's code, and its call."""
    per_host = [shell_join(rendered_ssh_command(inventory, h, opts, known_hosts=False))
                for h in inventory.hosts]
    common = Counter(per_host).most_common(1)[0][0]
    own = ["NULL" if ssh == common else r_long_string(ssh) for ssh in per_host]
    port = "NA_integer_" if inventory.port is None else f"{inventory.port}L"
    return [_R_SOURCES["proof.R"], _LAUNCH_R], [
        "# ssh never prompts, gives up on a dead host, and always verifies host keys.",
        *_call("start", [
            ("machines", "machineAddresses"),
            ("workers_reach", r_string("127.0.0.1") if plan.tunnel == "reverse" else "primary"),
            ("ssh", r_long_string(common)),
            ("host_ssh", "list(\n" + ",\n".join(own) + ")"),
            ("known_hosts", _known_hosts_forms(inventory)),
            ("port", port),
            ("port_range", f"c({R_PORT_RANGE[0]}L, {R_PORT_RANGE[1]}L)"),
            ("connections", f"c(launch = {LAUNCH_CONNECTIONS}L, user = {USER_CONNECTIONS}L)"),
            ("tunnel", _r_value(plan.tunnel == "reverse")),
            ("fork", _r_value(plan.fork)),
            ("relay", _r_value(inventory.relay)),
            ("relay_most", f"{RELAY_MOST_WORKERS}L"),
            ("setup_timeout", _r_value(inventory.setup_timeout)),
            ("locale", _r_value(inventory.locale)),
            ("workdir", _r_value(inventory.workdir)),
            _library(inventory, opts),
            ("register", r_register(plan.register)),
            ("worker_output", _r_value(plan.worker_output)),
            ("lease", _r_value(plan.lease)),
            ("worker_logs", _r_value(opts.worker_logs)),
            ("own_ports", _r_value(opts.own_ports)),
            # remote_script (containers); its shell functions are the check's too
            *container_config(inventory, REMOTE_SCRIPT),
            ("supervisor_script", r_long_string(_R_SOURCES["supervisor.sh"])),
            ("worker_code", r_long_string(WORKER_CODE)),
            ("read_script", r_string(READ_SCRIPT)),
            ("end_of_script", r_string(END_OF_SCRIPT)),
        ]),
    ]


def _classic(inventory: Inventory, opts: RenderOptions, plan: Plan
             ) -> tuple[list[str], list[str]]:
    """The classic launch's code, and its call."""
    port = "NA_integer_" if inventory.port is None else f"{inventory.port}L"
    return [_R_SOURCES["classic.R"]], [
        "# ssh never prompts, gives up on a dead host, and always verifies host keys.",
        "# homogeneous = FALSE: each worker runs the Rscript on its own PATH (or the",
        "# per-host rscript above), not the primary's R path.",
        *_call("start_classic", [
            ("master", "primary"),
            ("spec", "spec"),
            ("rshcmd", r_long_string(shell_join(rendered_ssh_command(inventory, None, opts)))),
            ("known_hosts", _known_hosts_forms(inventory)),
            ("port", port),
            ("workdir", _r_value(inventory.workdir)), ("locale", _r_value(inventory.locale)),
            _library(inventory, opts),
            ("register", r_register(plan.register)),
        ]),
    ]


def write_bootstrap(inventory: Inventory, path: str | os.PathLike[str],
                    options: RenderOptions | None = None) -> str:
    """Render the bootstrap for ``inventory`` and write it to ``path``; return the text.

    Written by :func:`~sshcluster.files.atomic_write`: a regular file is replaced whole
    (a reader never sees half a file); a symlink of the caller's is followed, one that
    another user planted is refused (:class:`~sshcluster.errors.UnsafePathError`), and
    anything else that exists (``/dev/stdout``, a pipe) is written to as it is. Raises
    :class:`RenderError` when the file cannot be written.
    """
    text = render(inventory, options)
    try:
        atomic_write(path, text)
    except OSError as e:
        raise RenderError(f"cannot write {os.fspath(path)}: {e.strerror or e}",
                          hint="check that the directory exists and is writable") from None
    return text


# --------------------------------------------------------------------------- pieces


def _where(inventory: Inventory) -> str:
    return f"{inventory.path}: " if inventory.path else ""


def _require_known_ncore(inventory: Inventory) -> None:
    auto = [h for h in inventory.hosts if h.ncore is None]
    if auto:
        lines = sorted({n for h in auto if (n := h.line_of("ncore") or h.line) is not None})
        where = inventory.path or "<inventory>"
        if lines:
            where += f" line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines))}"
        raise RenderError(
            f"{where}: ncore is 'auto' for {', '.join(h.label for h in auto)}; the "
            "bootstrap needs a number of workers",
            hint="run 'sshcluster render --check' to detect the core counts, or write them "
                 "on those lines",
        )


def _header(inventory: Inventory, opts: RenderOptions, plan: Plan) -> list[str]:
    source = os.path.abspath(inventory.path) if inventory.path else "(an inventory in memory)"
    n_hosts = len(inventory.hosts)
    port = f"port {inventory.port}" if inventory.port is not None else "a port R picks"
    where = (f"through an ssh reverse tunnel on {port}" if plan.tunnel == "reverse"
             else f"to {inventory.primary.host} on {port}")
    how = ("classic launch: parallel::makeCluster" if plan.launch == "classic"
           else "fast launch: one ssh per host, workers forked from one R per host"
           if plan.fork else "fast launch: one ssh per host, one Rscript per worker")
    lines = [
        f"# R cluster bootstrap generated by sshcluster {__version__}; do not edit, re-render.",
        f"# Inventory: {_comment(source)}",
        f"# {n_hosts} host{'s' if n_hosts != 1 else ''}, {inventory.workers} R worker"
        f"{'s' if inventory.workers != 1 else ''}; workers connect back {where}.",
        f"# {how}.",
    ]
    note = opts.note or inventory.check_note
    if note:
        lines += [f"# {_comment(line)}" for line in note.splitlines()]
    if opts.library_digest:
        root = inventory.library_of(inventory.hosts[0]) if inventory.hosts else ""
        lines += [f"# R packages: first from sshcluster's library {_comment(root)}/R-x.y/"
                  f"PLATFORM/OS/{_comment(opts.library_digest)}", "# (made by 'sshcluster "
                  "sync'; x.y, PLATFORM and OS are each worker's R and OS release)."]
    lines += [
        "#",
        "# Use:  source(\"this-file.R\")   then parallel::parLapply(parallelCluster, ...) etc.",
        "# Stop: sshcluster_stop()   (or parallel::stopCluster(parallelCluster))",
    ]
    if plan.launch == "fast":
        lines += [
            "# After a lost host or an interrupted call: parallelCluster <- sshcluster_repair()",
            "# Defines: parallelCluster, primary, machineAddresses, spec, sshcluster_stop,",
            "# sshcluster_repair. Only workers that prove they hold this launch's secrets",
            "# are admitted; with a direct connection R's traffic is not encrypted (the",
            "# reverse tunnel is).",
        ]
    else:
        lines += [
            "# Defines: parallelCluster, primary, machineAddresses, spec, sshcluster_stop.",
            "# WARNING: the classic launch is R's own makeCluster(), which cannot keep",
            "# strangers out: while it waits for its workers, anything that reaches the R",
            "# port can run code in this R session. Use it only where nobody else can reach",
            "# that port, or use the fast launch.",
        ]
    return lines


def _comment(text: str) -> str:
    """Make ``text`` safe inside an R comment: one line, printable ASCII."""
    return "".join(ch if 0x20 <= ord(ch) < 0x7F else "?" for ch in text)


__all__ = [
    "CONNECT_TIMEOUT",
    "R_CONNECTIONS",
    "R_MAX_CONNECTIONS",
    "RenderOptions",
    "connection_note",
    "connections_needed",
    "launch_plan",
    "launch_tunnel",
    "plan_of",
    "render",
    "spec_entries",
    "with_library",
    "workers_note",
    "write_bootstrap",
]
