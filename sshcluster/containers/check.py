"""The check of a host with a ``container:``: the ``container`` step, the R steps as they
run inside the image, and the comparison of image digests across hosts.

For such a host the check's one remote script (:mod:`sshcluster.check.probe`) gets the
launch's own container functions and ``probe.sh`` of this package in front: it checks
that the engine is installed and usable by the login user without a password (rootless
podman, or a member of the docker group) and that the image is there or can be pulled
under ``pull:`` (the ``container`` step, :func:`container_verdict`); then it runs the
check's R (its version, the ``r_packages``, the callback to the primary) inside the image,
in a container made as the launch makes its own (host networking, the login user, the
workdir made as the launch makes it and mounted, the inventory's options). R on the host
itself is never asked for: the launch never starts it. :data:`IN_IMAGE` holds the
verdicts of the ``rscript`` and ``packages`` steps for such a host, and
:func:`compare_digests` then looks at every host together: a host whose image has another
digest (the image id) than most hosts' is failed and named, since the same image
everywhere is the point of a container.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Callable, Sequence

from sshcluster.check.probe import LATE, Facts, RemoteContext, packages_step, rscript_step
from sshcluster.check.report import NO_CONTAINER, HostReport, StepResult
from sshcluster.protocol import Fact

__all__ = ["IN_IMAGE", "NO_CONTAINER", "compare_digests", "container_verdict",
           "packages_in_image", "rscript_in_image"]

_DIGEST = re.compile(r"image sha256:([0-9a-f]{64})")
#: What probe.sh says when the workdir cannot be made or entered (the launch fails then
#: too), and the hint for it.
_NO_WORKDIR_SAID = "sshcluster: cannot make or enter workdir"
_NO_WORKDIR = ("make the workdir possible for the login user (a directory it can create "
               "and enter), or set another workdir: the launch makes it and starts there")
#: The facts that say the container step failed before R could be tried in the image.
_STOPPED = (Fact.CONTAINER_NOENGINE, Fact.CONTAINER_UNUSABLE, Fact.CONTAINER_ABSENT)


def container_verdict(facts: Facts, ctx: RemoteContext, complete: bool) -> StepResult:
    """``container``: the host's engine and its image (ok for a host without one)."""
    c = ctx.host.container
    if c is None:
        return NO_CONTAINER
    image, secs = c.image, facts.span(Fact.T_CONTAINER)
    if Fact.CONTAINER_NOENGINE in facts:
        return StepResult("failed", f"{facts.get(Fact.CONTAINER_NOENGINE)} is not installed",
                          secs, hint="install podman (or docker), or set container.engine to "
                                     "the one the host has")
    engine = facts.get(Fact.CONTAINER_ENGINE) or "the engine"
    if Fact.CONTAINER_UNUSABLE in facts:
        return StepResult(
            "failed", f"{engine} cannot be used by "
                      f"{facts.get(Fact.CONTAINER_USER) or 'the login user'}: "
                      f"{facts.get(Fact.CONTAINER_UNUSABLE)}", secs,
            hint="rootless podman needs subuid/subgid entries for the user; docker needs "
                 "the user in the docker group (root's power on the host, shared with its "
                 "other members: prefer rootless podman) and the daemon running; no sudo "
                 "is used")
    if Fact.CONTAINER_ABSENT in facts:
        why = facts.get(Fact.CONTAINER_NOPULL)
        return StepResult(
            "failed", f"{image} is not on the host" + (
                f" and cannot be pulled: {why}" if why
                else f" (pull: {facts.get(Fact.CONTAINER_ABSENT)})"), secs,
            hint=f"send it with 'sshcluster image push {image} INVENTORY', or let the host "
                 "pull it (pull: missing) from a registry it reaches")
    if Fact.CONTAINER_NOPULL in facts:
        return StepResult("failed", f"pull: always, but {image} cannot be pulled: "
                                    f"{facts.get(Fact.CONTAINER_NOPULL)}", secs,
                          hint="use pull: missing, or make the registry reachable")
    digest = facts.get(Fact.CONTAINER_IMAGE)
    if digest is None:
        return StepResult("failed", LATE if not complete else "the check script gave no "
                          "answer", secs, hint=None if complete else
                          "a pull or the engine's first start can take long: run the check "
                          "again with a larger --timeout")
    kept = _keeper(facts, ctx, complete, secs)
    return kept or StepResult("ok", f"{engine}, image sha256:{digest}", secs)


def _keeper(facts: Facts, ctx: RemoteContext, complete: bool,
            secs: float) -> StepResult | None:
    """The launch's keeper (``container.sh``: the command that holds a host's container
    open for its workers), as probe.sh tried it in the image: None when it ran on, or
    was not tried (a workdir that cannot be made fails ``rscript``, as the launch), or
    its container did not start where R's did not either: the ``rscript`` step then
    gives the engine's words (an ``options`` word it refuses refuses both)."""
    keeper = facts.get(Fact.CONTAINER_KEEPER)
    state = facts.get(Fact.CONTAINER_KEEPER_STATE)
    if keeper is None or (state or "").startswith("running"):
        return None
    if state is None and Fact.CONTAINER_KEEPER_ERR in facts and Fact.R_VERSION not in facts:
        return None
    assert ctx.host.container is not None
    image = ctx.host.container.image
    said = (facts.get(Fact.CONTAINER_KEEPER_ERR) or "").strip()
    program = keeper.split()[0]
    if state is None and Fact.CONTAINER_KEEPER_ERR not in facts:
        return StepResult("failed", LATE if not complete else "the check script gave no "
                          f"answer on the launch's `{keeper}` in {image}", secs,
                          hint=None if complete else "the engine can take long to start a "
                          "container: run the check again with a larger --timeout")
    where = f"in {ctx.inventory_path}" if ctx.inventory_path else "in the inventory"
    hint = (f"the launch holds each host's container open with `{keeper}`, which needs "
            f"GNU coreutils' {program} in the image (BusyBox's has no 'infinity'): add it "
            f"to {image} (Alpine: apk add coreutils) and give the hosts the image again, "
            f"or set container.image {where} to an image that has it (any Debian, "
            "Ubuntu or Rocker image)")
    if state is None:
        return StepResult("failed", f"{image} cannot hold the workers: the launch's "
                                    f"`{keeper}` does not start in it: {said}", secs,
                          hint=hint)
    status, _, code = state.partition(" ")  # ("exited 1"; "gone": removed meanwhile)
    how = f"{status}, exit status {code}" if code else status
    return StepResult("failed", f"{image} cannot hold the workers: the launch's "
                                f"`{keeper}` did not stay up in it ({how})" +
                                (f": {said}" if said else ""), secs, hint=hint)


def rscript_in_image(facts: Facts, ctx: RemoteContext, complete: bool) -> StepResult:
    """``rscript`` for a host with a container: R in the image (skipped when the
    container step failed: R cannot be tried without the engine and the image)."""
    c = ctx.host.container
    assert c is not None
    if Fact.CONTAINER_IMAGE not in facts:
        if any(f in facts for f in _STOPPED):
            return StepResult("skipped", f"R runs in {c.image}, which the container step "
                                         "could not reach")
        return StepResult("failed", LATE if not complete else "the check script gave no "
                          f"answer: {'; '.join(facts.other[-3:]) or 'nothing'}")
    rscript = facts.get(Fact.RSCRIPT) or "Rscript"
    result = rscript_step(facts, ctx, complete)
    if result.status in ("ok", "warning"):  # ("RSCRIPT (R x.y.z)...")
        return dataclasses.replace(result, detail=f"{rscript} in {c.image}"
                                                  f"{result.detail[len(rscript):]}")
    said = "; ".join(facts.other[-3:]) or f"exit status {facts.get(Fact.R_EXIT)}"
    return dataclasses.replace(
        result, detail=f"{rscript} does not start in {c.image}: {said}"
        if Fact.R_EXIT in facts else result.detail,
        hint=_NO_WORKDIR if _NO_WORKDIR_SAID in said else
        "use an image with Rscript on its PATH (rocker/r-ver, r-base), or set "
        "rscript: to its path in the image; the engine's words above say when the "
        "container's options are at fault")


def packages_in_image(facts: Facts, ctx: RemoteContext, complete: bool) -> StepResult:
    """``packages`` for a host with a container: the ``r_packages`` in the image."""
    c = ctx.host.container
    assert c is not None
    result = packages_step(facts, ctx, complete)
    if not result.detail or Fact.R_MISSING not in facts:
        return result
    if result.status == "ok":
        return dataclasses.replace(result, detail=f"{result.detail}, in {c.image}")
    return dataclasses.replace(
        result, detail=f"in {c.image}: {result.detail}",
        hint=f"install them in the image, then give it to the hosts again ('sshcluster "
             f"image push {c.image} INVENTORY', or a registry): the workers load the "
             "image's packages")


#: The verdicts of the R steps for a host with a container: (the ``callback`` step's is
#: the same for every host; its R runs in the image too).
IN_IMAGE: dict[str, Callable[[Facts, RemoteContext, bool], StepResult]] = {
    "rscript": rscript_in_image,
    "packages": packages_in_image,
}


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
