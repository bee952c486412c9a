"""``sshcluster run --results`` and ``--worker-output`` on real test hosts: the files
the workers wrote come back (kept apart by host where names collide), and what the
workers printed is in a log per host and, with ``--worker-output``, on stderr. A job that
is refused (its check fails, a host is leased to another job) makes no results'
directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import yaml

from sshcluster.inventory import load_inventory
from sshcluster.jobs import JobInfo, acquire
from sshcluster.testing import Testbed
from sshcluster.testing.fixtures import MakeTestbed
from tests.jobs.helpers import LEFTOVER, inventory
from tests.jobs.helpers import sshcluster as sshcluster_cli

#: Each worker writes results/common.txt (the same name on every host) and a file
#: named after its host; each prints a line.
SCRIPT = """\
invisible(parallel::clusterEvalQ(parallelCluster, {
  node <- Sys.info()[["nodename"]]
  dir.create("results/sub", recursive = TRUE, showWarnings = FALSE)
  writeLines(node, "results/common.txt")
  writeLines(node, file.path("results/sub", paste0(node, ".txt")))
  # (one string, one write: the pieces of cat("a", "b") from two workers on one host
  # can interleave in the output they share)
  cat(paste0("hello from ", node, "\\n"))
  message("note from ", node)
}))
cat("script done\\n")
"""


def test_results_come_back_and_workers_output_is_logged(testbed: Testbed,
                                                        tmp_path: Path) -> None:
    inv = inventory(testbed, tmp_path / "hosts.yaml", hosts=[0, 1])
    data = yaml.safe_load(inv.read_text())
    workdir = f"/tmp/sshcluster-results-{uuid.uuid4().hex[:8]}"
    data["workdir"] = workdir
    inv.write_text(yaml.safe_dump(data))
    script = tmp_path / "write.R"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    try:
        done = sshcluster_cli(["run", "--json", "--worker-output", "--results", str(out),
                               str(inv), str(script)], tmp_path / "state")
    finally:  # (the test hosts share this machine's /tmp)
        shutil.rmtree(workdir, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    # the two hosts share the filesystem, so both wrote the same workdir: every name
    # is on both hosts and is kept apart by host
    labels = [h["host"] for h in data["hosts"]]
    assert summary["results"]["errors"] == {}
    assert set(summary["results"]["files"]) == set(labels)
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert got == sorted(f"{label}/{name}" for label in labels
                         for name in ("common.txt", "sub/node1.txt", "sub/node2.txt"))
    # what the workers printed: live on stderr after the host, and in the logs
    for label in labels:
        assert f"[{label}] hello from node" in done.stderr, done.stderr
        log = (Path(summary["run_dir"]) / "workers" / f"{label}.log").read_text()
        assert log.count("hello from node") == 2 and log.count("note from node") == 2
    assert "script done" in done.stderr
    assert testbed.leftovers(LEFTOVER, wait=15) == {}


def test_names_on_one_host_come_back_as_they_are(make_testbed: MakeTestbed,
                                                 tmp_path: Path) -> None:
    """Hosts with a workdir of their own (a tmpfs each): a name found on one host lands
    at DIR/NAME, one found on both at DIR/HOST/NAME; a link a host holds is not
    followed or copied, so nothing lands outside DIR."""
    tb = make_testbed(2, private_dirs={"/srv": "16m"})
    inv = inventory(tb, tmp_path / "hosts.yaml")
    data = yaml.safe_load(inv.read_text())
    data["workdir"] = "/srv/job"
    inv.write_text(yaml.safe_dump(data))
    script = tmp_path / "write.R"
    script.write_text("""\
invisible(parallel::clusterEvalQ(parallelCluster, {
  node <- Sys.info()[["nodename"]]
  dir.create("results", showWarnings = FALSE)
  writeLines(node, file.path("results", paste0("only-", node, ".txt")))
  writeLines(node, "results/both.txt")
  if (!file.exists("results/escape")) file.symlink("/etc", "results/escape")
}))
""")
    out = tmp_path / "out"
    done = sshcluster_cli(["run", "--results", str(out), str(inv), str(script)],
                          tmp_path / "state")
    assert done.returncode == 0, done.stderr
    a, b = (h["host"] for h in data["hosts"])
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert got == sorted(["only-node1.txt", "only-node2.txt", a, f"{a}/both.txt", b,
                          f"{b}/both.txt"])
    assert (out / a / "both.txt").read_text() == "node1\n"
    assert (out / b / "both.txt").read_text() == "node2\n"
    assert tb.leftovers(LEFTOVER, wait=15) == {}


def test_a_workdir_under_home_written_with_a_tilde(testbed: Testbed, tmp_path: Path) -> None:
    """workdir: ~/NAME: the workers start in the home directory's NAME, and that is
    where the results are read from (the launch once made a directory named ~ there,
    while the results were looked for in $HOME/NAME: none came, and no error)."""
    inv = inventory(testbed, tmp_path / "hosts.yaml", hosts=[0])
    data = yaml.safe_load(inv.read_text())
    name = f"sshcluster-tilde-{uuid.uuid4().hex[:8]}"
    data["workdir"] = f"~/{name}"
    inv.write_text(yaml.safe_dump(data))
    home = subprocess.run(testbed.ssh_argv(testbed.hosts[0], "echo $HOME"), capture_output=True,
                          text=True, timeout=60, check=True).stdout.strip()
    assert home.startswith("/")
    script = tmp_path / "write.R"
    script.write_text("""\
invisible(parallel::clusterEvalQ(parallelCluster, {
  dir.create("results", showWarnings = FALSE)
  writeLines(getwd(), "results/where.txt")
}))
""")
    out = tmp_path / "out"
    try:
        done = sshcluster_cli(["run", "--results", str(out), str(inv), str(script)],
                              tmp_path / "state")
        assert done.returncode == 0, done.stderr
        assert (out / "where.txt").read_text() == f"{home}/{name}\n"
        assert not (Path(home) / "~").exists()
    finally:  # (the test hosts share this machine's files)
        shutil.rmtree(Path(home) / name, ignore_errors=True)
    assert testbed.leftovers(LEFTOVER, wait=15) == {}


def _refused(inv: Path, tmp_path: Path) -> str:
    """``sshcluster run --results DIR`` twice, each time for a job that is refused: DIR
    under directories that are not there yet (none of them may be made), and DIR an
    empty directory the user already had (it stays, empty). Returns the last stderr."""
    script = tmp_path / "never.R"
    script.write_text('writeLines("ran", "ran.txt")\n')
    kept = tmp_path / "kept"
    kept.mkdir()
    said = ""
    for out in (tmp_path / "new" / "deeper" / "out", kept):
        done = sshcluster_cli(["run", "--results", str(out), str(inv), str(script)],
                              tmp_path / "state")
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr
        said = done.stdout + done.stderr
    assert not (tmp_path / "new").exists()
    assert kept.is_dir() and not list(kept.iterdir())
    return said


def test_a_job_its_check_refuses_makes_no_results_directory(testbed: Testbed,
                                                              tmp_path: Path) -> None:
    """The check fails (a host's Rscript is not there): the job never runs, and
    --results DIR is not made (nor its parents); a DIR that was there stays."""
    inv = inventory(testbed, tmp_path / "hosts.yaml", hosts=[0])
    data = yaml.safe_load(inv.read_text())
    data["hosts"][0]["rscript"] = "/nonexistent/bin/Rscript"
    inv.write_text(yaml.safe_dump(data))
    assert "/nonexistent/bin/Rscript" in _refused(inv, tmp_path)
    assert testbed.leftovers(LEFTOVER, wait=15) == {}


def test_a_job_refused_for_a_leased_host_makes_no_results_directory(testbed: Testbed,
                                                                    tmp_path: Path) -> None:
    """A host is leased to another job: the job is refused, naming it, and --results
    DIR is not made (nor its parents); a DIR that was there stays."""
    inv = inventory(testbed, tmp_path / "hosts.yaml", hosts=[0, 1])
    holder = JobInfo.new("holder.R")
    with acquire(load_inventory(inventory(testbed, tmp_path / "one.yaml", hosts=[1])),
                 holder):
        assert f"is leased to job {holder.job}" in _refused(inv, tmp_path)
    assert testbed.leftovers(LEFTOVER, wait=15) == {}
