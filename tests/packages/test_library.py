"""The rendered file names sync's library and puts it first on the workers' path."""

from __future__ import annotations

from sshcluster.bootstrap import RenderOptions, render
from sshcluster.inventory import parse_inventory

INV = parse_inventory("primary: 10.0.0.1\nr_packages: [digest]\nlibrary: /scratch/lib\n"
                      "hosts: [a, {host: b, library: '~/l'}]\n")


def test_the_library_is_named_in_the_header_and_used_after_the_start() -> None:
    text = render(INV, RenderOptions(library_digest="0123456789abcdef"))
    header = text[:text.index("\n\n")]
    assert "/scratch/lib/R-x.y/PLATFORM/OS/0123456789abcdef" in header
    call = 'use_library(parallelCluster, c("/scratch/lib", "~/l"), "0123456789abcdef")'
    assert call in text
    assert text.index(call) > text.index("start(list(")
    assert render(INV, RenderOptions(library_digest="0123456789abcdef")) == text


def test_without_a_digest_the_file_is_as_before() -> None:
    assert "use_library" not in render(INV)
