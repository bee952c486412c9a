"""The rendered file names sync's library and puts it first on the workers' path, by
default the library of the inventory's own packages (no caller has to ask for it)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import sshcluster
from sshcluster.bootstrap import RenderOptions, render
from sshcluster.inventory import parse_inventory
from sshcluster.packages import lockfile_reference

INV = parse_inventory("primary: 10.0.0.1\nr_packages: [digest]\nlibrary: /scratch/lib\n"
                      "hosts: [a, {host: b, library: '~/l'}]\n")
LIBRARY = ('library = list(roots = c("/scratch/lib", "~/l"), digest = "0123456789abcdef", '
           'here = FALSE)')


def test_the_library_is_named_in_the_header_and_first_before_registering() -> None:
    for launch in ("fast", "classic"):
        options = RenderOptions(library_digest="0123456789abcdef", launch=launch,
                                register=("future",))
        text = render(INV, options)
        header = text[:text.index("\n\n")]
        assert "/scratch/lib/R-x.y/PLATFORM/OS/0123456789abcdef" in header
        # the launch's own call puts it first, before it registers future (R/library.R)
        assert LIBRARY in text
        assert "use_library(parallelCluster" not in text
        assert render(INV, options) == text


def test_with_none_the_file_has_no_library() -> None:
    text = render(INV, RenderOptions(library_digest=None))
    assert "library = NULL" in text and "sshcluster_library_dir" not in text


def test_an_inventory_without_packages_has_no_library() -> None:
    inv = parse_inventory("primary: 10.0.0.1\nhosts: [a]\n")
    assert "library = NULL" in render(inv)


def test_write_bootstrap_names_the_lockfile_s_library_by_itself(tmp_path: Path) -> None:
    """The Python API, as a user calls it: no option, yet the inventory's lockfile
    names the library the workers load first; the same file every time."""
    lock = tmp_path / "renv.lock"
    lock.write_text(json.dumps({"R": {"Version": "4.2.2"},
                                "Packages": {"sctpure": {"Version": "2.0"}}}))
    inv = parse_inventory(f"primary: 10.0.0.1\nlockfile: {lock}\nhosts: [a]\n")
    digest = lockfile_reference(str(lock)).digest
    text = sshcluster.write_bootstrap(inv, tmp_path / "cluster.R")
    assert f'digest = "{digest}", here = FALSE)' in text
    assert f"/R-x.y/PLATFORM/OS/{digest}" in text[:text.index("\n\n")]
    assert sshcluster.render(inv) == text


def test_write_bootstrap_works_from_a_running_event_loop(tmp_path: Path) -> None:
    """From code a running event loop called (a Jupyter notebook's cell, an async
    program), the library of the inventory's r_packages is read as from plain code: the
    primary's R, in a thread of its own (asyncio.run() there raised RuntimeError)."""
    inv = parse_inventory("primary: 10.0.0.1\nr_packages: [parallel]\nhosts: [a]\n")
    plain = sshcluster.render(inv)
    assert 'digest = "' in plain

    async def in_a_loop() -> str:
        return sshcluster.write_bootstrap(inv, tmp_path / "cluster.R")

    assert asyncio.run(in_a_loop()) == plain
