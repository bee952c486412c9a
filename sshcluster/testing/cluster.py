"""A testbed's cluster in a test: its inventory and R bootstrap in one call
(:func:`write_cluster`), and an R session the test talks to line by line
(:func:`interactive_r`).

    f = write_cluster(tb, tmp_path, options=RenderOptions(fork=False), ncore=1)
    with interactive_r(f"source({str(f)!r}); cat('up\\n'); readLines(file('stdin'), 1)",
                       tmp_path) as proc:
        assert proc.stdout.readline() == "up\\n"
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from sshcluster.bootstrap import RenderOptions, write_bootstrap
from sshcluster.inventory import load_inventory
from sshcluster.testing.hosts import TestHost
from sshcluster.testing.leftovers import launch_env
from sshcluster.testing.sshd import free_port
from sshcluster.testing.testbed import Testbed


def write_cluster(tb: Testbed, directory: Path, name: str = "cluster.R",
                  options: RenderOptions | None = None, *,
                  hosts: Sequence[TestHost] | None = None,
                  host_fields: Mapping[str, Mapping[str, Any]] | None = None,
                  defaults_rscript: str | None = None, ncore: int = 2,
                  **inventory: Any) -> Path:
    """Write an inventory of ``tb`` (``NAME.yaml``) and its bootstrap (``NAME``) to
    ``directory``, through the real loader; return the R file.

    ``hosts`` keeps only those hosts, ``host_fields`` adds fields to a host's entry (by
    address), ``defaults_rscript`` sets ``defaults.rscript``; the other keyword arguments
    are top-level keys of the inventory. A classic launch without a ``port`` gets a free
    one: makeCluster()'s own pick, at random in 11000-11999, may be another test's.
    """
    if "port" not in inventory and "classic" in (inventory.get("launch"),
                                                 options and options.launch):
        inventory["port"] = free_port()
    path = tb.write_inventory(directory / f"{name}.yaml", ncore=ncore, extra=inventory)
    if hosts is not None or host_fields or defaults_rscript:
        # Per-host fields are edited as data, then read back through the real loader.
        data = yaml.safe_load(path.read_text())
        keep = {h.address for h in hosts} if hosts is not None else None
        fields = host_fields or {}
        data["hosts"] = [{**entry, **fields.get(entry["host"], {})} for entry in data["hosts"]
                         if keep is None or entry["host"] in keep]
        if defaults_rscript:
            data["defaults"]["rscript"] = defaults_rscript
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = directory / name
    write_bootstrap(load_inventory(path), out, options)
    return out


@contextlib.contextmanager
def interactive_r(code: str, directory: Path, name: str = "session.R", *,
                  stdin: bool = True) -> Iterator[subprocess.Popen[str]]:
    """Run ``code`` (written to ``directory/name``) with Rscript, its stdout and stderr
    (and stdin, unless ``stdin=False``) pipes of the test's; killed when the block ends.

    R runs with the environment of :func:`~sshcluster.testing.leftovers.launch_env`, so
    that what a launch leaves behind can be found under ``directory``.
    """
    script = directory / name
    script.write_text(code)
    with subprocess.Popen(["Rscript", str(script)], env=launch_env(directory),
                          stdin=subprocess.PIPE if stdin else None, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        try:
            yield proc
        finally:
            proc.kill()


__all__ = ["interactive_r", "write_cluster"]
