"""``register: [future]`` / ``[doparallel]`` need those packages here and on every
worker: a host whose R cannot load them is named, with R's reason, and the launch
stops whole (real test hosts, real R)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sshcluster.bootstrap import RenderOptions
from sshcluster.inventory import Launch
from sshcluster.testing import Testbed
from sshcluster.testing.cluster import write_cluster
from sshcluster.testing.fixtures import run_r_in_test
from sshcluster.testing.leftovers import nothing_left


def without_site_library(path: Path) -> Path:
    """An rscript whose R sees only R's own library: no doParallel, foreach or future
    (Debian's r-cran-* packages are in the site library)."""
    path.write_text("#!/bin/sh\nexport R_LIBS_SITE=/nonexistent R_LIBS_USER=/nonexistent\n"
                    'exec /usr/bin/Rscript "$@"\n')
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("launch", ["fast", "classic"])
def test_a_host_without_doparallel_is_named_and_the_launch_stops(
        testbed: Testbed, tmp_path: Path, launch: Launch) -> None:
    bare = testbed.hosts[1]
    f = write_cluster(testbed, tmp_path, options=RenderOptions(launch=launch), ncore=1,
                      hosts=testbed.hosts[:2], register=["doparallel"],
                      host_fields={bare.address: {"rscript": str(without_site_library(
                          tmp_path / "bare-Rscript"))}})
    done = run_r_in_test(f'source("{f}")\ncat("launched\\n")\n', tmp_path)
    assert done.returncode != 0 and "launched" not in done.stdout
    said = done.stderr
    assert "register: doparallel needs doParallel and foreach" in said, said
    assert f"  {bare.address}: doParallel: there is no package called" in said, said
    assert f"  {bare.address}: foreach: there is no package called" in said, said
    assert f"{testbed.hosts[0].address}:" not in said, said
    assert "r_packages" in said and "sshcluster sync" in said
    assert nothing_left(testbed, marker=tmp_path) == {}
