"""The local SSH test hosts, tested against the real things they build.

Every ssh here runs the real OpenSSH client with BatchMode and host key checking on.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
import yaml

from sshcluster.errors import TestbedError
from sshcluster.testing import (
    STATE_DIR,
    STATE_DIR_ENV,
    Testbed,
    TestHost,
    down_all,
    free_port,
    list_testbeds,
    remove_testbed,
)
from sshcluster.testing.fixtures import TEST_PREFIX, MakeTestbed, fresh_name, skip_or_fail
from sshcluster.testing.leftovers import nothing_left
from sshcluster.testing.netns import alive

T = TypeVar("T")


def ssh(
    tb: Testbed, host: TestHost, *command: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tb.ssh_argv(host, *command), capture_output=True, text=True, timeout=timeout
    )


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# --- without root: argument checks happen before anything is created -----------------


@pytest.mark.parametrize(
    ("args", "kwargs", "words"),
    [
        ((0,), {}, "1 to 253"),
        ((254,), {}, "1 to 253"),
        ((2,), {"name": "Bad_Name"}, "lowercase"),
        ((2,), {"name": "waytoolongname"}, "1-10"),
        ((2,), {"hostname_prefix": "Node!"}, "hostname prefix"),
        ((2,), {"subnet": "not-a-net"}, "not an IPv4 network"),
        ((6,), {"subnet": "10.213.1.0/29"}, "room for 5 hosts"),
        ((2,), {"primary_ssh_port": 70000}, "not a TCP port"),
    ],
)
def test_bad_arguments_are_refused(args: tuple[int], kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(TestbedError, match=words):
        Testbed(*args, **kwargs)  # type: ignore[arg-type]


def test_remove_testbed_names_what_is_there(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))  # no testbeds at all
    with pytest.raises(TestbedError, match="no testbed named 'sc1'") as e:
        remove_testbed("sc1")
    assert e.value.hint == "there are no testbeds on this machine"
    with pytest.raises(TestbedError, match="no testbed with the directory"):
        remove_testbed(workdir=tmp_path)
    with pytest.raises(TypeError):
        remove_testbed()
    with pytest.raises(TypeError):
        remove_testbed("sc1", workdir=tmp_path)


def test_properties_need_up() -> None:
    tb = Testbed(2)
    with pytest.raises(TestbedError, match="not up"):
        _ = tb.hosts
    tb.down()  # down before up is harmless


# --- one shared 4-host testbed ----------------------------------------------------------


def test_hosts_answer_ssh_with_their_hostname(testbed: Testbed) -> None:
    assert [h.hostname for h in testbed.hosts] == ["node1", "node2", "node3", "node4"]
    for host in testbed.hosts:
        assert ok(ssh(testbed, host, "hostname")) == host.hostname


def test_addresses_are_distinct_and_on_the_subnet(testbed: Testbed) -> None:
    net = ipaddress.IPv4Network(testbed.subnet)
    addresses = [h.address for h in testbed.hosts]
    assert len(set(addresses)) == 4
    assert testbed.primary_address not in addresses
    assert all(ipaddress.IPv4Address(a) in net for a in [*addresses, testbed.primary_address])
    assert len({h.netns for h in testbed.hosts}) == 4
    # Each host really has its own address: ask the kernel inside the namespace.
    for host in testbed.hosts:
        out = testbed.run(host, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
        assert f" {host.address}/" in out


def test_rscript_runs_on_a_host_and_sees_its_nodename(testbed: Testbed) -> None:
    host = testbed.hosts[2]
    out = ok(ssh(testbed, host, "Rscript -e 'cat(R.version.string, Sys.info()[[\"nodename\"]])'"))
    assert out.startswith("R version ")
    assert out.endswith(" node3")


def test_reverse_ssh_from_a_host_to_the_primary(testbed: Testbed) -> None:
    host = testbed.hosts[0]
    inner = f"ssh -o BatchMode=yes root@{testbed.primary_address} hostname"
    # It lands in the root namespace, whose hostname is this machine's.
    assert ok(ssh(testbed, host, inner)) == socket.gethostname()
    # ...with host key checking on: the host's known_hosts has the primary's real key.
    inner = f"ssh -o BatchMode=yes -o StrictHostKeyChecking=yes root@{testbed.primary_address} true"
    ok(ssh(testbed, host, inner))


def test_host_root_ssh_dir_is_the_hosts_own(testbed: Testbed) -> None:
    host = testbed.hosts[1]
    listing = ok(ssh(testbed, host, "ls /root/.ssh")).split()
    assert sorted(listing) == ["authorized_keys", "config", "id_ed25519", "id_ed25519.pub",
                               "known_hosts"]  # fmt: skip
    # The machine's own /root/.ssh is only a mount point, never written to.
    assert not any(Path("/root/.ssh", f).exists() for f in listing)


def test_wrong_known_hosts_is_refused(testbed: Testbed, tmp_path: Path) -> None:
    h1, h2 = testbed.hosts[:2]
    lines = testbed.known_hosts.read_text().splitlines()
    key_of = {line.split()[0]: " ".join(line.split()[1:]) for line in lines}
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{h1.address} {key_of[h2.address]}\n")  # h2's key under h1's address
    argv = testbed.ssh_argv(h1, "true")
    argv[argv.index(f"UserKnownHostsFile={testbed.known_hosts}")] = f"UserKnownHostsFile={wrong}"
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in proc.stderr

    wrong.write_text("")  # unknown host: BatchMode cannot ask, so it fails too
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 255
    assert "Host key verification failed" in proc.stderr


def test_ssh_config_aliases(testbed: Testbed) -> None:
    argv = ["ssh", "-F", str(testbed.ssh_config), "-o", "BatchMode=yes", "node2", "hostname"]
    assert ok(subprocess.run(argv, capture_output=True, text=True, timeout=30)) == "node2"


CONNECT = textwrap.dedent(
    """
    import socket, sys
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5).close()
        print("connected")
    except ConnectionRefusedError:
        print("refused")
    except TimeoutError:
        print("timeout")
    """
)


def test_reject_drop_allow(testbed: Testbed) -> None:
    host = testbed.hosts[3]
    with socket.create_server((testbed.primary_address, 0)) as server:
        port = server.getsockname()[1]

        def connect() -> str:
            argv = [sys.executable, "-c", CONNECT, testbed.primary_address, str(port)]
            return testbed.run(host, argv).stdout.strip()

        assert connect() == "connected"
        testbed.reject(host, port)
        try:
            assert connect() == "refused"
            testbed.allow(host, port)
            assert connect() == "connected"
            testbed.reject(host, port, action="DROP")
            t = time.monotonic()
            assert connect() == "timeout"
            assert time.monotonic() - t >= 1.4
        finally:
            testbed.allow(host, port)
        assert connect() == "connected"
        # Other hosts were never affected.
        other = testbed.hosts[0]
        argv = [sys.executable, "-c", CONNECT, testbed.primary_address, str(port)]
        assert testbed.run(other, argv).stdout.strip() == "connected"


def test_stop_and_start_sshd(testbed: Testbed) -> None:
    host = testbed.hosts[1]
    testbed.stop_sshd(host)
    try:
        proc = ssh(testbed, host, "true")
        assert proc.returncode == 255
        assert "Connection refused" in proc.stderr
    finally:
        testbed.start_sshd(host)
    assert ok(ssh(testbed, host, "hostname")) == "node2"


def test_processes_are_found_per_host(testbed: Testbed) -> None:
    h1, h2 = testbed.hosts[:2]
    ok(ssh(testbed, h1, "nohup sleep 300 >/dev/null 2>&1 &"))
    pids = wait_for(lambda: testbed.processes(h1, "sleep"))
    try:
        assert testbed.processes(h2, "sleep") == []
        assert testbed.processes(h1, "sshd")  # the listener at least
        assert testbed.processes(h1) == []  # no R running there
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: testbed.processes(h1, "sleep") == [])


PSOCK = """
args <- commandArgs(trailingOnly = TRUE)
cl <- parallel::makePSOCKcluster(
    strsplit(args[[1]], ",")[[1]], master = args[[2]], port = as.integer(args[[3]]),
    user = "root", rshcmd = args[[4]], setup_timeout = 60, timeout = 60
)
cat(unlist(parallel::clusterEvalQ(cl, Sys.info()[["nodename"]])), "\\n")
parallel::stopCluster(cl)
"""


def test_r_psock_workers_run_on_the_hosts_and_connect_back(testbed: Testbed) -> None:
    hosts = testbed.hosts[:2]
    rshcmd = " ".join(["ssh", *testbed.ssh_options()])  # R pastes it unquoted
    argv = ["Rscript", "-e", PSOCK, ",".join(h.address for h in hosts),
            testbed.primary_address, str(free_port()), rshcmd]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["node1", "node2"]
    # stopCluster ended the workers: nothing left behind on any host, nor an ssh here.
    assert nothing_left(testbed, wait=20) == {}


def test_down_all_leaves_a_live_testbed_alone(testbed: Testbed) -> None:
    assert down_all(testbed.name) == []
    assert ok(ssh(testbed, testbed.hosts[0], "true")) == ""


def test_list_testbeds_sees_the_testbed_and_its_live_owner(testbed: Testbed) -> None:
    record = next(r for r in list_testbeds() if r.name == testbed.name)
    assert (record.workdir, record.subnet) == (testbed.workdir, testbed.subnet)
    assert (record.owner_pid, record.owner_alive) == (os.getpid(), True)


def test_write_inventory(testbed: Testbed, tmp_path: Path) -> None:
    path = testbed.write_inventory(tmp_path / "inv.yaml", ncore=3, port=11234,
                                   extra={"rscript": "/usr/bin/Rscript"})  # fmt: skip
    text = path.read_text()
    assert text.startswith("# written by sshcluster testbed\n")
    data = yaml.safe_load(text)
    assert data == {
        "primary": {"host": testbed.primary_address, "user": "root"}
        | ({"ssh_port": testbed.primary_ssh_port} if testbed.primary_ssh_port != 22 else {}),
        "known_hosts": str(testbed.known_hosts),
        "defaults": {"user": "root", "identity_file": str(testbed.identity_file), "ncore": 3},
        "hosts": [{"host": h.address} for h in testbed.hosts],
        "port": 11234,
        "rscript": "/usr/bin/Rscript",
    }
    assert Path(data["known_hosts"]).is_absolute()
    assert "port" not in yaml.safe_load(testbed.write_inventory(tmp_path / "b.yaml").read_text())


# --- testbeds of their own ---------------------------------------------------------------


def test_primary_on_another_port_and_replaced_host_key(
    make_testbed: MakeTestbed, testbed: Testbed, tmp_path: Path
) -> None:
    port = free_port()
    tb = make_testbed(1, primary_ssh_port=port, hostname_prefix="w")
    assert tb.subnet != testbed.subnet  # two testbeds at once get different subnets
    host = tb.hosts[0]
    assert tb.primary_ssh_port == port
    inv = yaml.safe_load(tb.write_inventory(tmp_path / "inv.yaml").read_text())
    assert inv["primary"]["ssh_port"] == port
    known = ok(ssh(tb, host, "cat /root/.ssh/known_hosts"))
    assert known.startswith(f"[{tb.primary_address}]:{port} ssh-ed25519 ")
    # Both the alias in the host's ~/.ssh/config and an explicit -p reach the primary.
    ok(ssh(tb, host, "ssh -o BatchMode=yes primary true"))
    ok(ssh(tb, host, f"ssh -o BatchMode=yes -p {port} root@{tb.primary_address} true"))

    tb.replace_host_key(host)
    proc = ssh(tb, host, "true")
    assert proc.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in proc.stderr


def test_remove_testbed_matches_the_exact_name_only(make_testbed: MakeTestbed) -> None:
    # Names where one is a prefix of the other: removing the shorter keeps the longer.
    name = fresh_name()
    short, long_ = make_testbed(1, name=name), make_testbed(1, name=name + "1")
    netns = [h.netns for h in short.hosts]
    assert remove_testbed(name) == name
    assert_gone(name, netns)
    assert not (STATE_DIR / f"{name}.json").exists()
    assert ok(ssh(long_, long_.hosts[0], "hostname")) == "node1"
    assert (STATE_DIR / f"{name}1.json").exists()
    with pytest.raises(TestbedError, match=f"no testbed named '{name}'") as e:
        remove_testbed(name)
    assert e.value.hint is not None and f"{name}1 ({long_.workdir})" in e.value.hint


def test_remove_testbed_by_workdir_keeps_the_directory(
    make_testbed: MakeTestbed, tmp_path: Path
) -> None:
    tb = make_testbed(1, workdir=tmp_path / "tb")
    name, netns = tb.name, [h.netns for h in tb.hosts]
    assert remove_testbed(workdir=tmp_path / "." / "tb") == name  # any spelling of the path
    assert_gone(name, netns, workdir=tmp_path / "tb")
    assert (tmp_path / "tb" / "h1" / "sshd.log").exists()


def test_a_workdir_in_use_is_refused(make_testbed: MakeTestbed, tmp_path: Path) -> None:
    first = make_testbed(1, workdir=tmp_path / "tb")
    files = {p: p.read_bytes() for p in (first.known_hosts, first.identity_file)}
    with pytest.raises(TestbedError, match=f"belongs to testbed {first.name}, which is still up"):
        make_testbed(1, workdir=tmp_path / "tb")
    # Nothing of the first testbed was replaced: ssh with its own files still works.
    assert {p: p.read_bytes() for p in files} == files
    assert ok(ssh(first, first.hosts[0], "hostname")) == "node1"


def test_subnet_in_use_is_refused(testbed: Testbed) -> None:
    with pytest.raises(TestbedError, match="in use by another testbed"):
        Testbed(1, subnet=testbed.subnet, name=TEST_PREFIX + secrets.token_hex(2)).up()


@pytest.mark.usefixtures("testbed_env")
def test_failed_up_removes_what_it_made() -> None:
    # Occupy the primary's sshd port before the address exists (IP_FREEBIND), so the
    # primary sshd cannot bind and up() fails half-way, after the network was built.
    net = pick_free_subnet()
    primary = str(next(net.hosts()))
    name = TEST_PREFIX + secrets.token_hex(2)
    with socket.socket() as blocker:
        blocker.setsockopt(socket.IPPROTO_IP, 15, 1)  # IP_FREEBIND
        blocker.bind((primary, 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        tb = Testbed(3, subnet=str(net), name=name, primary_ssh_port=port)
        with pytest.raises(TestbedError, match="exited"):
            tb.up()
    assert_gone(name, [f"{name}-h{i}" for i in (1, 2, 3)])
    assert not (STATE_DIR / f"{name}.json").exists()


def test_down_removes_everything(make_testbed: MakeTestbed) -> None:
    tb = make_testbed(2)
    host = tb.hosts[1]
    ok(ssh(tb, host, "nohup Rscript -e 'Sys.sleep(600)' >/dev/null 2>&1 &"))
    r_pids = wait_for(lambda: tb.processes(host, "R"))
    sshd_pids = [p for h in tb.hosts for p in tb.processes(h, "sshd")]
    workdir, name, netns = tb.workdir, tb.name, [h.netns for h in tb.hosts]

    tb.down()
    assert_gone(name, netns, pids=[*r_pids, *sshd_pids], workdir=workdir)
    assert not workdir.exists()
    assert not (STATE_DIR / f"{name}.json").exists()
    tb.down()  # again: nothing to do


def test_up_32_hosts(make_testbed: MakeTestbed) -> None:
    tb = make_testbed(32)
    # up() saw every sshd answer; check each host's own hostname directly, and a sample
    # over ssh (an ssh costs ~0.3 s of CPU here, mostly key exchange).
    assert [tb.run(h, ["hostname"]).stdout.strip() for h in tb.hosts] == [
        f"node{i}" for i in range(1, 33)
    ]
    sample = [tb.hosts[0], tb.hosts[15], tb.hosts[31]]
    with ThreadPoolExecutor(max_workers=3) as pool:
        names = list(pool.map(lambda h: ok(ssh(tb, h, "hostname")), sample))
    assert names == ["node1", "node16", "node32"]


def test_down_stops_an_sshd_of_the_testbed_outside_its_namespaces(
    make_testbed: MakeTestbed,
) -> None:
    """The teardown's safety net: an sshd running from the testbed's files is stopped even
    where the namespace scan cannot see it (here: in the root namespace, on 127.0.0.1)."""
    tb = make_testbed(1)
    d = tb.workdir / "h1"
    port = free_port()
    stray = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(d / "sshd_config"), "-o",
                              f"ListenAddress=127.0.0.1:{port}", "-o", f"PidFile={d}/stray.pid",
                              "-E", str(d / "stray.log")])
    try:
        assert wait_for(lambda: _listening(port)), (d / "stray.log").read_text()
        tb.down()
        assert stray.wait(timeout=10) is not None
    finally:
        stray.kill()
        stray.wait()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


CHILD = textwrap.dedent(
    """
    import json, sys, time
    from sshcluster.testing import Testbed
    tb = Testbed(2, name=sys.argv[1]).up()
    print(json.dumps({"workdir": str(tb.workdir), "netns": [h.netns for h in tb.hosts]}),
          flush=True)
    time.sleep(600)
    """
)


@pytest.mark.usefixtures("testbed_env")
def test_down_all_cleans_up_after_a_killed_owner() -> None:
    # Not TEST_PREFIX: another test session starting now would clean this one up itself.
    name = "sck" + secrets.token_hex(2)
    child = subprocess.Popen([sys.executable, "-c", CHILD, name], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], 60)
        assert ready, "the child did not build its testbed in time"
        info = json.loads(child.stdout.readline())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    state = json.loads((STATE_DIR / f"{name}.json").read_text())
    netns = info["netns"]
    leftover = {n: out.split() for n in netns if (out := run(["ip", "netns", "pids", n]))}
    assert set(leftover) == set(netns)  # the sshd servers outlived their owner
    pids = [int(p) for ps in leftover.values() for p in ps] + state["primary_pids"]

    assert down_all(name) == [name]
    assert_gone(name, netns, pids=pids, workdir=Path(info["workdir"]))
    assert not Path(info["workdir"]).exists()
    assert down_all(name) == []


# --- helpers -----------------------------------------------------------------------------


def run(argv: Sequence[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def wait_for(cond: Callable[[], T], timeout: float = 20) -> T:
    """Poll ``cond`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if result or time.monotonic() > deadline:
            assert result, "condition not met in time"
            return result
        time.sleep(0.05)


def pick_free_subnet() -> ipaddress.IPv4Network:
    links = json.loads(run(["ip", "-j", "-4", "addr", "show"]))
    used = [
        ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}").network
        for link in links
        for a in link.get("addr_info", [])
    ]
    # Random, so that two test runs at once are unlikely to pick the same one.
    for third in random.sample(range(128, 255), 127):
        net = ipaddress.IPv4Network(f"10.213.{third}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    skip_or_fail("no free test subnet")


def assert_gone(
    name: str, netns: Sequence[str], *, pids: Sequence[int] = (), workdir: Path | None = None
) -> None:
    assert not set(netns) & set(run(["ip", "netns", "list"]).split())
    links = run(["ip", "-o", "link", "show"])
    assert f"{name}-" not in links
    for pid in pids:
        assert not alive(pid), f"process {pid} left"
    if workdir is not None:
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmdline = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                assert str(workdir).encode() not in cmdline, f"process {proc.name} left"
