"""Every launch mode meets every kind of inventory, on real test hosts.

Each cell of the matrix renders a file for one launch mode (:data:`LAUNCH_MODES`: the
fast launch through the tunnel or straight, forked or fresh, and the classic launch)
from one kind of inventory, then launches it, computes, stops, and counts what is left
everywhere (:func:`nothing_left`). The hosts are this module's own: ``node2``'s sshd
listens on its own port (``ssh_port: 2222``, its known_hosts entry ``[address]:2222``)
and ``node1`` has a ``rscript:`` of its own (a wrapper that marks its workers), so every
cell also proves those two. The kinds of inventory:

* ``known_hosts``: the inventory names the host keys and the client key;
* ``user_ssh``: it names neither; they are in the user's own ``~/.ssh`` (config and
  known_hosts), in a mount namespace of the test's (:class:`Client`); R runs with a bare
  environment, as cron gives one (no locale variables, no HOME);
* ``primary_auto``: ``primary: auto``, filled in by the check where the launch needs it
  (``render --check``), left to the tunnel where it does not.

The fast modes then meet the faults a repair must undo with the sibling worker still
running: a killed worker and a killed ssh session, after which ``sshcluster_repair()``
must bring the cluster back to full size.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sshcluster.bootstrap import RenderOptions, write_bootstrap
from sshcluster.check.preflight import check, verified_inventory
from sshcluster.inventory import load_inventory
from sshcluster.quoting import r_string
from sshcluster.testing import Testbed
from sshcluster.testing.client import Client
from sshcluster.testing.fixtures import R_TIMEOUT, build_testbed, run_r_in_test
from sshcluster.testing.leftovers import nothing_left
from sshcluster.testing.modes import FAST_MODES, LAUNCH_MODES

pytestmark = pytest.mark.slow

NCORE = 2
#: node1's own Rscript: a wrapper that its workers can be told by.
WRAPPER = "#!/bin/sh\nSCT_RSCRIPT=wrapper exec Rscript \"$@\"\n"

CELL = """
source({file})
cl <- parallelCluster
cat("n", length(cl), "\\n")
cat("nodes", unlist(parallel::clusterEvalQ(cl, Sys.info()[["nodename"]])), "\\n")
cat("rscript", unlist(parallel::clusterEvalQ(cl, Sys.getenv("SCT_RSCRIPT", "plain"))), "\\n")
cat("sum", sum(parallel::parSapply(cl, 1:20, function(i) i * i)), "\\n")
sshcluster_stop()
cat("stopped", exists("parallelCluster"), "\\n")
"""


@pytest.fixture(scope="module")
def tb(request: pytest.FixtureRequest, testbed_env: None) -> Iterator[Testbed]:
    """Two hosts of this module's own; node2's sshd listens on 2222."""
    yield build_testbed(request, 2, host_ssh_ports={2: 2222})


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rscript") / "Rscript-wrapper"
    path.write_text(WRAPPER)
    path.chmod(0o755)
    return path


def _inventory(tb: Testbed, d: Path, wrapper: Path, *, keys: bool, **extra: Any) -> Path:
    path = tb.write_inventory(d / "hosts.yaml", ncore=NCORE, keys=keys, extra=extra)
    doc = yaml.safe_load(path.read_text())
    doc["hosts"][0]["rscript"] = str(wrapper)
    assert doc["hosts"][1]["ssh_port"] == 2222
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _cell(tb: Testbed, d: Path, wrapper: Path, mode: str, kind: str) -> tuple[str, str, int]:
    """Render and run one cell; return R's stdout, stderr and exit status."""
    options: RenderOptions = LAUNCH_MODES[mode]
    out = d / "cluster.R"
    env = {"TMPDIR": str(d)}
    code = CELL.format(file=r_string(str(out)))
    if kind == "user_ssh":
        client = Client(d / "client")
        client.trust(tb)
        write_bootstrap(load_inventory(_inventory(tb, d, wrapper, keys=False)), out, options)
        (d / "cell.R").write_text(code)
        proc = client.run("Rscript", str(d / "cell.R"), timeout=R_TIMEOUT,
                          env={"PATH": "/usr/local/bin:/usr/bin:/bin", **env})
        return proc.stdout, proc.stderr, proc.returncode
    extra = {"primary": {"host": "auto", "user": tb.user}} if kind == "primary_auto" else {}
    inventory = load_inventory(_inventory(tb, d, wrapper, keys=True, **extra))
    if kind == "primary_auto" and (options.launch == "classic" or options.tunnel == "none"):
        # what `render --check` does: the check finds the address the hosts reach
        report = check(inventory, ssh_config=[], timeout=30,
                       tunnel=False)
        inventory = verified_inventory(report, inventory)
        assert inventory.primary.host == tb.primary_address
    write_bootstrap(inventory, out, options)
    r = run_r_in_test(code, d, env=env)
    return r.stdout, r.stderr, r.returncode


@pytest.mark.parametrize("kind", ["known_hosts", "user_ssh", "primary_auto"])
@pytest.mark.parametrize("mode", list(LAUNCH_MODES))
def test_every_mode_with_every_inventory(tb: Testbed, wrapper: Path, tmp_path: Path,
                                         mode: str, kind: str) -> None:
    assert nothing_left(tb, wait=10) == {}, "an earlier test left processes behind"
    stdout, stderr, status = _cell(tb, tmp_path, wrapper, mode, kind)
    assert status == 0, f"{stdout}\n{stderr}"
    lines = dict(line.split(" ", 1) for line in stdout.splitlines())
    assert lines["n"].strip() == str(NCORE * 2)
    assert lines["nodes"].split() == ["node1"] * NCORE + ["node2"] * NCORE
    assert lines["rscript"].split() == ["wrapper"] * NCORE + ["plain"] * NCORE
    assert lines["sum"].strip() == str(sum(i * i for i in range(1, 21)))
    assert lines["stopped"].strip() == "FALSE"
    assert nothing_left(tb, marker=tmp_path) == {}


REPAIR = """
source({file})
say <- function(key, ...) cat(key, ..., "\\n", sep = "|")
try_msg <- function(expr) tryCatch(expr, error = conditionMessage)
size <- function() say("size", length(parallelCluster),
                       unlist(parallel::clusterEvalQ(parallelCluster, Sys.info()[["nodename"]])))
shown <- function(key, cl) say(key, paste(capture.output(print(cl)), collapse = "~"))
first <- parallelCluster
shown("print", parallelCluster)
# a worker killed while its sibling on the same host lives
pids <- unlist(parallel::clusterEvalQ(parallelCluster, Sys.getpid()))
system(sprintf("kill -9 %d", pids[{victim}]))
say("kill9", try_msg(parallel::parSapply(parallelCluster, 1:8, function(i) i)))
parallelCluster <- sshcluster_repair()
size()
say("after-kill9", parallel::parSapply(parallelCluster, 1:8, function(i) i * 3))
shown("print-old", first)
shown("print-new", parallelCluster)
# the host's ssh session killed; its old session's port may still be held on the host
system({kill_sshd})
say("sshd", try_msg(parallel::parSapply(parallelCluster, 1:8, function(i) {{
  Sys.sleep(60); i }})))
parallelCluster <- sshcluster_repair()
size()
say("after-sshd", parallel::parSapply(parallelCluster, 1:8, function(i) i * 4))
sshcluster_stop()
"""


def kill_sshd_sessions(tb: Testbed, index: int) -> str:
    """A shell command that kills the sshd processes serving sessions on host ``index``
    (not its listener): the primary's ssh to that host then ends."""
    host = tb.hosts[index]
    return (f'for p in $(ip netns pids {host.netns}); do '
            'case "$(tr "\\0" " " < /proc/$p/cmdline 2>/dev/null)" in '
            '"sshd: root@notty"*|"sshd: root [priv]"*) kill -9 "$p";; esac; done')


@pytest.mark.parametrize("mode", list(FAST_MODES))
def test_repair_brings_back_full_size(tb: Testbed, tmp_path: Path, mode: str) -> None:
    """A killed worker (its sibling on the host still running) and a killed ssh session:
    each is named, and after sshcluster_repair() every worker is back, on its host."""
    assert nothing_left(tb, wait=10) == {}, "an earlier test left processes behind"
    inv = tb.write_inventory(tmp_path / "hosts.yaml", ncore=NCORE)
    out = tmp_path / "cluster.R"
    write_bootstrap(load_inventory(inv), out, FAST_MODES[mode])
    code = REPAIR.format(file=r_string(str(out)), victim=NCORE + 1,
                         kill_sshd=r_string(kill_sshd_sessions(tb, 1)))
    r = run_r_in_test(code, tmp_path, env={"TMPDIR": str(tmp_path)})
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    lines = [ln.split("|")[:-1] for ln in r.stdout.splitlines()]
    said = {ln[0]: ln[1:] for ln in lines}
    h2 = tb.hosts[1]
    full = [str(2 * NCORE), *(["node1"] * NCORE), *(["node2"] * NCORE)]
    assert f"worker 1 on {h2.address}" in said["kill9"][0]
    assert f"lost {h2.address}" in said["sshd"][0]
    assert [ln[1:] for ln in lines if ln[0] == "size"] == [full, full], r.stderr
    assert said["after-kill9"] == [str(3 * i) for i in range(1, 9)]
    assert said["after-sshd"] == [str(4 * i) for i in range(1, 9)]
    # print(parallelCluster): how it was launched, and each host's workers and R
    options = FAST_MODES[mode]
    how = ("through ssh reverse tunnels" if options.tunnel == "reverse" else
           "straight to this machine's port") + (
               ", forked, big messages once per host (relays)" if options.fork else
               ", one R each")
    r_said = subprocess.run(["Rscript", "-e", "cat(R.version.string, R.version$platform, "
                             "sep = ', ')"], capture_output=True, text=True, timeout=60).stdout
    for key in ("print", "print-new"):
        shown = said[key][0].split("~")
        assert shown[0].startswith(f"sshcluster: {2 * NCORE} workers on 2 hosts, {how}, port ")
        assert [ln.split()[:4] for ln in shown[1:]] == [
            [h.address, str(NCORE), "of", str(NCORE)] for h in tb.hosts[:2]], shown
        assert all(ln.endswith(r_said) for ln in shown[1:]), (shown, r_said)
    # (the old object's nodes that the repair did not replace still work)
    assert re.match(f"sshcluster: a cluster of {2 * NCORE} workers of which [12] w(as|ere) "
                    "stopped or replaced", said["print-old"][0]), said["print-old"]
    assert nothing_left(tb, marker=tmp_path) == {}
