"""``container:`` in the inventory, what the rendered file carries for it, and the
check's verdicts from what a host's probe said: no test hosts needed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sshcluster.bootstrap import RenderOptions, render
from sshcluster.check.report import HostReport, StepResult
from sshcluster.containers import Container
from sshcluster.containers.check import compare_digests, container_verdict
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
    plain = render(parse_inventory(BASE + "hosts: [a, b]\n"))
    boxed = render(parse_inventory(BASE + "hosts: [a, b]\ncontainer: localhost/r:1\n"))
    # (remote.sh names the functions, but only container.sh defines them)
    assert "sshcluster_container_start() {" not in plain
    assert "containers = list(" not in plain
    assert "sshcluster_container_start() {" in boxed
    assert 'containers = list(list(engine = "auto", image = "localhost/r:1"' in boxed
    assert len(boxed) > len(plain) + len(CONTAINER_SCRIPT) // 2


def test_the_classic_launch_cannot_use_containers() -> None:
    inv = parse_inventory(BASE + "hosts: [a]\ncontainer: localhost/r:1\n")
    with pytest.raises(RenderError, match="needs the fast launch"):
        render(inv, RenderOptions(launch="classic"))


def test_the_host_script_parses() -> None:
    for name in ("container.sh", "probe.sh", "image.sh"):
        path = Path(__file__).parents[2] / "sshcluster" / "containers" / name
        subprocess.run(["sh", "-n", str(path)], check=True)


DIGEST_A, DIGEST_B = "a" * 64, "b" * 64


def _said(digest: str, packages: dict[str, str] | None = None) -> str:
    lines = ["ENGINE=podman", "USER=root", f"IMAGE={digest}", "RVERSION=4.2.2"]
    lines += [f"PKG={p}={s}" for p, s in (packages or {}).items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("said", "status", "words"), [
    ("NOENGINE=podman\n", "failed", "podman is not installed"),
    ("ENGINE=docker\nUSER=alice\nUNUSABLE=permission denied\n", "failed",
     "docker cannot be used by alice: permission denied"),
    ("ENGINE=podman\nUSER=root\nABSENT=never\n", "failed", "is not on the host (pull: never)"),
    ("ENGINE=podman\nUSER=root\nNOPULL=no route\nABSENT=missing\n", "failed",
     "cannot be pulled: no route"),
    ("ENGINE=podman\nUSER=root\nIMAGE=" + DIGEST_A + "\nNOR=exec: Rscript not found\n",
     "failed", "R does not start in img: exec: Rscript not found"),
    (_said(DIGEST_A, {"MASS": "ok", "foo": "missing"}), "failed", "foo cannot be loaded"),
    (_said(DIGEST_A, {"MASS": "ok", "foo": "ok"}), "ok", "2 r_packages load"),
])
def test_verdicts(said: str, status: str, words: str) -> None:
    result = container_verdict(said, "img", "missing", ["MASS", "foo"])
    assert result.status == status
    assert words in result.detail
    assert status == "ok" or result.hint


def _report(name: str, digest: str) -> HostReport:
    step = container_verdict(_said(digest), "img", "never", [])
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
