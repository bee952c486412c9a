"""How many lanes a launch takes (``lanes_fit`` of ``sshcluster/R/launch/start.R``), in
real R: at most half of the connections R has free, and in an R allowed thousands of
connections, never so many that a socket's descriptor could pass select()'s 1024."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

START_R = Path(__file__).resolve().parent.parent / "sshcluster" / "R" / "launch" / "start.R"


def lanes_fit(limit: str, links: int, open_files: int = 0) -> bool:
    code = f"""
        source({str(START_R)!r})
        S <- new.env()
        S$limit <- {limit}
        S$config <- list(connections = c(launch = 2L, user = 2L))
        cons <- lapply(seq_len({open_files}), function(i) rawConnection(raw(0)))
        cat(lanes_fit(S, {links}L), "\\n")
    """
    out = subprocess.run(["Rscript", "--vanilla", "-e", code], capture_output=True,
                         text=True, timeout=60, check=True)
    return out.stdout.split()[-1] == "TRUE"


@pytest.mark.parametrize(("limit", "links", "open_files", "fits"), [
    ("128", 60, 0, True),      # R 4.2: 125 free, 4 for the launch and the user: 60 fit
    ("128", 61, 0, False),
    ("128", 40, 40, True),     # 40 of the user's files open: 81 free, 40 fit
    ("128", 41, 40, False),
    ("4096", 500, 0, True),    # R 4.4 --max-connections=4096
    ("4096", 953, 0, True),    # 3 in use + 953 + 4 = 960
    ("4096", 954, 0, False),   # 961: past 960
    ("Inf", 860, 100, False),  # (no limit found: the descriptors still count: 967)
    ("Inf", 850, 100, True),
])
def test_lanes_take_half_the_free_connections_and_stay_under_select(
        limit: str, links: int, open_files: int, fits: bool) -> None:
    assert lanes_fit(limit, links, open_files) is fits
