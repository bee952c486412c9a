"""The Future API's own conformance suite (future.tests) on our cluster, against the
same suite on a local ``makeCluster()``: with relays (the default, through the tunnel)
every test that passes locally passes, and none fails that does not fail locally.

future.tests is not in Debian's archive: tests/data/r/future.tests_0.7.0.tar.gz is its
0.7.0 release (LGPL >= 2.1, Henrik Bengtsson; its DESCRIPTION, NAMESPACE, R/ and inst/
only), the last that works with the future 1.31 Debian 12 ships. It is installed into the
test's own library.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from sshcluster.testing import Testbed
from sshcluster.testing.cluster import write_cluster
from sshcluster.testing.fixtures import run_r_in_test
from sshcluster.testing.leftovers import nothing_left

TARBALL = Path(__file__).parent / "data" / "r" / "future.tests_0.7.0.tar.gz"
#: "✔ 12. title (n tests) (time)" and "✖ 37. title (1 test) (time)", one a line
VERDICT = re.compile(r"([✔✖★T]) +(\d+)\. (.*?) \(\d+ tests?\)")


def verdicts(out: str) -> dict[str, str]:
    """Each test's title and mark, from future.tests' report (its progress lines are
    overwritten with carriage returns: only what follows the last one counts)."""
    found = {}
    for line in out.splitlines():
        m = VERDICT.search(line.rsplit("\r", 1)[-1])
        if m:
            found[f"{m.group(2)}. {m.group(3)}"] = m.group(1)
    return found


def test_future_tests_pass_as_on_a_local_cluster(testbed: Testbed, tmp_path: Path) -> None:
    lib = tmp_path / "Rlib"
    lib.mkdir()
    subprocess.run(["R", "CMD", "INSTALL", "--no-test-load", "-l", str(lib), str(TARBALL)],
                   check=True, capture_output=True, timeout=300)
    f = write_cluster(testbed, tmp_path, hosts=testbed.hosts[:2], ncore=2)
    # (both in the test's directory: one of the tests plots, in R's working directory)
    check = f"""
        setwd({str(tmp_path)!r})
        .libPaths(c({str(lib)!r}, .libPaths()))
        future.tests::check(plan = "cluster, workers = parallelCluster", timeout = 120,
                            exit_value = FALSE)
    """
    ours = run_r_in_test(f"source({str(f)!r})\n{check}\nsshcluster_stop()\n", tmp_path,
                         timeout=600)
    assert ours.returncode == 0, ours.stderr
    local = run_r_in_test(f"setwd({str(tmp_path)!r})\n"
                          f"parallelCluster <- parallel::makeCluster(4)\n{check}\n"
                          "parallel::stopCluster(parallelCluster)\n", tmp_path, timeout=600)
    assert local.returncode == 0, local.stderr
    got, want = verdicts(ours.stdout), verdicts(local.stdout)
    # (the whole suite ran: the 54 tests of 0.7.0)
    assert len(want) == 54 and list(want.values()).count("✔") >= 45, local.stdout
    assert got == want, "\n".join(f"{t}: ours {got.get(t)}, local {want.get(t)}"
                                  for t in sorted(set(got) | set(want))
                                  if got.get(t) != want.get(t))
    assert nothing_left(testbed, marker=tmp_path) == {}
