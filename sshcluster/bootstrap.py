"""The R bootstrap: an R file that a user ``source()``s on the primary to get ``parallelCluster``.

:func:`render` is a pure function of the inventory and the options: the same inputs give
the same bytes. Every value reaches R through :func:`~sshcluster.quoting.r_string` and
the ssh command through :func:`~sshcluster.quoting.shell_quote`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from sshcluster import __version__
from sshcluster.errors import RenderError
from sshcluster.inventory import AUTO, Host, Inventory
from sshcluster.quoting import r_string, shell_join

#: Seconds ssh waits for the TCP connection before giving up (OpenSSH ConnectTimeout).
CONNECT_TIMEOUT = 10


@dataclass(frozen=True)
class RenderOptions:
    """How the bootstrap starts the cluster.

    ``connect_timeout`` bounds each ssh connection attempt; ``extra_ssh_options`` are
    ``-o`` options (``"Name=value"``) added to every ssh command.
    """

    connect_timeout: int = CONNECT_TIMEOUT
    extra_ssh_options: tuple[str, ...] = ()
    note: str | None = None


def ssh_command(inventory: Inventory, host: Host | None = None,
                options: RenderOptions | None = None) -> list[str]:
    """Return the ssh command (as argv words, without the destination) used to reach ``host``.

    It never prompts (``BatchMode=yes``), gives up after ``connect_timeout`` seconds and
    keeps host key checking on (``StrictHostKeyChecking=yes``); the inventory's
    ``known_hosts`` file is used next to the user's own.
    """
    opts = options or RenderOptions()
    words = [
        "ssh",
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={opts.connect_timeout}",
        "-o", "StrictHostKeyChecking=yes",
    ]
    if inventory.known_hosts:
        # Both files: the user's own keys stay valid, the inventory's file adds to them.
        files = f'"~/.ssh/known_hosts" "{_ssh_path(inventory.known_hosts)}"'
        words += ["-o", f"UserKnownHostsFile={files}"]
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
    ``primary: auto`` (run ``sshcluster render --check`` to fill them in).
    """
    opts = options or RenderOptions()
    _require_known_ncore(inventory)
    if inventory.primary.host == AUTO:
        raise RenderError(
            "primary.host is 'auto'; the bootstrap needs the address the workers connect to",
            hint="run 'sshcluster render --check' to detect it, or write the address",
        )
    default_ssh = ssh_command(inventory, None, opts)
    lines = _header(inventory, opts)
    lines += [
        "",
        "# Stops the cluster started by this file (safe to call twice).",
        "sshcluster_stop <- function() {",
        "  cl <- get0(\"parallelCluster\", envir = globalenv())",
        "  if (inherits(cl, \"cluster\")) try(parallel::stopCluster(cl), silent = TRUE)",
        "  if (exists(\"parallelCluster\", envir = globalenv(), inherits = FALSE))",
        "    rm(\"parallelCluster\", envir = globalenv())",
        "  invisible(NULL)",
        "}",
        "if (inherits(get0(\"parallelCluster\", envir = globalenv()), \"cluster\")) {",
        "  message(\"sshcluster: stopping the cluster that an earlier source() started\")",
        "  sshcluster_stop()",
        "}",
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
        "",
    ]
    return "\n".join(lines)


def write_bootstrap(inventory: Inventory, path: str | os.PathLike[str],
                    options: RenderOptions | None = None) -> str:
    """Render the bootstrap for ``inventory`` and write it to ``path``; return the text."""
    text = render(inventory, options)
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return text


# --------------------------------------------------------------------------- pieces


def _require_known_ncore(inventory: Inventory) -> None:
    auto = [h.label for h in inventory.hosts if h.ncore is None]
    if auto:
        raise RenderError(
            f"ncore is 'auto' for {', '.join(auto)}; the bootstrap needs a number of workers",
            hint="run 'sshcluster render --check' to detect the core counts, or write them",
        )


def _header(inventory: Inventory, opts: RenderOptions) -> list[str]:
    source = os.path.abspath(inventory.path) if inventory.path else "(an inventory in memory)"
    n_hosts = len(inventory.hosts)
    port = f"port {inventory.port}" if inventory.port is not None else "a port R picks"
    lines = [
        f"# R cluster bootstrap generated by sshcluster {__version__}; do not edit, re-render.",
        f"# Inventory: {_comment(source)}",
        f"# {n_hosts} host{'s' if n_hosts != 1 else ''}, {inventory.workers} R worker"
        f"{'s' if inventory.workers != 1 else ''}; workers connect back to "
        f"{inventory.primary.host} on {port}.",
    ]
    if opts.note:
        lines += [f"# {_comment(line)}" for line in opts.note.splitlines()]
    lines += [
        "#",
        "# Use:  source(\"this-file.R\")   then parLapply(parallelCluster, ...) etc.",
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
