"""The whole EC2 path once, end to end: instances that ``ec2 up`` starts on the EC2
stand-in (moto's HTTP server) are mapped onto local SSH test hosts, then the inventory
``up`` wrote is checked and rendered, an R computation runs across them, and ``down`` ends it all.

Only the mapping from an instance to the address that reaches it, and the console text
holding its host key, are seams (moto's instances have no network or console of their
own); the SSH, the host-key verification and the R cluster are real.
"""

from __future__ import annotations

import shlex
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from sshcluster import ec2
from sshcluster.bootstrap import write_bootstrap
from sshcluster.check.preflight import check, verified_inventory
from sshcluster.cli import cli
from sshcluster.inventory import load_inventory
from sshcluster.quoting import r_string
from sshcluster.testing import free_port

from .helpers import REGION, host_keys, moto_with_testbed_key, seams_onto_testbed


def test_ec2_up_render_compute_down(moto_url: str, testbed: Any, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSHCLUSTER_STATE_DIR", str(tmp_path / "state"))
    client, image = moto_with_testbed_key(moto_url, testbed)
    hosts = list(testbed.hosts)
    keys = host_keys(testbed.known_hosts)
    address_of, console_text = seams_onto_testbed(testbed)
    spec = ec2.EC2Spec(name="e2e", region=REGION, image=image, instance_type="t3.medium",
                   count=len(hosts), user="root", max_lifetime=timedelta(hours=1),
                   key_name="testbed", identity_file=str(testbed.identity_file),
                   ssh_cidr=(f"{testbed.primary_address}/32",), port=free_port(),
                   primary=testbed.primary_address, ncore="vcpus")
    inventory_path = tmp_path / "hosts.yaml"
    with ec2.cluster(spec, client=client, output=inventory_path, address_of=address_of,
                     console_text=console_text, timeout=60, poll=0.1,
                     wait=False) as cluster:  # R is this machine's: no setup to wait for
        assert len(cluster.instances) == len(hosts)
        inventory = load_inventory(inventory_path)
        assert [h.host for h in inventory.hosts] == [h.address for h in hosts]
        assert {h.ncore for h in inventory.hosts} == {2}  # t3.medium: 2 vCPUs
        # the preflight check passes on every instance, with the keys up recorded
        report = check(inventory, timeout=30)
        assert report.ok, report.summary()
        assert [h.ncore for h in report.hosts] == [2] * len(hosts)
        cluster_r = tmp_path / "cluster.R"
        write_bootstrap(verified_inventory(report, inventory), cluster_r)
        script = tmp_path / "run.R"
        script.write_text(
            f"source({r_string(str(cluster_r))})\n"
            "nodes <- unlist(parallel::clusterEvalQ(parallelCluster, Sys.info()[['nodename']]))\n"
            "cat(sort(unique(nodes)), '\\n')\n"
            "cat(sum(parallel::parSapply(parallelCluster, 1:50, function(i) i)), '\\n')\n"
            "sshcluster_stop()\n")
        proc = subprocess.run(["Rscript", str(script)], capture_output=True, text=True,
                              timeout=180, check=False)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].split() == sorted(h.hostname for h in hosts)
        assert lines[1].strip() == "1275"
        # the known_hosts that up wrote is what the bootstrap verified the hosts with
        assert inventory.known_hosts is not None
        assert set(host_keys(Path(inventory.known_hosts)).values()) == set(keys.values())

    # the context manager ended every instance it started
    live = client.describe_instances(Filters=[
        {"Name": "tag:sshcluster:cluster", "Values": ["e2e"]},
        {"Name": "instance-state-name",
         "Values": ["pending", "running", "stopping", "stopped", "shutting-down"]}])
    assert [i for r in live["Reservations"] for i in r["Instances"]] == []


def _cli_spec(moto_url: str, testbed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              name: str, port: int, extra: str = "") -> tuple[Any, ec2.Seams]:
    """A spec file ec2.yaml in ``tmp_path`` (the working directory from now on) for a
    cluster ``name`` of the testbed's hosts, and the client and seams to start it."""
    monkeypatch.setenv("SSHCLUSTER_STATE_DIR", str(tmp_path / "state"))
    client, image = moto_with_testbed_key(moto_url, testbed)
    address_of, console_text = seams_onto_testbed(testbed)
    monkeypatch.chdir(tmp_path)
    Path("ec2.yaml").write_text(
        f"ec2:\n  name: {name}\n  region: us-east-1\n"
        f"  image: {image}\n  instance_type: t3.medium\n  count: {len(testbed.hosts)}\n"
        f"  user: root\n  max_lifetime: 1h\n  key_name: testbed\n"
        f"  identity_file: {testbed.identity_file}\n"
        f"  ssh_cidr: {testbed.primary_address}/32\n  port: {port}\n  ncore: vcpus\n{extra}")
    return client, ec2.Seams(address_of=address_of, console_text=console_text)


def test_the_commands_ec2_up_prints_take_its_inventory_to_r(
        moto_url: str, testbed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The workflow as a user follows it: 'sshcluster ec2 up' with the default
    # 'primary: auto', then exactly the commands it prints, then 'ec2 down'. The click
    # context object carries the seams (never moto's made-up addresses).
    client, seams = _cli_spec(moto_url, testbed, tmp_path, monkeypatch, "e2ecli", free_port())
    n = len(testbed.hosts)
    try:
        up = CliRunner().invoke(cli, ["ec2", "up", "ec2.yaml", "--timeout", "60", "--no-wait"],
                                obj=seams)
        assert up.exit_code == 0, up.output
        lines = up.stdout.splitlines()
        start = lines.index("next:") + 1
        commands = [line[2:] for line in lines[start:] if line.startswith("  ")]
        assert commands == ["sshcluster render hosts.yaml --check -o cluster.R",
                            "Rscript -e 'source(\"cluster.R\"); print(parallelCluster)'"]

        render = CliRunner().invoke(cli, shlex.split(commands[0])[1:])
        assert render.exit_code == 0, render.output
        # the workers come back to this machine through reverse tunnels (ec2 up wrote
        # 'tunnel: reverse'): no address of this machine needs to be reachable from AWS
        text = Path("cluster.R").read_text()
        assert 'workers_reach = "127.0.0.1"' in text and "tunnel = TRUE" in text
        proc = subprocess.run(shlex.split(commands[1]), capture_output=True, text=True,
                              timeout=180, check=False)
        assert proc.returncode == 0, proc.stderr
        # (print(parallelCluster): t3.medium has 2 vCPUs)
        assert proc.stdout.startswith(f"sshcluster: {2 * n} workers on {n} hosts"), proc.stdout
    finally:
        down = CliRunner().invoke(cli, ["ec2", "down", "e2ecli"])
    assert down.exit_code == 0 and "terminated" in down.output
    assert [i for r in client.describe_instances(Filters=[
        {"Name": "instance-state-name", "Values": list(ec2.LIVE_STATES)}])["Reservations"]
        for i in r["Instances"]] == []


@pytest.mark.slow
@pytest.mark.parametrize("packages", ["[parallel]", "[notapkg]"])
def test_up_verify_checks_the_inventory_and_computes_on_every_instance(
        moto_url: str, testbed: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        packages: str) -> None:
    # 'ec2 up --verify' with the default 'primary: auto': the written inventory must pass
    # the check (through the reverse tunnel) and R must compute on every instance; a
    # package no instance has fails the check, and up, which ends the cluster.
    client, seams = _cli_spec(moto_url, testbed, tmp_path, monkeypatch, "verify", free_port(),
                              f"  r_packages: {packages}\n")
    try:
        up = CliRunner().invoke(cli, ["ec2", "up", "ec2.yaml", "--timeout", "60", "--no-wait",
                                      "--verify"], obj=seams)
    finally:
        CliRunner().invoke(cli, ["ec2", "down", "verify"])
    if packages == "[parallel]":
        assert up.exit_code == 0, up.output
        assert "checking the inventory and computing in R" in up.output
    else:
        assert up.exit_code == 1, up.output
        said = " ".join(up.output.split())  # as the terminal wrapped it
        assert "does not pass the check" in said and "4 failed (packages: " in said
        assert "cleaned up: terminated: i-" in said
    assert [i for r in client.describe_instances(Filters=[
        {"Name": "instance-state-name", "Values": list(ec2.LIVE_STATES)}])["Reservations"]
        for i in r["Instances"]] == []


def test_up_sends_the_primarys_builds_where_the_instances_run_its_platform(
        moto_url: str, make_testbed: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """debian-12 on x86_64 is this machine's platform (Debian 12, R 4.2): the first boot
    is told to install R alone, and up ends by sending the primary's foreach (and its
    dependencies) to every instance, whose library (a tmpfs of its own) then has them."""
    import base64

    from sshcluster.ec2.ready import SetupStatus

    from .test_launch import seed_image_parameter

    monkeypatch.setenv("SSHCLUSTER_STATE_DIR", str(tmp_path / "state"))
    tb = make_testbed(2, private_dirs={"/root/.cache/sshcluster": "64m"})
    client, _ = moto_with_testbed_key(moto_url, tb)
    image = next(i["ImageId"] for i in client.describe_images(Owners=["amazon"])["Images"]
                 if i.get("Architecture") == "x86_64")
    seed_image_parameter("/aws/service/debian/release/12/latest/amd64", image)
    address_of, console_text = seams_onto_testbed(tb)
    spec = ec2.EC2Spec(name="prebuilt", region=REGION, image="debian-12",
                       instance_type="t3.medium", count=2, user="root",
                       max_lifetime=timedelta(hours=1), key_name="testbed",
                       identity_file=str(tb.identity_file),
                       ssh_cidr=(f"{tb.primary_address}/32",), port=free_port(),
                       primary=tb.primary_address, r_packages=("foreach",))
    steps: list[ec2.Step] = []

    def ready(instance: ec2.Instance, endpoint: ec2.Endpoint) -> SetupStatus:
        return SetupStatus("ready", "R version 4.2.2", expiry="armed 1")

    path = tmp_path / "hosts.yaml"
    with ec2.cluster(spec, client=client, output=path, address_of=address_of,
                     console_text=console_text, timeout=60, poll=0.1, read_status=ready,
                     progress=steps.append) as cluster:
        for instance in cluster.instances:
            data = client.describe_instance_attribute(InstanceId=instance.id,
                                                      Attribute="userData")
            text = base64.b64decode(data["UserData"]["Value"]).decode()
            assert "\nr_packages=''\n" in text  # nothing is built at first boot
        inventory = load_inventory(path)
        assert inventory.r_packages == ("foreach",)
        report = check(inventory, timeout=60)
        for host in report.hosts:
            step = host.checks["packages"]
            assert step.status == "ok" and "from sshcluster's library" in step.detail, step
    notes = [s.message for s in steps if s.stage == "note"]
    assert any("the instances run the primary's platform (debian 12, R 4.2, "
               "x86_64-pc-linux-gnu)" in n for n in notes), notes
    assert any(s.stage == "sync" and "copied" in s.message for s in steps), steps
