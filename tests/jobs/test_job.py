"""``sshcluster run`` on real test hosts: a script's output and exit status, its ARGS,
its record, and nothing left on any host afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import sshcluster
from sshcluster.jobs import list_leases
from sshcluster.testing import Testbed
from tests.jobs.helpers import LEFTOVER, inventory
from tests.jobs.helpers import sshcluster as sshcluster_cli

SCRIPT = """\
args <- commandArgs(TRUE)
cat("args:", paste(args, collapse = "|"), "\\n")
nodes <- unlist(parallel::clusterEvalQ(parallelCluster, Sys.info()[["nodename"]]))
cat("nodes:", paste(sort(unique(nodes)), collapse = " "), "\\n")
cat("workers:", length(parallelCluster), "\\n")
message("to stderr")
"""


def test_a_script_runs_with_the_cluster_ready(testbed: Testbed, tmp_path: Path) -> None:
    inv = inventory(testbed, tmp_path / "hosts.yaml")
    script = tmp_path / "fit.R"
    script.write_text(SCRIPT)
    done = sshcluster_cli(["run", "--json", str(inv), str(script), "--", "10", "--model=a b"],
                          tmp_path / "state")
    assert done.returncode == 0, done.stderr
    # --json: the script's stdout went to stderr, stdout is the summary alone
    summary = json.loads(done.stdout)
    assert "args: 10|--model=a b" in done.stderr
    assert "nodes: node1 node2 node3 node4" in done.stderr
    assert "workers: 8" in done.stderr
    assert "to stderr" in done.stderr
    assert summary["status"] == 0 and summary["error"] is None
    assert summary["args"] == ["10", "--model=a b"]
    assert len(summary["hosts"]) == 4
    assert summary["versions"]["R"].startswith("4.")
    assert {"check", "lease", "launch", "script", "stop", "release"} <= set(summary["phases"])
    run_dir = Path(summary["run_dir"])
    assert run_dir.parent == tmp_path / "state" / "runs"
    assert (run_dir / "script.R").read_text() == SCRIPT
    assert "nodes: node1 node2 node3 node4" in (run_dir / "log").read_text()
    assert json.loads((run_dir / "run.json").read_text())["status"] == 0
    assert testbed.leftovers(LEFTOVER, wait=15) == {}
    assert all(lease.holder is None for lease in list_leases(sshcluster.load_inventory(inv)))


@pytest.mark.parametrize(("body", "status"), [("quit(status = 3)", 3),
                                               ("stop('boom')", 1)])
def test_a_failing_script_s_status_passes_through(testbed: Testbed, tmp_path: Path,
                                                  body: str, status: int) -> None:
    inv = inventory(testbed, tmp_path / "hosts.yaml", hosts=[0, 1])
    script = tmp_path / "fail.R"
    script.write_text(f"cat('before\\n')\n{body}\ncat('never\\n')\n")
    done = sshcluster_cli(["run", str(inv), str(script)], tmp_path / "state")
    assert done.returncode == status, done.stderr
    assert "before" in done.stdout and "never" not in done.stdout
    assert f"exit status {status}" in done.stderr
    assert testbed.leftovers(LEFTOVER, wait=15) == {}


def test_the_python_call_returns_the_result(testbed: Testbed, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSHCLUSTER_STATE_DIR", str(tmp_path / "state"))
    inv = inventory(testbed, tmp_path / "hosts.yaml", hosts=[2])
    script = tmp_path / "sum.R"
    script.write_text("cat(sum(unlist(parallel::parLapply(parallelCluster, 1:4, sqrt))))\n")
    out = tmp_path / "out"
    with out.open("wb") as f:
        result = sshcluster.run(inv, script, stdout=f)
    assert result.ok and result.status == 0 and result.signal is None
    assert out.read_text().startswith("6.14")
    assert testbed.leftovers(LEFTOVER, wait=15) == {}



@pytest.mark.parametrize("wait", [False, True], ids=["leases-while-checking", "wait"])
def test_an_inventory_with_lease_true_runs(testbed: Testbed, tmp_path: Path,
                                           wait: bool) -> None:
    """``lease: true`` in the inventory: a job leases its hosts itself, so its check does
    not try the launch's lease (it found the job's own lease sessions holding it, and
    failed every host as "leased to" this very job)."""
    inv = inventory(testbed, tmp_path / "hosts.yaml", hosts=[0, 1])
    data = yaml.safe_load(inv.read_text())
    data["lease"] = True
    inv.write_text(yaml.safe_dump(data, sort_keys=False))
    script = tmp_path / "sum.R"
    script.write_text("cat(sum(unlist(parallel::parLapply(parallelCluster, 1:4, sqrt))), '\\n')\n")
    done = sshcluster_cli(["run", *(["--wait"] if wait else []), str(inv), str(script)],
                          tmp_path / "state")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("6.14"), done.stdout
    assert testbed.leftovers(LEFTOVER, wait=15) == {}
    assert all(lease.holder is None for lease in list_leases(sshcluster.load_inventory(inv)))
