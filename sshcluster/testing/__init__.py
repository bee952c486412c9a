"""Local SSH test hosts, and the helpers to test R code on them.

sshcluster's side system for tests, as ``fabric.testing`` is fabric's: a
:class:`Testbed` builds N real SSH hosts on this Linux machine (network namespaces, one
``sshd`` each; needs root), the registry lists and removes the testbeds on this machine,
:func:`run_r` runs an R script with a deadline, and :mod:`sshcluster.testing.fixtures`
(not imported here: it needs pytest) has the pytest fixtures::

    from sshcluster.testing import Testbed, down_all, list_testbeds, remove_testbed

    with Testbed(4) as tb:                    # torn down when the block ends, also on error
        tb.write_inventory("hosts.yaml")

The modules: :mod:`~sshcluster.testing.testbed` (:class:`Testbed`, :class:`TestHost`),
:mod:`~sshcluster.testing.spec` (its arguments, and whether this machine can build one),
:mod:`~sshcluster.testing.registry` (state files, list, remove, clean up),
:mod:`~sshcluster.testing.subnets`, :mod:`~sshcluster.testing.netns` (namespaces, links,
processes), :mod:`~sshcluster.testing.keys` and :mod:`~sshcluster.testing.sshd` (keys,
ssh files, sshd configs), :mod:`~sshcluster.testing.servers` (the sshd processes),
:mod:`~sshcluster.testing.faults` (iptables), :mod:`~sshcluster.testing.rscript`
(running R), :mod:`~sshcluster.testing.cluster` (a testbed's inventory and bootstrap in
one call, an R session a test talks to), :mod:`~sshcluster.testing.sshserver` (a real SSH
server inside the test process, no root needed), :mod:`~sshcluster.testing.containers` (a
podman store per host, and R images built offline) and :mod:`~sshcluster.testing.cli`
(``sshcluster testbed up|down``).
"""

from __future__ import annotations

from sshcluster.testing.cluster import interactive_r, write_cluster
from sshcluster.testing.hosts import TestHost
from sshcluster.testing.registry import (
    STATE_DIR,
    STATE_DIR_ENV,
    TestbedRecord,
    down_all,
    list_testbeds,
    remove_testbed,
)
from sshcluster.testing.rscript import RTimeout, run_r, run_r_code
from sshcluster.testing.spec import MAX_HOSTS, TestbedSpec, require_root_and_netns
from sshcluster.testing.sshd import free_port
from sshcluster.testing.sshserver import LocalServer, ServerThread
from sshcluster.testing.subnets import parse_subnet
from sshcluster.testing.testbed import Testbed

__all__ = [
    "MAX_HOSTS",
    "STATE_DIR",
    "STATE_DIR_ENV",
    "LocalServer",
    "RTimeout",
    "ServerThread",
    "TestHost",
    "Testbed",
    "TestbedRecord",
    "TestbedSpec",
    "down_all",
    "free_port",
    "interactive_r",
    "list_testbeds",
    "parse_subnet",
    "remove_testbed",
    "require_root_and_netns",
    "run_r",
    "run_r_code",
    "write_cluster",
]
