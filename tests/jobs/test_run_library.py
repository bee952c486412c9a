"""A job's workers load the packages ``sshcluster sync`` gave the hosts, on real test
hosts with real R: ``run`` (attached and detached) and the Python API's bootstrap put
sync's library first on every worker, before anything (a registered future) is loaded
there.

Each host has a library of its own with ``sctpure`` 1.0 (a wrapper rscript with its own
``R_LIBS``); the primary (this process's ``R_LIBS``) has 2.0, and sync gives the hosts
2.0 in sshcluster's library. A worker that loads 1.0 did not get that library first.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import sshcluster
from sshcluster.bootstrap import RenderOptions, write_bootstrap
from sshcluster.inventory import Launch, load_inventory
from sshcluster.testing import Testbed, free_port
from sshcluster.testing.fixtures import build_testbed, run_r_in_test
from sshcluster.testing.rpackages import PURE, Built, build_all, install, wrapper
from tests.jobs.helpers import DETACHED_LEFTOVER, until_state
from tests.jobs.helpers import sshcluster as sshcluster_cli

#: What every worker says: its sctpure's version, and where each namespace it has
#: loaded of those sync gave it comes from (NAME=DIR, one word each). future::plan()
#: loads future and its dependencies on the worker that runs its test future.
REPORT = """\
seen <- parallel::clusterEvalQ(parallelCluster, {
  ns <- intersect(c("future", "globals", "listenv", "parallelly", "digest"),
                  loadedNamespaces())
  paste(c(as.character(utils::packageVersion("sctpure")),
          if (length(ns))
            paste0(ns, "=", vapply(ns, function(n) dirname(getNamespaceInfo(n, "path")), ""))),
        collapse = " ")
})
cat(paste0("SEEN=", unlist(seen)), sep = "\\n")
"""
#: (the module: the package's ``reference`` is its function of that name)
reference_module = importlib.import_module("sshcluster.packages.reference")
#: The namespaces ``future`` loads with itself.
FUTURE = ("future", "globals", "listenv", "parallelly", "digest")


@pytest.fixture(scope="module")
def mesh(request: pytest.FixtureRequest, testbed_env: None) -> Iterator[Testbed]:
    """Three hosts whose root can ssh to each other (a detached job's primary host
    launches)."""
    yield build_testbed(request, 3, mesh=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build_all(tmp_path_factory.mktemp("rpkgs"), {PURE: ("1.0", "2.0")}, compiled=set(),
                     repo_versions={PURE: "2.0"})


def synced(tb: Testbed, built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           extra: dict[str, Any]) -> tuple[Path, dict[str, str]]:
    """An inventory of the hosts (one worker each), whose own libraries have sctpure
    1.0 and whose sync directories have what the primary has (sctpure 2.0, and what
    ``extra``'s r_packages add), synced; and each host's synced library by address."""
    primary = tmp_path / "primary-lib"
    install(built, primary, PURE, "2.0")
    monkeypatch.setenv("R_LIBS", str(primary))
    path = tb.write_inventory(tmp_path / "hosts.yaml", ncore=1, extra=extra)
    doc = yaml.safe_load(path.read_text())
    for i, entry in enumerate(doc["hosts"]):
        own = tmp_path / f"h{i}-lib"
        install(built, own, PURE, "1.0")
        entry.update(rscript=str(wrapper(tmp_path / f"h{i}-Rscript", own)),
                     library=str(tmp_path / f"h{i}-sync"))
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    inv = load_inventory(path)
    done = sshcluster.sync(inv, timeout=300)
    assert done.ok, done.verdicts()
    libraries = {h.host: done.reference.library(inv.library_of(h)) for h in inv.hosts}
    assert all(Path(lib, PURE).is_dir() for lib in libraries.values())
    return path, libraries


def seen(output: str) -> list[list[str]]:
    return [line[5:].split() for line in output.splitlines() if line.startswith("SEEN=")]


def assert_future_from(reports: list[list[str]], libraries: dict[str, str]) -> None:
    """future and its dependencies were loaded (on the worker of plan()'s test future,
    at least), and every worker loaded each from a synced library: NAME=DIR (the hosts
    share this machine's filesystem, so any host's answer names one of them)."""
    loaded = [r[1:] for r in reports if r[1:]]
    assert loaded and all({w.split("=")[0] for w in r} == set(FUTURE) for r in loaded), \
        reports
    assert all(w.split("=", 1)[1] in libraries.values() for r in loaded for w in r), \
        (reports, libraries)


def test_run_s_workers_load_the_synced_versions_and_future_from_them(
        mesh: Testbed, built: Built, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``run`` with ``register: [future]``: every worker has sctpure 2.0 (the synced
    one; its own library has 1.0), and future and its dependencies, which plan()
    loads on the workers as the cluster starts, come from the synced library too. The
    primary's R lists its packages once for the job (its check's reference is the
    file's)."""
    inv, libraries = synced(mesh, built, tmp_path, monkeypatch,
                            {"r_packages": [PURE, "future"], "register": ["future"]})
    script = tmp_path / "versions.R"
    script.write_text(REPORT)
    listed = 0
    real = reference_module.primary_reference_async

    async def counting(*args: Any, **kw: Any) -> reference_module.Reference:
        nonlocal listed
        listed += 1
        return await real(*args, **kw)

    monkeypatch.setattr(reference_module, "primary_reference_async", counting)
    monkeypatch.setenv("SSHCLUSTER_STATE_DIR", str(tmp_path / "state"))
    out = tmp_path / "out"
    with out.open("wb") as f:
        result = sshcluster.run(inv, script, stdout=f)
    assert result.ok, (result.error, (Path(result.run_dir) / "log").read_text())
    assert listed == 1
    reports = seen(out.read_text())
    assert [r[0] for r in reports] == ["2.0"] * 3, reports
    assert_future_from(reports, libraries)
    assert mesh.leftovers(DETACHED_LEFTOVER, wait=15) == {}


def test_a_detached_job_s_workers_and_primary_load_the_synced_versions(
        mesh: Testbed, built: Built, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers of a detached job, and its primary R, which runs on one of the hosts:
    the script's own packageVersion("sctpure") there is 2.0 too, not that host's 1.0."""
    inv, _ = synced(mesh, built, tmp_path, monkeypatch, {"r_packages": [PURE]})
    script = tmp_path / "versions.R"
    script.write_text(REPORT + 'cat("PRIMARY=", format(utils::packageVersion("sctpure")), '
                               '"\\n", sep = "")\n')
    state = tmp_path / "state"
    done = sshcluster_cli(["run", "--detach", "--json", str(inv), str(script)], state)
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)["job"]
    ended = until_state(job, state, {"done", "failed", "stopped", "lost"})
    logs = sshcluster_cli(["logs", job], state)
    assert ended["state"] == "done", (ended, logs.stdout, logs.stderr)
    assert [r[0] for r in seen(logs.stdout)] == ["2.0"] * 3, logs.stdout
    assert "PRIMARY=2.0" in logs.stdout.splitlines(), logs.stdout
    assert sshcluster_cli(["fetch", job, "--to", str(tmp_path / "got")], state).returncode == 0
    assert mesh.leftovers(DETACHED_LEFTOVER, wait=15) == {}


@pytest.mark.parametrize("launch", ["fast", "classic"])
def test_the_python_api_s_file_puts_the_library_first_before_future_loads(
        mesh: Testbed, built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        launch: Launch) -> None:
    """The library goes first before the registered future is loaded on the workers
    (with its digest given, as before), and ``write_bootstrap(inv, path)`` with no word
    about the library gives the workers it too."""
    inv_path, libraries = synced(mesh, built, tmp_path, monkeypatch,
                                 {"r_packages": [PURE, "future"]})
    inv = load_inventory(inv_path)
    if launch == "classic":  # (makeCluster's own random port may be another test's)
        inv = dataclasses.replace(inv, port=free_port())
    ref = reference_module.reference(inv)
    assert ref is not None
    for i, options in enumerate([
            RenderOptions(launch=launch, register=("future",), library_digest=ref.digest),
            RenderOptions(launch=launch, register=("future",))]):
        out = tmp_path / f"cluster{i}.R"
        write_bootstrap(inv, out, options)
        done = run_r_in_test(f'source("{out}")\n{REPORT}sshcluster_stop()\n', tmp_path)
        assert done.returncode == 0, done.stderr
        reports = seen(done.stdout)
        assert [r[0] for r in reports] == ["2.0"] * 3, (options, reports)
        assert_future_from(reports, libraries)
