"""The R bootstrap: an R file that a user ``source()``s on the primary to get ``parallelCluster``.

:func:`render` is a pure function of the inventory and the options: the same inputs give
the same bytes. Every value reaches R through :func:`~sshcluster.quoting.r_string` and
the ssh command through :func:`~sshcluster.quoting.shell_quote`.

Two launches:

* ``fast`` (the default) embeds ``launcher.R``: one ssh connection per host starts all of
  that host's workers at once, the primary accepts them in any order, a failed host stops
  the launch within seconds with ssh's own message, and every ssh connection is a dead
  man's switch for its host's workers. By default (``fork``) each host starts one R and
  forks its workers from it, so a host pays for one R start-up, not one per worker.
  Values only known when the file is sourced (the port, temporary file names) are
  quoted there by R's ``shQuote``.
* ``classic``: ``parallel::makeCluster(type = "PSOCK", spec = ...)``, the call R users
  write by hand (one ssh, and one wait, per worker).

Example::

    from sshcluster.bootstrap import RenderOptions, write_bootstrap
    from sshcluster.inventory import load_inventory

    write_bootstrap(load_inventory("hosts.yaml"), "cluster.R",
                    RenderOptions(tunnel="reverse", register=("future",)))
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from sshcluster import __version__
from sshcluster.errors import RenderError
from sshcluster.files import atomic_write
from sshcluster.inventory import AUTO, Host, Inventory, Launch, Register, Tunnel
from sshcluster.quoting import r_string, shell_join

#: Seconds ssh waits for the TCP connection before giving up (OpenSSH ConnectTimeout).
CONNECT_TIMEOUT = 10


@dataclass(frozen=True)
class RenderOptions:
    """How the bootstrap starts the cluster.

    ``connect_timeout`` bounds each ssh connection attempt; ``extra_ssh_options`` are
    ``-o`` options (``"Name=value"``) added to every ssh command. ``launch``, ``tunnel``
    and ``fork`` override the inventory's; ``register`` adds to the inventory's list.
    """

    connect_timeout: int = CONNECT_TIMEOUT
    extra_ssh_options: tuple[str, ...] = ()
    note: str | None = None
    launch: Launch | None = None
    tunnel: Tunnel | None = None
    fork: bool | None = None
    register: tuple[Register, ...] = ()


@dataclass(frozen=True)
class _Plan:
    """The options and the inventory's settings, merged."""

    launch: Launch
    tunnel: Tunnel
    fork: bool
    register: tuple[Register, ...]


def _plan(inventory: Inventory, opts: RenderOptions) -> _Plan:
    launch = opts.launch or inventory.launch
    tunnel = opts.tunnel or inventory.tunnel
    if launch == "classic" and tunnel == "reverse":
        raise RenderError("the classic launch cannot use a reverse tunnel",
                          hint="use the fast launch (the default) with the reverse tunnel")
    register = tuple(dict.fromkeys((*inventory.register, *opts.register)))
    fork = inventory.fork if opts.fork is None else opts.fork
    return _Plan(launch=launch, tunnel=tunnel, fork=fork, register=register)


def ssh_command(inventory: Inventory, host: Host | None = None,
                options: RenderOptions | None = None) -> list[str]:
    """Return the ssh command (as argv words, without the destination) used to reach ``host``.

    It never prompts (``BatchMode=yes``), gives up after ``connect_timeout`` seconds and
    keeps host key checking on (``StrictHostKeyChecking=yes``). The inventory's
    ``known_hosts`` file is added to the files the user's ssh config names, never put in
    their place: ssh reads every ``UserKnownHostsFile`` and ``GlobalKnownHostsFile`` and
    then the keys ``KnownHostsCommand`` prints, here that file (nothing if it is missing,
    as for a missing UserKnownHostsFile).
    """
    opts = options or RenderOptions()
    words = [
        "ssh",
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={opts.connect_timeout}",
        "-o", "StrictHostKeyChecking=yes",
    ]
    if inventory.known_hosts:
        # KnownHostsCommand's arguments are split like a shell's words ("..." with \" and
        # \\ escapes), then %-tokens and ${VAR} are expanded in each.
        path = _ssh_path(inventory.known_hosts)
        if "${" in path:
            raise RenderError(f"the known_hosts path {path!r} contains '${{', which ssh "
                              "would expand", hint="rename or link the file")
        quoted = path.replace("\\", "\\\\")
        words += ["-o", "KnownHostsCommand=/bin/sh -c 'cat -- \"$0\" 2>/dev/null; exit 0' "
                        f'"{quoted}"']
    for extra in opts.extra_ssh_options:
        words += ["-o", extra]
    if host is not None:
        if host.identity_file:
            words += ["-i", _ssh_path(host.identity_file), "-o", "IdentitiesOnly=yes"]
        if host.ssh_port and host.ssh_port != 22:
            words += ["-p", str(host.ssh_port)]
    return words


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

    Raises :class:`RenderError` when the inventory still has ``ncore: auto`` or
    ``primary: auto`` (run ``sshcluster render --check`` to fill them in), or when the
    options contradict each other.
    """
    opts = options or RenderOptions()
    plan = _plan(inventory, opts)
    _require_known_ncore(inventory)
    if inventory.primary.host == AUTO and plan.tunnel != "reverse":
        raise RenderError(
            f"{_where(inventory)}primary.host is 'auto'; the bootstrap needs the address the "
            "workers connect to",
            hint="run 'sshcluster render --check' to detect it, or write the address",
        )
    lines = _header(inventory, opts, plan)
    if plan.launch == "fast":
        lines += _fast(inventory, opts, plan)
    else:
        lines += _classic(inventory, opts)
    lines += _register(plan)
    return "\n".join(lines)


def _stop_and_restart(extra: Sequence[str]) -> list[str]:
    return [
        "",
        "# Stops the cluster started by this file (safe to call twice).",
        "sshcluster_stop <- function() {",
        "  cl <- get0(\"parallelCluster\", envir = globalenv())",
        "  # Node by node, so that one dead worker does not keep the others running.",
        "  if (inherits(cl, \"cluster\"))",
        "    for (i in seq_along(cl)) try(parallel::stopCluster(cl[i]), silent = TRUE)",
        *extra,
        "  if (exists(\"parallelCluster\", envir = globalenv(), inherits = FALSE))",
        "    rm(\"parallelCluster\", envir = globalenv())",
        "  invisible(NULL)",
        "}",
    ]


def _restart_check(condition: str) -> list[str]:
    return [
        f"if ({condition}) {{",
        "  message(\"sshcluster: stopping the cluster that an earlier source() started\")",
        "  sshcluster_stop()",
        "}",
    ]


def _fast(inventory: Inventory, opts: RenderOptions, plan: _Plan) -> list[str]:
    per_host = [shell_join(ssh_command(inventory, h, opts)) for h in inventory.hosts]
    common = Counter(per_host).most_common(1)[0][0]
    lines = _stop_and_restart([
        "  # Closing the ssh connections stops whatever is left on the hosts.",
        "  if (is.environment(get0(\"sshcluster_state\", envir = globalenv())))",
        "    sshcluster_close(get(\"sshcluster_state\", envir = globalenv()))",
    ])
    lines += ["", LAUNCHER.rstrip("\n"), ""]
    lines += [
        "# What this session started: its ssh connections (kept across source()).",
        "if (!is.environment(get0(\"sshcluster_state\", envir = globalenv())))",
        "  assign(\"sshcluster_state\", new.env(), envir = globalenv())",
    ]
    lines += _restart_check("inherits(get0(\"parallelCluster\", envir = globalenv()), "
                            "\"cluster\") ||\n    length(sshcluster_state$ssh) || "
                            "!is.null(sshcluster_state$listener)")
    primary = "127.0.0.1" if plan.tunnel == "reverse" else inventory.primary.host
    lines += [
        "",
        "# The primary as the workers see it, and the machines with their R workers.",
        f"primary <- {r_string(primary)}",
        "machineAddresses <- list(",
    ]
    entries = [_fast_entry(h, own, common)
               for h, own in zip(inventory.hosts, per_host, strict=True)]
    lines += [f"  {e}{',' if i < len(entries) - 1 else ''}" for i, e in enumerate(entries)]
    lines += [
        ")",
        "",
        "# ssh never prompts, gives up on a dead host, and always verifies host keys.",
        f"rshcmd <- {r_string(common)}",
        "",
    ]
    if plan.tunnel == "reverse":
        lines += [
            "# Workers connect to 127.0.0.1 on their own host; ssh carries that port back",
            "# here (-R bound to 127.0.0.1, ExitOnForwardFailure: a taken port is an error).",
        ]
    port = f"{inventory.port}L" if inventory.port is not None else "NA"
    lines += [
        "parallelCluster <- sshcluster_launch(",
        f"  machineAddresses, primary, rshcmd, port = {port},",
        f"  tunnel = {'TRUE' if plan.tunnel == 'reverse' else 'FALSE'}, "
        f"fork = {'TRUE' if plan.fork else 'FALSE'}, setup_timeout = {inventory.setup_timeout},",
        "  state = sshcluster_state",
        ")",
    ]
    return lines


def _fast_entry(host: Host, own_ssh: str, common_ssh: str) -> str:
    fields = [f"host = {r_string(host.host)}"]
    if host.user:
        fields.append(f"user = {r_string(host.user)}")
    fields.append(f"ncore = {host.ncore}L")
    if own_ssh != common_ssh:
        fields.append(f"ssh = {r_string(own_ssh)}")
    if host.rscript:
        fields.append(f"rscript = {r_string(host.rscript)}")
    return f"list({', '.join(fields)})"


def _classic(inventory: Inventory, opts: RenderOptions) -> list[str]:
    default_ssh = ssh_command(inventory, None, opts)
    lines = _stop_and_restart([])
    lines += _restart_check("inherits(get0(\"parallelCluster\", envir = globalenv()), "
                            "\"cluster\")")
    lines += [
        "",
        "# The primary as the workers see it, and the machines with their R workers.",
        f"primary <- {r_string(inventory.primary.host)}",
        "machineAddresses <- list(",
    ]
    entries = [_machine_entry(inventory, host, default_ssh, opts) for host in inventory.hosts]
    lines += [f"  {e}{',' if i < len(entries) - 1 else ''}" for i, e in enumerate(entries)]
    lines += [
        ")",
        "",
        "# One spec entry per R worker: each machine repeated ncore times, as by hand.",
        "spec <- lapply(machineAddresses, function(machine) {",
        "  rep(list(machine[setdiff(names(machine), \"ncore\")]), machine$ncore)",
        "})",
        "spec <- unlist(spec, recursive = FALSE)",
        "",
        "# ssh never prompts, gives up on a dead host, and always verifies host keys.",
        f"rshcmd <- {r_string(shell_join(default_ssh))}",
        "",
        "# homogeneous = FALSE: each worker runs the Rscript on its own PATH (or the",
        "# per-host rscript above), not the primary's R path.",
        "parallelCluster <- parallel::makeCluster(",
        "  type = \"PSOCK\", master = primary, spec = spec,",
    ]
    if inventory.port is not None:
        lines.append(f"  port = {inventory.port}L,")
    lines += [
        "  rshcmd = rshcmd, homogeneous = FALSE",
        ")",
    ]
    return lines


def _register(plan: _Plan) -> list[str]:
    lines = [""]
    if "doparallel" in plan.register:
        lines += [
            "# foreach(...) %dopar% runs on the cluster.",
            "doParallel::registerDoParallel(parallelCluster)",
        ]
    if "future" in plan.register:
        lines += [
            "# future(), future_lapply() etc. run on the cluster.",
            "future::plan(future::cluster, workers = parallelCluster)",
        ]
    if len(lines) > 1:
        lines.append("")
    return lines


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
    auto = [h.label for h in inventory.hosts if h.ncore is None]
    if auto:
        raise RenderError(
            f"{_where(inventory)}ncore is 'auto' for {', '.join(auto)}; the bootstrap needs "
            "a number of workers",
            hint="run 'sshcluster render --check' to detect the core counts, or write them",
        )


def _header(inventory: Inventory, opts: RenderOptions, plan: _Plan) -> list[str]:
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
    if opts.note:
        lines += [f"# {_comment(line)}" for line in opts.note.splitlines()]
    lines += [
        "#",
        "# Use:  source(\"this-file.R\")   then parallel::parLapply(parallelCluster, ...) etc.",
        "# Stop: sshcluster_stop()   (or parallel::stopCluster(parallelCluster))",
    ]
    return lines


def _machine_entry(inventory: Inventory, host: Host, default_ssh: Sequence[str],
                   opts: RenderOptions) -> str:
    fields = [f"host = {r_string(host.host)}"]
    if host.user:
        fields.append(f"user = {r_string(host.user)}")
    fields.append(f"ncore = {host.ncore}L")
    own_ssh = ssh_command(inventory, host, opts)
    if list(own_ssh) != list(default_ssh):
        fields.append(f"rshcmd = {r_string(shell_join(own_ssh))}")
    if host.rscript:
        # R uses a node's own rscript only when the node is "homogeneous".
        fields += [f"rscript = {r_string(host.rscript)}", "homogeneous = TRUE"]
    return f"list({', '.join(fields)})"


#: The fast launcher's R code, embedded verbatim in every fast bootstrap.
LAUNCHER = resources.files("sshcluster").joinpath("launcher.R").read_text(encoding="utf-8")


def _ssh_path(path: str) -> str:
    """Escape a path for ssh's own config parsing: ssh expands ``%`` tokens in these paths."""
    if '"' in path:
        raise RenderError(f"the path {path!r} contains a double quote, which ssh cannot take",
                          hint="rename or link the file to a path without quotes")
    return path.replace("%", "%%")


def _comment(text: str) -> str:
    """Make ``text`` safe inside an R comment: one line, printable ASCII."""
    return "".join(ch if 0x20 <= ord(ch) < 0x7F else "?" for ch in text)


__all__ = ["CONNECT_TIMEOUT", "RenderOptions", "render", "spec_entries", "ssh_command",
           "write_bootstrap"]
