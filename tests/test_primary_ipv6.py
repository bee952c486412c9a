"""An IPv6 primary address where R must connect to it.

R's ``socketConnection()`` and ``serverSocket()`` are IPv4 only (PF_INET, gethostbyname):
without the reverse tunnel every worker would fail to connect to an IPv6 primary, and
the launch and the check would blame a firewall. So an IPv6 ``primary.host`` is refused
where the workers connect to it themselves (``tunnel: none``, the classic launch), and
an IPv4 client address as a dual-stack sshd reports it (``::ffff:192.0.2.1``) is used as
its IPv4 address.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import textwrap
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from sshcluster.bootstrap import render
from sshcluster.check.callback import callback_verdict
from sshcluster.check.preflight import check
from sshcluster.check.probe import found, parse_facts, remote_script
from sshcluster.cli import cli
from sshcluster.errors import InventoryError
from sshcluster.inventory import load_inventory
from sshcluster.launchplan import RenderOptions
from sshcluster.testing.fixtures import skip_or_fail


def _inventory(tmp_path: Path, primary: str, extra: str = "tunnel: none\n",
               host: str = "192.0.2.10") -> Path:
    path = tmp_path / "hosts.yaml"
    path.write_text(f"primary:\n  host: \"{primary}\"\n{extra}"
                    f"hosts:\n  - host: {host}\n    ncore: 2\n")
    return path


@pytest.mark.parametrize("extra", ["tunnel: none\n", "launch: classic\n"])
def test_render_refuses_an_ipv6_primary_that_r_must_connect_to(tmp_path: Path,
                                                              extra: str) -> None:
    path = _inventory(tmp_path, "2001:db8::1", extra)
    with pytest.raises(InventoryError) as e:
        render(load_inventory(path))
    assert e.value.line == 2  # the primary's host line
    assert "2001:db8::1 is IPv6" in e.value.message and "IPv4 only" in e.value.message
    assert e.value.hint is not None and "tunnel: reverse" in e.value.hint


def test_an_ipv6_primary_is_fine_behind_the_reverse_tunnel(tmp_path: Path) -> None:
    inv = load_inventory(_inventory(tmp_path, "2001:db8::1", ""))
    assert "parallelCluster" in render(inv)
    with pytest.raises(InventoryError, match="--tunnel none"):
        render(inv, RenderOptions(tunnel="none"))
    # (named as chosen: on the command line, not as an inventory key it does not hold)
    with pytest.raises(InventoryError, match="with --launch classic R's workers") as e:
        render(inv, RenderOptions(launch="classic"))
    assert "launch: classic" not in e.value.message


def test_an_ipv4_mapped_primary_renders_as_its_ipv4_address(tmp_path: Path) -> None:
    text = render(load_inventory(_inventory(tmp_path, "::ffff:192.0.2.1")))
    assert 'primary <- "192.0.2.1"' in text


def test_the_cli_says_so_with_exit_status_2(tmp_path: Path) -> None:
    path = _inventory(tmp_path, "::1")
    result = CliRunner().invoke(cli, ["render", str(path), "-o", str(tmp_path / "c.R")])
    assert result.exit_code == 2, result.output
    assert f"{path} line 2: primary: the primary's address ::1 is IPv6" in result.output
    assert "tunnel: reverse" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "c.R").exists()


def test_the_check_refuses_it_before_it_connects(tmp_path: Path) -> None:
    # (a closed port on this machine: old code would try it, and only it)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    path = _inventory(tmp_path, "::1", host="127.0.0.1")
    path.write_text(path.read_text() + f"    ssh_port: {port}\n")
    with pytest.raises(InventoryError, match="IPv4 only"):
        check(load_inventory(path), timeout=5, ssh_config=[])


def test_a_callback_to_an_ipv6_primary_says_why() -> None:
    facts = parse_facts(["PRIMARY=2001:db8::5", "CALLBACK=cannot open the connection",
                         "T_CALLBACK=0.01"])
    step = callback_verdict(facts, complete=True, target="2001:db8::5:11000",
                            listen_error=None, tunnel=False, timeout=5, confirmed=False)
    assert step.status == "failed"
    assert "IPv4 only" in step.detail and "firewall" not in step.detail
    assert step.hint is not None and "tunnel: reverse" in step.hint
    seen = parse_facts(["SSH_CONNECTION=::ffff:10.1.2.3 40000 10.1.2.4 22"])
    assert found(seen).seen_primary == "10.1.2.3"


def test_r_cannot_connect_to_ipv6_but_the_check_calls_back_over_ipv4(tmp_path: Path) -> None:
    """The premise, with real R: an IPv6 listener on ::1 is out of R's reach. And the
    check's R, given the client address a dual-stack sshd reports for an IPv4 client,
    calls back to its IPv4 address."""
    if shutil.which("Rscript") is None:
        skip_or_fail("needs Rscript")
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    with socket.socket(socket.AF_INET6) as six:
        try:
            six.bind(("::1", 0))
        except OSError:
            pytest.skip("no ::1 on this machine")
        six.listen(1)
        code = textwrap.dedent(f"""
            ok <- tryCatch({{close(socketConnection("::1", {six.getsockname()[1]},
                             timeout = 2)); "connected"}}, error = function(e) "refused")
            cat(ok, "\\n")""")
        out = subprocess.run(["Rscript", "-e", code], capture_output=True, text=True,
                             timeout=60)
    assert out.stdout.strip() == "refused", out.stdout + out.stderr

    called: list[str] = []
    with socket.socket() as four:
        four.bind(("127.0.0.1", 0))
        four.listen(1)
        four.settimeout(15)

        def accept() -> None:  # (R's callback: noted, answered with nothing)
            with contextlib.suppress(OSError):
                conn, (address, _) = four.accept()
                called.append(address)
                conn.close()

        waiter = threading.Thread(target=accept)
        waiter.start()
        script = remote_script(rscript=None, r_packages=[], primary=None,
                               primary_user="nobody", primary_ssh_port=1,
                               port=four.getsockname()[1], token="tok", budget=5)
        out = subprocess.run(
            ["sh", "-s"], input=script, capture_output=True, text=True, timeout=60,
            env={"PATH": os.environ["PATH"], "HOME": str(tmp_path),
                 "SSH_CONNECTION": "::ffff:127.0.0.1 40000 ::ffff:127.0.0.1 22"},
            cwd=tmp_path)
        waiter.join()
    assert called == ["127.0.0.1"]
    facts = parse_facts(out.stdout.splitlines())
    assert facts.get("PRIMARY") == "127.0.0.1"
