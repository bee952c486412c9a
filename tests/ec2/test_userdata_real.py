"""The user data ``up`` generates, run for real on local SSH test hosts.

Each test host (a network namespace with its own sshd) is made to look like a fresh
cloud instance to the user data, inside the mount namespace of its sshd only: a tmpfs
over ``/var/lib`` and ``/var/log``, an ``/etc/ssh`` holding just the host's public key, a
file standing in for ``/dev/console`` (what GetConsoleOutput would return), and
stand-ins for ``shutdown`` (``systemctl``) and ``apt-get``/``apt-cache`` that only write
down what they were asked, so that nothing powers off or installs anything on this
machine. R itself is this machine's. The user data then runs as cloud-init would run it:
as root, with ``sh``, its setup detached.

Then ``up`` runs against moto with the existing seams: an instance's address is a test
host (whose user data is fetched from moto and run when ``up`` first asks for the
address), its console is that host's stand-in console, and the setup's status is read
over real SSH with the host keys the console showed.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sshcluster import ec2
from sshcluster.ec2.hostkeys import parse_console_host_keys

from .helpers import REGION, internet_gateway, nothing_left


class FakeInstance:
    """A test host dressed as a fresh cloud instance, for its sshd's mount namespace."""

    def __init__(self, testbed: Any, host: Any, workdir: Path, *,
                 fakes: dict[str, str] | None = None, mounts: str = "") -> None:
        self.testbed, self.host, self.dir = testbed, host, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.pid = min(testbed.processes(host, "sshd"))
        if os.readlink(f"/proc/{self.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"):
            pytest.fail("the test host's sshd shares this machine's mount namespace")
        self.console = workdir / "console"
        self.console.write_text("")
        self.asked = workdir / "asked"  # what the stand-ins were asked to do
        # By default every stand-in writes down what it was asked and fails, except that
        # 'shutdown' (a link to systemctl) schedules, as it does on an instance; ``fakes``
        # replace a stand-in's body (after the line that writes down what was asked).
        bodies = {"systemctl": 'case $(basename "$0") in shutdown) exit 0;; esac\nexit 1\n',
                  "apt-get": "exit 1\n", "apt-cache": "exit 1\n", **(fakes or {})}
        for name, body in bodies.items():
            fake = workdir / name
            fake.write_text(f'#!/bin/sh\necho "$(basename "$0") $*" >> {self.asked}\n{body}')
            fake.chmod(0o755)
        (workdir / "ssh").mkdir(exist_ok=True)
        key = next(line.split(None, 1)[1] for line in
                   Path(testbed.known_hosts).read_text().splitlines()
                   if line.split()[0] == host.address)
        (workdir / "ssh" / "ssh_host_ed25519_key.pub").write_text(f"{key} root@{host.hostname}\n")
        self.inside(
            "set -e; mount -t tmpfs tmpfs /var/lib; mount -t tmpfs tmpfs /var/log; "
            f"mount --bind {workdir}/ssh /etc/ssh; mount --bind {self.console} /dev/console; "
            f"mount --bind {workdir}/systemctl /usr/bin/systemctl; "
            f"mount --bind {workdir}/apt-get /usr/bin/apt-get; "
            f"mount --bind {workdir}/apt-cache /usr/bin/apt-cache; {mounts}")
        self.booted = False

    def inside(self, script: str, *, check: bool = True) -> str:
        """Run ``script`` as root in the host's namespaces (mount, network, hostname)."""
        out = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-n", "-u", "sh", "-c",
                              script], capture_output=True, text=True, timeout=60, check=False)
        if check and out.returncode != 0:
            pytest.fail(f"{script}: {out.stderr}")
        return out.stdout

    def boot(self, user_data: str) -> None:
        """Run the user data as cloud-init runs it: as root, with sh; it returns while its
        setup goes on detached."""
        script = self.dir / "user-data"
        script.write_text(user_data)
        self.inside(f"sh {script} > {self.dir}/user-data.out 2>&1")
        self.booted = True

    def read(self, path: str) -> str:
        return self.inside(f"cat {path} 2>/dev/null", check=False)


@pytest.fixture
def machines(make_testbed: Any, tmp_path: Path) -> list[FakeInstance]:
    tb = make_testbed(2)
    found = [FakeInstance(tb, h, tmp_path / h.hostname) for h in tb.hosts]
    # the stand-ins are in the test hosts' mount namespaces only, never this machine's
    assert "systemd" in subprocess.run(["systemctl", "--version"], capture_output=True,
                                       text=True, check=False).stdout
    return found


def spec_for(testbed: Any, image: str, setup: str, **changes: Any) -> ec2.EC2Spec:
    return ec2.EC2Spec(
        name="real", region=REGION, image=image, instance_type="t3.medium", count=2,
        user="root", max_lifetime=timedelta(hours=1), key_name="testbed",
        identity_file=str(testbed.identity_file), ssh_cidr=(f"{testbed.primary_address}/32",),
        setup=setup, **changes)


def test_the_host_keys_reach_the_console_before_a_slow_setup_ends(
        machines: list[FakeInstance]) -> None:
    machine = machines[0]
    spec = spec_for(machine.testbed, "ami-0123456789abcdef0", "sleep 30\n")
    expires = ec2.utcnow() + timedelta(hours=1)
    machine.boot(ec2.user_data(spec, expires))
    keys = parse_console_host_keys(machine.console.read_text())
    (line,) = [x for x in Path(machine.testbed.known_hosts).read_text().splitlines()
               if x.split()[0] == machine.host.address]
    assert [f"{k.type} {k.blob}" for k in keys] == [line.split(None, 1)[1]]
    # the user data did not wait for the setup, which goes on
    assert machine.read("/var/lib/sshcluster/status").strip() == "running"
    # the dead man's switch ran first, and stays armed for a reboot
    asked = machine.asked.read_text()
    left = round((expires - ec2.utcnow()).total_seconds() / 60)
    assert asked.startswith("shutdown -h +")
    assert abs(int(asked.split()[2][1:]) - left) <= 1
    assert "expires=" in machine.read("/var/lib/cloud/scripts/per-boot/sshcluster-expiry.sh")
    # (the setup runs detached: its first line may come a moment after the user data ends)
    deadline = time.monotonic() + 30
    while "sshcluster setup: started" not in machine.read("/var/log/sshcluster-setup.log"):
        assert time.monotonic() < deadline, machine.read("/var/log/sshcluster-setup.log")
        time.sleep(0.2)


def test_the_switch_counts_the_lifetime_on_the_instance_s_clock(
        machines: list[FakeInstance]) -> None:
    """A primary whose clock is 3 hours behind: the instance (whose clock AWS keeps
    right) still lives the cluster's hour, and is not powered off at once."""
    machine = machines[0]
    spec = spec_for(machine.testbed, "ami-0123456789abcdef0", "true\n")
    primary_now = ec2.utcnow() - timedelta(hours=3)
    machine.boot(ec2.user_data(spec, primary_now + timedelta(hours=1), now=primary_now))
    asked = machine.asked.read_text()
    assert asked.startswith("shutdown -h +"), asked
    assert abs(int(asked.split()[2][1:]) - 60) <= 1


def boot_on_first_address(client: Any, machines: list[FakeInstance]) -> ec2.Seams:
    """The seams: each instance is the next test host, booted with the user data moto
    holds for it when ``up`` first asks where it is; its console is the host's."""
    assigned: dict[str, FakeInstance] = {}

    def address_of(inst: ec2.Instance) -> ec2.Endpoint:
        machine = assigned.setdefault(inst.id, machines[len(assigned)])
        if not machine.booted:
            data = client.describe_instance_attribute(InstanceId=inst.id, Attribute="userData")
            machine.boot(base64.b64decode(data["UserData"]["Value"]).decode())
        return ec2.Endpoint(machine.host.address, 22)

    def console_text(instance_id: str) -> str:
        return assigned[instance_id].console.read_text()

    return ec2.Seams(address_of=address_of, console_text=console_text)


@pytest.fixture
def moto_client(moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                machines: list[FakeInstance]) -> tuple[Any, str]:
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset",
                                                  method="POST")).read()
    monkeypatch.setenv("SSHCLUSTER_STATE_DIR", str(tmp_path / "state"))
    client = ec2.make_client(REGION)
    internet_gateway(client)
    public = Path(f"{machines[0].testbed.identity_file}.pub").read_text()
    client.import_key_pair(KeyName="testbed", PublicKeyMaterial=public.encode())
    image = client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    return client, image


SETUP = """\
#!/bin/sh
echo "setting up $(hostname)"
sleep 2
if [ "$(hostname)" = node2 ]; then
  echo "E: You don't have enough free space in /var/cache/apt/archives/." >&2
  exit 3
fi
"""


def test_up_is_ready_when_every_setup_is_and_shows_a_failed_ones_log(
        machines: list[FakeInstance], moto_client: tuple[Any, str], tmp_path: Path) -> None:
    client, image = moto_client
    seams = boot_on_first_address(client, machines)
    spec = spec_for(machines[0].testbed, image, SETUP, r_packages=("parallel",))
    steps: list[ec2.Step] = []
    with pytest.raises(ec2.SetupFailed) as e:
        ec2.up(spec, client=client, output=tmp_path / "hosts.yaml",
               address_of=seams.address_of, console_text=seams.console_text, timeout=60,
               setup_timeout=60, poll=0.2, progress=steps.append)
    (failed, status), = e.value.failures.items()
    assert status.detail == "the setup script exited with status 3"
    assert "E: You don't have enough free space in /var/cache/apt/archives/." in status.log_tail
    assert "setting up node2" in status.log_tail
    text = str(e.value)
    assert f"{failed}: the setup script exited with status 3\n  | " in text
    assert "up real failed; cleaned up: terminated: i-" in text
    assert nothing_left(client) == {}  # the cluster was ended
    # the keys came from the console the user data wrote, and the good host got ready
    assert any(s.stage == "hostkeys" and s.done == 2 for s in steps)
    ready = next(m for m in machines if m.host.hostname == "node1")
    deadline = time.monotonic() + 30
    while not ready.read("/var/lib/sshcluster/status").startswith("ready"):
        assert time.monotonic() < deadline, ready.read("/var/log/sshcluster-setup.log")
        time.sleep(0.2)
    assert ready.read("/var/lib/sshcluster/status").startswith("ready R version 4.")
    assert not ready.asked.read_text().count("apt-get")  # R and 'parallel' were there


def test_up_returns_when_every_setup_is_ready(
        machines: list[FakeInstance], moto_client: tuple[Any, str], tmp_path: Path) -> None:
    client, image = moto_client
    seams = boot_on_first_address(client, machines)
    spec = spec_for(machines[0].testbed, image, "#!/bin/sh\nsleep 1\n",
                    r_packages=("parallel", "foreach"))
    steps: list[ec2.Step] = []
    c = ec2.up(spec, client=client, output=tmp_path / "hosts.yaml",
               address_of=seams.address_of, console_text=seams.console_text, timeout=60,
               setup_timeout=60, poll=0.2, progress=steps.append)
    assert c.ready
    setup = [s for s in steps if s.stage == "setup"]
    assert setup[-1].done == 2 and setup[0].message == "waiting for the setup: R and 2 R packages"
    for m in machines:
        assert m.read("/var/lib/sshcluster/status").startswith("ready R version 4.")
    ec2.down("real", client=client)
    assert nothing_left(client) == {}
