"""Only our own workers get in: real attackers against a real launch.

Each attacker is a real process in a test host's network namespace, racing a launch that
one slow host (its sshd's SYNs dropped for a few seconds) keeps open:

* a stranger on the network who sends the primary's R port a serialized R object holding
  a promise (code that would write a marker file on the primary if it were ever
  unserialized and forced), again and again;
* a stranger who opens many connections, sends two bytes and then nothing;
* a local user (``nobody``) on a worker host who reads every process's command line and
  environment it can, and offers every secret-looking string it finds (and a guess of its
  own) as a worker's token for every slot, to the primary's port (or, behind the tunnel,
  to the forwarded port on its own host).

In the direct mode and the tunnel (the default) the launch must end within its setup timeout
with exactly the genuine workers, no attacker code may run, the worker tokens must appear
on no command line, every attacker must really have tried, and nothing may be left
running on any host or on the primary. The local user's offers must reach the primary
(behind the tunnel, through the forward) and be refused at their hello, never challenged.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sshcluster.bootstrap import write_bootstrap
from sshcluster.inventory import load_inventory
from sshcluster.protocol import PROOF_MAGIC
from sshcluster.testing import Testbed, free_port
from sshcluster.testing.fixtures import run_r_in_test
from sshcluster.testing.leftovers import nothing_left

NOBODY = "65534"

ATTACKER = r"""
import hashlib, hmac, os, re, socket, struct, sys, time
MAGIC = bytes.fromhex(os.environ["MAGIC"])
mode, host, port, seconds, log_path = sys.argv[1:6]
port, deadline = int(port), time.monotonic() + float(seconds)
payload = open(sys.argv[6], "rb").read() if mode == "promise" else b""
log = open(log_path, "a", buffering=1)
tried = 0

def connect():
    return socket.create_connection((host, port), timeout=1)

if mode == "promise":
    while time.monotonic() < deadline:
        try:
            s = connect()
            s.settimeout(0.5)
            s.sendall(payload)
            try:
                s.recv(100)
            except OSError:
                pass
            s.close()
            tried += 1
        except OSError:
            time.sleep(0.05)
elif mode == "stall":
    import select
    held = []  # always 64 connections that said two bytes and then nothing
    while time.monotonic() < deadline:
        while len(held) < 64:
            try:
                s = connect()
                s.sendall(b"X\n")
                held.append(s)
                tried += 1
            except OSError:
                time.sleep(0.05)
                break
        closed, _, _ = select.select(held, [], [], 0.2)  # the primary gave up on these
        for s in closed:
            held.remove(s)
            s.close()
elif mode == "hellos":
    # Well-formed hellos for the slots a stranger can guess (machine and slot are small
    # numbers), with a MAC it cannot have: a new connection every 1/RATE s, each held
    # open for as long as the primary keeps it (a hello that earned a challenge was kept
    # 5 s and never closed to make room: 32 of them kept genuine workers out).
    rate = float(sys.argv[6])
    held = []
    n = most = 0
    while time.monotonic() < deadline:
        try:
            s = connect()
            n += 1
            head = (MAGIC + struct.pack(">iii", 1 + n % 2, 1 + n % 2, os.getpid())
                    + os.urandom(16))
            s.sendall(head + os.urandom(16))
            s.setblocking(False)
            held.append(s)
            tried += 1
        except OSError:
            pass
        for s in list(held):  # (the ones the primary closed go; the rest stay open)
            try:
                if s.recv(64) == b"":
                    held.remove(s)
                    s.close()
            except BlockingIOError:
                pass
            except OSError:
                held.remove(s)
                s.close()
        most = max(most, len(held))
        time.sleep(1 / rate)
    log.write(f"most held at once {most}\n")
elif mode == "snoop":
    import threading
    found = set()
    ports = {port}
    lock = threading.Lock()

    def scan():  # (in a thread of its own: the offers go on while it reads /proc)
        while time.monotonic() < deadline:
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    for name in ("cmdline", "environ"):
                        try:
                            data = open(f"/proc/{pid}/{name}", "rb").read()
                        except OSError:
                            continue
                        hexes = {m.decode() for m in re.findall(rb"[0-9a-f]{32}", data)}
                        # (and the port the workers' command lines say they connect to:
                        # behind the tunnel, the forward on this host)
                        seen = {int(m) for m in re.findall(
                            rb"sshcluster\0[^\0]*\0127\.0\.0\.1\0([0-9]+)\0", data)}
                        with lock:
                            found.update(hexes)
                            ports.update(seen)

    def offer(machine, slot, token, to):
        # It speaks the protocol: a hello for a real slot, then, challenged, the MAC its
        # guess gives (a found string as both tokens), and it looks for ADMITTED.
        global tried
        key = bytes.fromhex(token[:32]) * 2
        try:
            s = socket.create_connection((host, to), timeout=30)
            head = MAGIC + struct.pack(">iii", machine, slot, os.getpid()) + os.urandom(16)
            hello = head + hmac.new(key, b"hello" + head, hashlib.md5).digest()
            s.sendall(hello)
            with lock:
                tried += 1  # (an offer made; the primary may be slow to refuse it)
            answer = b""
            while len(answer) < 32:
                got = s.recv(32 - len(answer))
                if not got:
                    break
                answer += got
            if len(answer) < 32:
                with lock:  # (its hello's MAC, under its guess, was refused)
                    log.write("refused at its hello\n")
            else:
                with lock:
                    log.write("challenged\n")
                s.sendall(hmac.new(key, b"worker" + hello + answer[:16], hashlib.md5).digest())
                verdict = "admitted" if s.recv(1) == b"\x06" else "refused"
                with lock:
                    log.write(verdict + "\n")
            s.close()
        except OSError:
            pass

    def offers(machine, slot):
        # Each slot's offers in a thread of their own, each offer waiting for its answer
        # as long as the launch may last: the primary's R looks up the name of every
        # address that connects (R's socketAccept), so a stranger's connection from an
        # address without a quick answer in DNS holds the accept loop for the resolver's
        # timeout, while R's queue of 5 connections overflows; an offer then waits
        # (behind the tunnel, in the SYN retries of the forward's own connection).
        while time.monotonic() < deadline:
            with lock:  # (a guess of its own too: it tries even where it finds nothing)
                tokens = [os.urandom(16).hex(), *sorted(found)[:50]]
                targets = sorted(ports)
            for token in tokens:
                for to in targets:
                    if time.monotonic() < deadline:
                        offer(machine, slot, token, to)
            time.sleep(0.05)

    threads = [threading.Thread(target=scan)] + [
        threading.Thread(target=offers, args=(m, k)) for m in (1, 2, 3) for k in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.write("found " + " ".join(sorted(found)) + "\n")
log.write(f"tried {tried}\n")
"""

#: R: a reply that runs code wherever it is unserialized and looked at.
PAYLOAD_R = """
e <- new.env()
delayedAssign("value", writeLines("attacker code ran", MARKER), assign.env = e)
delayedAssign("type", writeLines("attacker code ran", MARKER), assign.env = e)
bytes <- serialize(list(type = "VALUE", value = e, success = TRUE, tag = e), NULL)
writeBin(bytes, OUT)
"""


def _payload(tmp_path: Path, marker: Path) -> Path:
    out = tmp_path / "payload.rds"
    code = PAYLOAD_R.replace("MARKER", repr(str(marker))).replace("OUT", repr(str(out)))
    subprocess.run(["Rscript", "-e", code], check=True, timeout=60)
    return out


def _attack(netns: str, mode: str, host: str, port: int, seconds: float, log: Path,
            *extra: str, user: str | None = None) -> subprocess.Popen[bytes]:
    argv = ["ip", "netns", "exec", netns]
    if user:
        argv += ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
    return subprocess.Popen([*argv, "/usr/bin/python3", "-c", ATTACKER, mode, host, str(port),
                             str(seconds), str(log), *extra],
                            env={**os.environ, "MAGIC": PROOF_MAGIC.hex()})


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory the attacker running as ``nobody`` can read and write its log in."""
    d = Path(tempfile.mkdtemp(prefix="sshcluster-attack-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


@pytest.fixture
def alone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The two modes' attacks never run at once (pytest-xdist may hand them to two
    workers): two launches and eight attackers on this machine's two cores starve the
    launches of CPU, which is not what this test is about (so run, it failed in 8 runs
    of 10, and its version before the snooper's change in 3 of 3). A lock in the
    session's shared temporary directory, held for the test."""
    lock = tmp_path_factory.getbasetemp().parent / "sshcluster-attack-test.lock"
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.mark.parametrize("tunnel", [False, True], ids=["direct", "tunnel"])
def test_only_genuine_workers_get_in(alone: None, testbed: Testbed, shared_tmp: Path,
                                     tunnel: bool) -> None:
    tb = testbed
    tmp_path = shared_tmp
    assert nothing_left(tb, wait=10) == {}
    workers, stranger = tb.hosts[:3], tb.hosts[3]
    slow, local = workers[1], workers[0]
    port = free_port()
    marker = tmp_path / "pwned"
    payload = _payload(tmp_path, marker)
    inv = tb.write_inventory(tmp_path / "hosts.yaml", ncore=2, port=port,
                             extra={"setup_timeout": 30,
                                    "hosts": [{"host": h.address} for h in workers],
                                    "tunnel": "reverse" if tunnel else "none"})
    cluster_r = tmp_path / "cluster.R"
    write_bootstrap(load_inventory(inv), cluster_r)
    logs = {name: tmp_path / f"{name}.log" for name in ("promise", "stall", "snoop",
                                                         "local-promise")}
    for log in logs.values():
        log.touch()
        log.chmod(0o666)
    # What the local attacker on a worker host reaches: the primary's port, or behind
    # the tunnel the forwarded port on its own host.
    local_target = "127.0.0.1" if tunnel else tb.primary_address
    attackers = [
        _attack(stranger.netns, "promise", tb.primary_address, port, 14, logs["promise"],
                str(payload)),
        _attack(stranger.netns, "stall", tb.primary_address, port, 14, logs["stall"]),
        _attack(local.netns, "snoop", local_target, port, 14, logs["snoop"], user=NOBODY),
        _attack(local.netns, "promise", local_target, port, 14, logs["local-promise"],
                str(payload), user=NOBODY),
    ]
    tb.slow_ssh(slow)
    timer = threading.Timer(5, tb.reconnect, args=(slow,))
    timer.start()
    try:
        out = run_r_in_test(f"""
            t0 <- Sys.time()
            source({str(cluster_r)!r})
            cat("launch", as.numeric(Sys.time() - t0, units = "secs"), "\\n")
            cl <- parallelCluster
            w <- parallel::clusterEvalQ(cl, list(node = Sys.info()[["nodename"]],
                                                 pid = Sys.getpid()))
            cat("nodes", vapply(w, `[[`, "", "node"), "\\n")
            pids <- vapply(w, `[[`, 1L, "pid")
            cat("pids", pids, "\\n")
            # each answering process really runs in its host's network namespace
            cat("netns", vapply(pids, function(p)
              system(paste("ip netns identify", p), intern = TRUE), ""), "\\n")
            cat("sum", sum(parallel::parSapply(cl, 1:100, function(i) i * 2)), "\\n")
            S <- get("S", environment(sshcluster_stop))
            cat("tokens", unlist(lapply(S$sessions, function(s)
              unlist(lapply(s$tokens, function(t) c(t$worker, t$primary))))), "\\n")
            sshcluster_stop()
        """, tmp_path, timeout=120)
    finally:
        timer.cancel()
        tb.reconnect(slow)
        for a in attackers:
            try:
                a.wait(timeout=60)
            except subprocess.TimeoutExpired:  # (never left behind: killed, then failed)
                a.kill()
                a.wait()
                raise
    assert out.returncode == 0, out.stderr
    for name, log in logs.items():  # shown with pytest -s: how hard each attacker tried
        print(name, log.read_text().splitlines()[-1])
    print(out.stderr.strip())
    print("launch", out.stdout.split("launch ", 1)[-1].split()[0], "s")
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    # The launch ended (within its setup timeout, or source() would have failed) with
    # exactly the genuine workers.
    assert lines["nodes"].split() == [h.hostname for h in workers for _ in range(2)]
    assert lines["sum"].split() == [str(2 * 5050)]
    assert len(set(lines["pids"].split())) == 6
    assert lines["netns"].split() == [h.netns for h in workers for _ in range(2)]
    # No attacker code ran, and the attackers really were there.
    assert not marker.exists()
    for name, log in logs.items():
        assert "tried 0" not in log.read_text() and "tried" in log.read_text(), name
    assert "refused" in out.stderr and "did not prove" in out.stderr
    # The local user found no worker token anywhere, and no answer to a guess.
    tokens = set(lines["tokens"].split())
    assert len(tokens) == 18  # two for each of 6 workers and of the 3 hosts' relays
    snoop = logs["snoop"].read_text()
    found = set(next(ln for ln in snoop.splitlines() if ln.startswith("found")).split()[1:])
    assert not tokens & found
    print("snoop challenged", snoop.count("challenged"), "refused", snoop.count("refused"))
    # Its hellos (behind the tunnel: through the forward on its own host) were refused
    # at once, without a key: it was never challenged, let alone admitted.
    assert "refused at its hello" in snoop
    assert "challenged" not in snoop and "admitted" not in snoop
    assert nothing_left(tb, marker=tmp_path) == {}


def test_hellos_without_the_key_hold_no_place(alone: None, testbed: Testbed,
                                              shared_tmp: Path) -> None:
    """A local user on a worker host sends well-formed hellos for the slots anyone can
    guess through the tunnel's forward there, 70 a second, and holds each connection
    open: a hello whose MAC is not the slot's is refused at once. (It earned a challenge,
    and a place among the 32 connections proving themselves for 5 s, never closed to make
    room: here hundreds were open at once, and genuine workers that came meanwhile waited
    behind them, at a higher rate until the launch failed.)

    Behind the tunnel R accepts a connection in about 5 ms (its own name lookup of
    127.0.0.1 included). In the direct mode a stranger's address that DNS does not know
    costs R's accept tens of ms, and a stranger who connects faster than that keeps
    workers waiting whatever they send: docs/security.md says so."""
    tb = testbed
    tmp_path = shared_tmp
    assert nothing_left(tb, wait=10) == {}
    workers = tb.hosts[:2]
    port = free_port()
    inv = tb.write_inventory(tmp_path / "hosts.yaml", ncore=2, port=port,
                             extra={"setup_timeout": 20, "tunnel": "reverse",
                                    "hosts": [{"host": h.address} for h in workers]})
    cluster_r = tmp_path / "cluster.R"
    write_bootstrap(load_inventory(inv), cluster_r)
    log = tmp_path / "hellos.log"
    log.touch()
    log.chmod(0o666)
    attacker = _attack(workers[0].netns, "hellos", "127.0.0.1", port, 14, log, "70",
                       user=NOBODY)
    # One host slow to answer ssh for 6 s holds the launch open meanwhile: the other's
    # workers, already there, and then its own, must get in during the attack.
    slow = workers[1]
    tb.slow_ssh(slow)
    timer = threading.Timer(6, tb.reconnect, args=(slow,))
    timer.start()
    try:
        out = run_r_in_test(f"""
            source({str(cluster_r)!r})
            cat("nodes", vapply(parallel::clusterEvalQ(parallelCluster,
                                Sys.info()[["nodename"]]), identity, ""), "\\n")
            sshcluster_stop()
        """, tmp_path, timeout=120)
    finally:
        timer.cancel()
        tb.reconnect(slow)
        try:
            attacker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            attacker.kill()
            attacker.wait()
            raise
    said = log.read_text()
    print(said.strip())
    assert out.returncode == 0, out.stderr
    nodes = out.stdout.split("nodes", 1)[1].split()
    assert nodes == [h.hostname for h in workers for _ in range(2)]
    assert "refused" in out.stderr
    tried = int(said.split("tried ")[-1].split()[0])
    # (it really flooded: well past the 32 places, whatever the load; a loaded CI machine
    # let it try 178 in its 14 s)
    assert tried > 100, said
    # Each was refused as it came (held 5 s each, hundreds were open at once). What is
    # held at once here is what R has not yet read and refused: on a loaded machine, R's
    # accepts lag the flood's 70 a second (51 at once in one full run, 36 at most before).
    most = int(said.split("most held at once ")[-1].split()[0])
    assert most < 80, said
    assert nothing_left(tb, marker=tmp_path) == {}
