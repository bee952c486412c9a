"""The launch modes, named once for every test that must run in each of them.

The fast launch reaches its workers through an ssh reverse tunnel (the default) or
straight, and starts them forked from one R per host (the default) or each fresh
(``--no-fork``); the classic launch is R's own ``makeCluster()``. A test that says it
runs "in every mode" takes :data:`LAUNCH_MODES` (or :data:`FAST_MODES`, for what only
the fast launch has: the repair, for one).
"""

from __future__ import annotations

from sshcluster.bootstrap import RenderOptions

__all__ = ["FAST_MODES", "LAUNCH_MODES"]

#: Every fast launch mode, by a name for test ids.
FAST_MODES: dict[str, RenderOptions] = {
    "tunnel-fork": RenderOptions(tunnel="reverse", fork=True),
    "tunnel-fresh": RenderOptions(tunnel="reverse", fork=False),
    "direct-fork": RenderOptions(tunnel="none", fork=True),
    "direct-fresh": RenderOptions(tunnel="none", fork=False),
}

#: Every launch mode: the fast ones and the classic launch.
LAUNCH_MODES: dict[str, RenderOptions] = {
    **FAST_MODES,
    "classic": RenderOptions(launch="classic"),
}
