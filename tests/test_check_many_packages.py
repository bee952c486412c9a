"""A reference as long as a big project's renv.lock, checked on real test hosts with real
R. The check's R code grows with the reference's packages, and R drops an ``-e``
expression of 10,000 characters or more (each space counting as three): the code must
reach R another way, and the verdict name the missing packages instead of failing on
R's refusal. (The same for R in a container's image: tests/containers/.)"""

from __future__ import annotations

from pathlib import Path

import sshcluster
from sshcluster.inventory import load_inventory
from sshcluster.packages.drift import SHOWN
from sshcluster.testing import Testbed
from sshcluster.testing.rpackages import installed_here, many_packages, write_lockfile

#: More packages than a realistic renv.lock's 450, where the check's -e broke.
MANY = 600


def test_a_lockfile_of_600_packages_gets_the_missing_ones_named(
        testbed: Testbed, tmp_path: Path) -> None:
    r_version, foreach = installed_here("foreach")
    absent = many_packages(MANY)
    lock = write_lockfile(tmp_path / "renv.lock", {**absent, "foreach": foreach},
                          r_version=r_version)
    path = testbed.write_inventory(tmp_path / "hosts.yaml", ncore=1,
                                   extra={"lockfile": str(lock)})
    report = sshcluster.check(load_inventory(path), timeout=60)
    names = sorted(absent)
    for h in report.hosts:
        assert h.failed == ["packages"], (h.label, h.checks)
        assert h.checks["rscript"].detail.endswith(f"(R {r_version})"), h.checks["rscript"]
        assert h.checks["callback"].status == "ok", h.checks["callback"]
        step = h.checks["packages"]
        assert step.detail == (f"not installed: {', '.join(names[:SHOWN])} "
                               f"and {MANY - SHOWN} more"), step
        # every package answered for: the 600 absent, foreach at its version
        assert h.packages == {**dict.fromkeys(absent), "foreach": foreach}
