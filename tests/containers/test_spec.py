"""``container:`` in the inventory, what the rendered file carries for it, and the
check's verdicts from what a host's probe said: no test hosts needed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sshcluster.bootstrap import RenderOptions, render
from sshcluster.check.probe import Facts, RemoteContext, parse_facts, remote_script
from sshcluster.check.report import NO_CONTAINER, HostReport, StepResult
from sshcluster.containers import Container
from sshcluster.containers.check import (
    compare_digests,
    container_verdict,
    packages_in_image,
    rscript_in_image,
)
from sshcluster.containers.launch import CONTAINER_SCRIPT
from sshcluster.dump import dump_inventory
from sshcluster.errors import InventoryError, RenderError
from sshcluster.inventory import Host, parse_inventory

BASE = "primary: 10.0.0.1\n"


def test_top_level_and_per_host_containers_merge_key_by_key() -> None:
    inv = parse_inventory(BASE + (
        "container:\n  image: localhost/r:1\n  pull: never\n"
        "hosts:\n  - a\n"
        "  - host: b\n    container: {engine: docker, options: [--gpus, all]}\n"
        "  - host: c\n    container: other/r:2\n"))
    a, b, c = (h.container for h in inv.hosts)
    assert a == Container("localhost/r:1", "auto", (), "never")
    assert b == Container("localhost/r:1", "docker", ("--gpus", "all"), "never")
    assert c == Container("other/r:2", "auto", (), "never")
    assert parse_inventory(dump_inventory(inv)).hosts == inv.hosts


def test_no_container_is_none() -> None:
    assert parse_inventory(BASE + "hosts: [a]\n").hosts[0].container is None


@pytest.mark.parametrize(("text", "line", "field", "says"), [
    ("hosts: [a]\ncontainer: {image: x, pull: sometimes}\n", 3, "container.pull",
     "expected one of missing, always, never"),
    ("hosts: [a]\ncontainer:\n  image: x\n  engine: podmn\n", 5, "container.engine",
     "expected one of podman, docker, auto"),
    ("hosts: [a]\ncontainer: {image: 'has space'}\n", 3, "container.image", "expected an image"),
    ("hosts: [a]\ncontainer: {pull: never}\n", 3, "container", "no image"),
    ("hosts: [a]\ncontainer: {image: x, options: [--network=bridge]}\n", 3,
     "container.options", "--network is set by sshcluster itself"),
    ("hosts: [a]\ncontainer: {image: x, options: ['a\\\\b']}\n", 3, "container.options",
     "expected a list of run options"),
    ("hosts: [a]\ncontainer: {image: x, imgae: y}\n", 3, "container.imgae", "unknown key"),
    ("hosts:\n  - host: a\n    container: {pull: never}\n", 4, "hosts[0].container",
     "no image"),
])
def test_mistakes_name_the_line_and_field(text: str, line: int, field: str, says: str) -> None:
    with pytest.raises(InventoryError) as e:
        parse_inventory(BASE + text, "hosts.yaml")
    assert (e.value.line, e.value.field) == (line, field)
    assert says in e.value.message


def test_options_reach_the_hosts_shell_as_the_same_words() -> None:
    hostile = ["-v", "/a b:/c", "$(touch /nonexistent/x)", "it's", "`id`", "a;b", "*", "!x"]
    line = Container("x", options=tuple(hostile)).options_line
    out = subprocess.run(["sh", "-c", 'eval "set -- $1"; printf "%s\\n" "$@"', "sh", line],
                         capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == hostile


def test_only_an_inventory_with_a_container_renders_differently() -> None:
    # (a long string's pieces, one per line, joined again)
    plain = render(parse_inventory(BASE + "hosts: [a, b]\n")).replace('",\n"', "")
    boxed = render(parse_inventory(BASE + "hosts: [a, b]\ncontainer: localhost/r:1\n")
                   ).replace('",\n"', "")
    # (remote.sh names the functions, but only container.sh defines them)
    assert "sshcluster_container_start() {" not in plain
    assert "containers = list(" not in plain
    assert "sshcluster_container_start() {" in boxed
    assert 'containers = list(\nlist(engine = "auto", image = "localhost/r:1"' in boxed
    assert len(boxed) > len(plain) + len(CONTAINER_SCRIPT) // 2


def test_the_classic_launch_cannot_use_containers() -> None:
    inv = parse_inventory(BASE + "hosts: [a]\ncontainer: localhost/r:1\n")
    with pytest.raises(RenderError, match="needs the fast launch"):
        render(inv, RenderOptions(launch="classic"))


def test_the_host_script_parses() -> None:
    for name in ("container.sh", "probe.sh", "image.sh"):
        path = Path(__file__).parents[2] / "sshcluster" / "containers" / name
        subprocess.run(["sh", "-n", str(path)], check=True)


def test_the_checks_script_for_a_host_with_a_container_parses() -> None:
    script = remote_script(rscript=None, r_packages=[], primary="10.0.0.1", primary_user="u",
                           primary_ssh_port=None, port=1, token="t", budget=5,
                           container=Container("img", options=("-v", "/a b:/c")),
                           workdir="wd")
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)
    assert "sshcluster_container_user() {" in script and "r_in_image() {" in script
    assert "container_options='-v '\"'\"'/a b:/c'\"'\"''" in script
    plain = remote_script(rscript=None, r_packages=[], primary="10.0.0.1", primary_user="u",
                          primary_ssh_port=None, port=1, token="t", budget=5)
    assert "r_in_image() {" not in plain and "engine=''" in plain


DIGEST_A, DIGEST_B = "a" * 64, "b" * 64


BOX = Host("h", container=Container("img"))


def _facts(text: str) -> Facts:
    return parse_facts(text.splitlines())


def _said(digest: str, r: str = "") -> str:
    return f"CONTAINER_ENGINE=podman\nCONTAINER_USER=root\nCONTAINER_IMAGE={digest}\n{r}"


@pytest.mark.parametrize(("said", "status", "words"), [
    ("CONTAINER_NOENGINE=podman\n", "failed", "podman is not installed"),
    ("CONTAINER_ENGINE=docker\nCONTAINER_USER=alice\nCONTAINER_UNUSABLE=permission denied\n",
     "failed", "docker cannot be used by alice: permission denied"),
    ("CONTAINER_ENGINE=podman\nCONTAINER_ABSENT=never\n", "failed",
     "is not on the host (pull: never)"),
    ("CONTAINER_ENGINE=podman\nCONTAINER_NOPULL=no route\nCONTAINER_ABSENT=missing\n",
     "failed", "img is not on the host and cannot be pulled: no route"),
    ("CONTAINER_ENGINE=podman\nCONTAINER_NOPULL=no route\nCONTAINER_IMAGE=" + DIGEST_A,
     "failed", "pull: always, but img cannot be pulled: no route"),
    (_said(DIGEST_A), "ok", f"podman, image sha256:{DIGEST_A}"),
])
def test_container_verdicts(said: str, status: str, words: str) -> None:
    result = container_verdict(_facts(said), RemoteContext(BOX), True)
    assert result.status == status
    assert words in result.detail
    assert status == "ok" or result.hint


KEEPER = "CONTAINER_KEEPER=sleep infinity\n"


@pytest.mark.parametrize(("said", "status", "words"), [
    (KEEPER + "CONTAINER_KEEPER_STATE=running 0\n", "ok", f"image sha256:{DIGEST_A}"),
    (KEEPER + "CONTAINER_KEEPER_ERR=sleep: invalid number 'infinity' \n"
              "CONTAINER_KEEPER_STATE=exited 1\n", "failed",
     "img cannot hold the workers: the launch's `sleep infinity` did not stay up in it "
     "(exited, exit status 1): sleep: invalid number 'infinity'"),
    (KEEPER + "CONTAINER_KEEPER_STATE=gone\n", "failed",
     "img cannot hold the workers: the launch's `sleep infinity` did not stay up in it "
     "(gone)"),
    (KEEPER + "CONTAINER_KEEPER_ERR=Error: executable file `sleep` not found\n"
              "R_VERSION=4.2.2\n", "failed",
     "img cannot hold the workers: the launch's `sleep infinity` does not start in it: "
     "Error: executable file `sleep` not found"),
    # (R did not start either: an options word refused by both, which rscript names)
    (KEEPER + "CONTAINER_KEEPER_ERR=Error: unknown flag: --no-such-option\n", "ok",
     f"image sha256:{DIGEST_A}"),
    (KEEPER, "failed", "the check script gave no answer on the launch's `sleep infinity`"),
    ("", "ok", f"image sha256:{DIGEST_A}"),  # (not tried: a workdir fails rscript)
])
def test_the_launchs_keeper_tried_in_the_image(said: str, status: str, words: str) -> None:
    """The container step fails when the launch's keeper does not start in the image,
    or does not stay up there, saying what it said and what to change."""
    result = container_verdict(_facts(_said(DIGEST_A, said)),
                               RemoteContext(BOX, inventory_path="hosts.yaml"), True)
    assert (result.status, result.detail) == (status, result.detail)
    assert words in result.detail and not result.detail.endswith(" ")
    if status == "failed" and "no answer" not in words:
        assert result.hint is not None
        assert "container.image in hosts.yaml" in result.hint and "img" in result.hint


def test_the_keeper_cut_off_by_the_deadline_says_so() -> None:
    result = container_verdict(_facts(_said(DIGEST_A, KEEPER)), RemoteContext(BOX), False)
    assert result.status == "failed" and "deadline" in result.detail
    assert result.hint is not None and "--timeout" in result.hint


def test_the_launch_and_the_check_start_the_container_with_one_keeper() -> None:
    """The keeper is spelled once, in container.sh, and both the launch's start and
    the check's trial run the one function that uses it."""
    script = remote_script(rscript=None, r_packages=[], primary="10.0.0.1", primary_user="u",
                           primary_ssh_port=None, port=1, token="t", budget=5,
                           container=Container("img"))
    for text in (CONTAINER_SCRIPT, script):
        assert text.count("sshcluster_keeper=sleep\n") == 1
        assert text.count("sshcluster_keeper_args=infinity\n") == 1
        code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        assert [line for line in code if "infinity" in line] == [
            "sshcluster_keeper_args=infinity"]
    assert "sshcluster_container_run worker --rm" in CONTAINER_SCRIPT
    assert "sshcluster_container_run check --pull never" in script
    assert script.count(" run -d ") == 1  # (the one in sshcluster_container_run)


def test_a_host_without_a_container_has_nothing_to_check() -> None:
    assert container_verdict(_facts(""), RemoteContext(Host("h")), True) == NO_CONTAINER


def test_r_in_the_image_is_skipped_when_the_container_step_failed() -> None:
    for said in ("CONTAINER_NOENGINE=podman\n", "CONTAINER_ABSENT=never\n"):
        result = rscript_in_image(_facts(said), RemoteContext(BOX), True)
        assert result.status == "skipped"
        assert "R runs in img" in result.detail
    late = rscript_in_image(_facts("CONTAINER_ENGINE=podman\n"), RemoteContext(BOX), False)
    assert late.status == "failed" and "deadline" in late.detail


def test_r_in_the_image_is_named_as_such() -> None:
    said = _said(DIGEST_A, "RSCRIPT=Rscript\nR_VERSION=4.2.2\nT_RSTART=0.1\n")
    result = rscript_in_image(_facts(said), RemoteContext(BOX, "4.2.2"), True)
    assert (result.status, result.detail) == ("ok", "Rscript in img (R 4.2.2)")
    other = rscript_in_image(_facts(said), RemoteContext(BOX, "4.4.1"), True)
    assert other.status == "warning"
    assert other.detail == "Rscript in img (R 4.2.2); the primary has R 4.4.1"
    broken = _said(DIGEST_A, "RSCRIPT=Rscript\nError: executable file `Rscript` not "
                             "found in $PATH\nR_EXIT=127\n")
    result = rscript_in_image(_facts(broken), RemoteContext(BOX), True)
    assert result.status == "failed"
    assert result.detail.startswith("Rscript does not start in img: Error: executable")
    assert "rscript:" in (result.hint or "")


def test_a_package_missing_in_the_image_is_named_with_the_image() -> None:
    said = _said(DIGEST_A, "R_MISSING=foreach\nT_PACKAGES=0.01\n")
    result = packages_in_image(_facts(said), RemoteContext(BOX), True)
    assert result.status == "failed"
    assert result.detail == "in img: not installed: foreach"
    assert "image push img" in (result.hint or "")
    ok = packages_in_image(_facts(_said(DIGEST_A, "R_MISSING=\n")), RemoteContext(BOX), True)
    assert (ok.status, ok.detail) == ("ok", "all present, in img")


def _report(name: str, digest: str) -> HostReport:
    step = container_verdict(_facts(_said(digest)), RemoteContext(BOX), True)
    return HostReport(host=Host(name, container=Container("img")),
                      checks={"container": step})


def test_the_host_with_another_digest_is_named() -> None:
    reports = compare_digests([_report("a", DIGEST_A), _report("b", DIGEST_B),
                               _report("c", DIGEST_A)])
    assert [r.checks["container"].status for r in reports] == ["ok", "failed", "ok"]
    detail = reports[1].checks["container"].detail
    assert f"img here is sha256:{'b' * 12}, not sha256:{'a' * 12} as on a, c" in detail
    assert "image push" in (reports[1].checks["container"].hint or "")


def test_one_digest_everywhere_is_fine() -> None:
    reports = [_report("a", DIGEST_A), _report("b", DIGEST_A)]
    assert compare_digests(reports) == tuple(reports)
    assert all(isinstance(r.checks["container"], StepResult) for r in reports)
