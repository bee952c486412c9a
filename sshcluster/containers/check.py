"""The check's ``container`` step, and the comparison of image digests across hosts.

For a host with a ``container:``, the step runs ``probe.sh`` on it over the check's ssh
connection: the engine is installed and usable by the login user without a password
(rootless podman, or a member of the docker group), the image is there or can be pulled
under ``pull:``, and R in the image starts, with its version and whether each
``r_packages`` package loads. Then :func:`compare_digests` looks at every host together:
a host whose image has another digest (the image id) than most hosts' is failed and
named, since the same image everywhere is the point of a container.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections import defaultdict
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING

import asyncssh

from sshcluster.check.report import NO_CONTAINER, HostReport, StepResult
from sshcluster.quoting import shell_join

if TYPE_CHECKING:
    from sshcluster.check.context import HostCheck

__all__ = ["NO_CONTAINER", "compare_digests", "container_step", "container_verdict"]

PROBE = resources.files("sshcluster.containers").joinpath("probe.sh").read_text(
    encoding="utf-8")
_DIGEST = re.compile(r"image sha256:([0-9a-f]{64})")


async def container_step(hc: HostCheck) -> StepResult:
    """``container``: the host's engine, its image and R inside it."""
    c = hc.host.container
    if c is None:
        return NO_CONTAINER
    assert hc.conn is not None
    budget = max(1, int(hc.ctx.remaining()) - 1)
    args = [c.engine, c.image, c.pull, hc.host.rscript or "Rscript", str(budget),
            *hc.ctx.inventory.r_packages]
    try:
        r = await hc.conn.run(f"sh -s {shell_join(args)}", input=PROBE,
                              timeout=max(1.0, hc.ctx.remaining()))
        said = str(r.stdout or "")
    except asyncio.TimeoutError:
        return StepResult("failed", "no answer within the deadline (a pull or the "
                                    "engine's first start can take long)",
                          hint="run the check again with a larger --timeout")
    except (asyncssh.Error, OSError) as e:
        return StepResult("failed", f"the ssh session failed: {e}")
    return container_verdict(said, c.image, c.pull, hc.ctx.inventory.r_packages)


def container_verdict(said: str, image: str, pull: str, r_packages: Sequence[str]
                      ) -> StepResult:
    """The step's verdict from what ``probe.sh`` printed."""
    facts: dict[str, str] = {}
    packages: dict[str, str] = {}
    for line in said.splitlines():
        name, _, value = line.partition("=")
        if name == "PKG":
            pkg, _, state = value.partition("=")
            packages[pkg] = state
        elif name:
            facts.setdefault(name, value.strip())
    if "NOENGINE" in facts:
        return StepResult("failed", f"{facts['NOENGINE']} is not installed",
                          hint="install podman (or docker), or set container.engine to the "
                               "one the host has")
    engine = facts.get("ENGINE", "the engine")
    if "UNUSABLE" in facts:
        return StepResult(
            "failed", f"{engine} cannot be used by {facts.get('USER', 'the login user')}: "
                      f"{facts['UNUSABLE']}",
            hint="rootless podman needs subuid/subgid entries for the user; docker needs "
                 "the user in the docker group (and the daemon running); no sudo is used")
    if "ABSENT" in facts:
        why = facts.get("NOPULL", "")
        return StepResult(
            "failed", f"{image} is not on the host" + (f" and cannot be pulled: {why}" if why
                                                       else " (pull: never)"),
            hint=f"send it with 'sshcluster image push {image} INVENTORY', or let the host "
                 "pull it (pull: missing) from a registry it reaches")
    if "NOPULL" in facts:
        return StepResult("failed", f"pull: always, but {image} cannot be pulled: "
                                    f"{facts['NOPULL']}",
                          hint="use pull: missing, or make the registry reachable")
    digest = facts.get("IMAGE", "?")
    if "NOR" in facts or "RVERSION" not in facts:
        return StepResult("failed", f"R does not start in {image}: "
                                    f"{facts.get('NOR', 'no answer')}",
                          hint="use an image with Rscript on its PATH (rocker/r-ver, "
                               "r-base), or set rscript: to its path in the image")
    missing = [p for p in r_packages if packages.get(p) != "ok"]
    detail = f"{engine}, image sha256:{digest}, R {facts['RVERSION']}"
    if missing:
        return StepResult("failed", f"{detail}; in the image, {', '.join(missing)} "
                                    "cannot be loaded",
                          hint="install them in the image (and push it again)")
    loaded = f", {len(r_packages)} r_packages load" if r_packages else ""
    return StepResult("ok", detail + loaded)


def compare_digests(reports: Sequence[HostReport]) -> tuple[HostReport, ...]:
    """``reports`` with the ``container`` step failed on each host whose image (by
    name) has another digest than the most hosts' with that image."""
    by_image: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, r in enumerate(reports):
        step = r.checks.get("container")
        c = r.host.container
        m = _DIGEST.search(step.detail) if step is not None and step.status == "ok" else None
        if c is not None and m:
            by_image[c.image][m.group(1)].append(i)
    out = list(reports)
    for image, digests in by_image.items():
        if len(digests) < 2:
            continue
        ranked = sorted(digests.items(), key=lambda kv: (-len(kv[1]), kv[1][0]))
        common, holders = ranked[0]
        names = ", ".join(reports[i].label for i in holders)
        for digest, indexes in ranked[1:]:
            for i in indexes:
                r = out[i]
                failed = StepResult(
                    "failed", f"{image} here is sha256:{digest[:12]}, not sha256:"
                              f"{common[:12]} as on {names}: another image under the "
                              "same name", r.checks["container"].seconds,
                    hint=f"give every host the same image: 'sshcluster image push {image} "
                         "INVENTORY' from the machine that has the right one, or pull a "
                         "digest (image@sha256:...) everywhere")
                out[i] = dataclasses.replace(r, checks={**r.checks, "container": failed})
    return tuple(out)
