"""``sshcluster ec2 ...`` through click: exit statuses, exact messages, the printed next
steps, the docs showing the commands that work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from sshcluster import ec2
from sshcluster.cli import cli
from sshcluster.ec2.aws import HINTS

from .faults import FaultProxy
from .helpers import (
    HAND_WRITTEN,
    ROOT,
    SPEC,
    SshHosts,
    do_up,
    internet_gateway,
    live,
    make_spec,
    nothing_left,
    run,
    spec_text,
    state_files,
)


@pytest.mark.parametrize("command", [[], ["up"], ["ls"], ["down"], ["gc"]])
def test_help(command: list[str]) -> None:
    result = run("ec2", *command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output
    assert len(result.output.splitlines()) > 4


def test_cli_bad_spec_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.replace("count: 4", "count: -1"))
    result = CliRunner().invoke(cli, ["ec2", "up", str(bad)])
    assert result.exit_code == 2
    assert f"{bad} line 6: ec2.count" in result.output
    assert "Traceback" not in result.output


def test_cli_aws_error_exits_1(client: Any, tmp_path: Path) -> None:
    spec = tmp_path / "c.yaml"
    spec.write_text(SPEC.replace("ami-0123456789abcdef0", "ami-00000000deadbeef0"))
    result = CliRunner().invoke(cli, ["ec2", "up", str(spec), "-o", str(tmp_path / "h.yaml")])
    assert result.exit_code == 1
    assert "InvalidAMIID.NotFound" in result.output and "hint:" in result.output
    assert "Traceback" not in result.output


def test_cli_dry_run_ls_json_down_gc(client: Any, ami: str, hosts: SshHosts,
                                     tmp_path: Path) -> None:
    spec = tmp_path / "c.yaml"
    spec.write_text(SPEC.replace("ami-0123456789abcdef0", ami).replace("c7i.large",
                                                                       "t3.medium"))
    result = run("ec2", "up", str(spec), "--dry-run")
    assert result.exit_code == 0 and "nothing was started" in result.output
    assert nothing_left(client) == {}

    do_up(make_spec(ami, count=2), client, hosts, tmp_path)
    result = run("ec2", "ls", "--json")
    assert result.exit_code == 0
    (cluster,) = json.loads(result.output)
    assert cluster["name"] == "rwork" and len(cluster["instances"]) == 2
    assert {i["state"] for i in cluster["instances"]} == {"running"}
    table = run("ec2", "ls").output
    assert "rwork" in table and "running" in table
    assert "1h59m" in table or "2h00m" in table  # time left, to the minute

    result = run("ec2", "gc")
    assert result.output.strip() == "nothing to collect in us-east-1"

    result = run("ec2", "down", "rwork")
    assert result.exit_code == 0 and "terminated" in result.output
    assert run("ec2", "down", "rwork").output.strip() == "rwork: nothing left to remove"


def test_cli_gc_asks_first(client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    do_up(make_spec(ami, count=1), client, hosts, tmp_path, owner=ec2.default_owner())
    for record in state_files(tmp_path / "state"):
        record.unlink()
    result = run("ec2", "gc", input="n\n")
    assert "no record of it is left here" in result.output
    assert "nothing terminated" in result.output and len(live(client)) == 1
    result = run("ec2", "gc", "--yes")
    assert "rwork (us-east-1): terminated" in result.output and nothing_left(client) == {}


def test_cli_up_prints_the_next_commands(client: Any, ami: str, hosts: SshHosts,
                                         tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("ec2.yaml").write_text(spec_text(ami, count=2))
    result = run("ec2", "up", "ec2.yaml", "--timeout", "20", obj=hosts.cli_seams())
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1:] == [
        "next:",
        "  sshcluster render hosts.yaml --check -o cluster.R",
        "  Rscript -e 'source(\"cluster.R\"); print(parallelCluster)'",
        "end it with: sshcluster ec2 down rwork"]
    text = Path("hosts.yaml").read_text()
    assert "#   sshcluster render hosts.yaml --check -o cluster.R\n" in text
    assert yaml.safe_load(text)["primary"] == {"host": "auto"}
    # this machine, outside AWS, need not be reachable from there: the workers come back
    # through reverse tunnels (the commands still say --check: it checks each instance)
    assert yaml.safe_load(text)["tunnel"] == "reverse"


def test_the_docs_show_the_commands_that_work() -> None:
    root = ROOT
    readme = (root / "README.md").read_text()
    example = (root / "ec2.example.yaml").read_text()
    help_text = run("ec2", "up", "--help").output
    render, rscript = ec2.next_steps("hosts.yaml")
    for text in (readme, example, help_text):
        assert render in text
        assert "sshcluster check hosts.yaml && sshcluster render hosts.yaml -o" not in text
        assert "take it as it is" not in text and "take as it is" not in text
    assert rscript in readme and rscript in help_text


def test_cli_ls_and_gc_look_in_every_region_with_a_record(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    # moto serves every region on one endpoint; the default region here is us-east-1.
    west = ec2.make_client("us-west-2")
    internet_gateway(west)
    do_up(make_spec(ami, count=1, region="us-west-2", name="west"), west, hosts,
          tmp_path / "w")
    do_up(make_spec(ami, count=1), client, hosts, tmp_path / "e")

    found = json.loads(run("ec2", "ls", "--json").output)
    assert sorted((c["name"], c["region"]) for c in found) == [
        ("rwork", "us-east-1"), ("west", "us-west-2")]
    table = run("ec2", "ls").output
    assert "west" in table and "us-west-2" in table and "rwork" in table
    only = json.loads(run("ec2", "ls", "--region", "us-west-2", "--json").output)
    assert [(c["name"], c["region"]) for c in only] == [("west", "us-west-2")]

    # the cluster in us-west-2 is past its expiry: gc finds it there and ends it there
    (inst,) = live(west)
    west.create_tags(Resources=[inst["InstanceId"]],
                     Tags=[{"Key": "sshcluster:expires", "Value": "2020-01-01T00:00:00Z"}])
    result = run("ec2", "gc", "--yes")
    assert result.exit_code == 0, result.output
    assert f"west (us-west-2): expired at 2020-01-01T00:00:00Z: {inst['InstanceId']}" \
        in result.output
    assert f"west (us-west-2): terminated: {inst['InstanceId']}" in result.output
    assert live(west) == [] and len(live(client)) == 1
    assert [r.name for r in ec2.load_records()] == ["rwork"]
    assert run("ec2", "gc").output.strip() == "nothing to collect in us-east-1"


def test_cli_up_refuses_to_overwrite_unless_forced(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    seams = hosts.cli_seams()
    monkeypatch.chdir(tmp_path)
    Path("ec2.yaml").write_text(spec_text(ami, count=1))
    Path("hosts.yaml").write_text(HAND_WRITTEN)
    result = CliRunner().invoke(cli, ["ec2", "up", "ec2.yaml"], obj=seams)
    assert result.exit_code == 2
    assert result.stderr == (
        "error: hosts.yaml exists and is not an inventory 'sshcluster ec2 up' wrote for "
        "cluster rwork in us-east-1; not overwritten, nothing started\n"
        "hint: write the inventory elsewhere (-o other.yaml), or pass --force to replace "
        "hosts.yaml\n")
    assert Path("hosts.yaml").read_text() == HAND_WRITTEN and nothing_left(client) == {}

    result = CliRunner().invoke(cli, ["ec2", "up", "ec2.yaml", "--force", "--timeout", "20"],
                                obj=seams)
    assert result.exit_code == 0, result.output
    assert Path("hosts.yaml").read_text().startswith(
        "# Written by 'sshcluster ec2 up' for cluster rwork in us-east-1")
    # its own file
    assert run("ec2", "up", "ec2.yaml", "--timeout", "20", obj=seams).exit_code == 0
    assert len(live(client)) == 1


def test_cli_down_of_no_such_cluster_says_so_and_lists_the_clusters(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    c = do_up(make_spec(ami, count=1), client, hosts, tmp_path)
    result = CliRunner().invoke(cli, ["ec2", "down", "rwrok"])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == ("error: no cluster rwrok in us-east-1: no record of it on this "
                        "machine, and nothing in us-east-1 is tagged with it")
    assert lines[1] == "the clusters sshcluster started, as 'sshcluster ec2 ls' lists them:"
    assert lines[2].split()[:3] == ["cluster", "region", "instance"]
    assert lines[3].split()[:4] == ["rwork", "us-east-1", c.instances[0].id, "running"]
    assert lines[-1].startswith("hint: check the name")
    assert len(live(client)) == 1  # and nothing was removed

    # a cluster that existed: down, and down again, both succeed
    assert run("ec2", "down", "rwork").exit_code == 0
    again = run("ec2", "down", "rwork")
    assert again.exit_code == 0 and again.output == "rwork: nothing left to remove\n"

    result = CliRunner().invoke(cli, ["ec2", "down", "rwrok"])
    assert result.exit_code == 1 and "the clusters sshcluster started" in result.stderr


def test_cli_down_with_no_cluster_anywhere(client: Any) -> None:
    result = CliRunner().invoke(cli, ["ec2", "down", "nosuch"])
    assert result.exit_code == 1
    assert "error: no cluster nosuch in us-east-1" in result.stderr
    assert "there are no clusters in us-east-1" in result.stderr


@pytest.mark.parametrize("name", ["Bad Name", "-x", "rwork-", "a" * 33, "UPPER"])
def test_cli_down_refuses_an_invalid_name(client: Any, name: str) -> None:
    result = CliRunner().invoke(cli, ["ec2", "down", "--", name])
    assert result.exit_code == 2
    assert "Invalid value for 'NAME': expected a cluster name of lower-case letters" \
        in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", [["ls"], ["gc"], ["down", "rwork"]])
@pytest.mark.parametrize("region", ["nowhere-1", "US-EAST-1", "us-east-1\n", "us east 1"])
def test_cli_malformed_region_exits_2(client: Any, command: list[str], region: str) -> None:
    result = CliRunner().invoke(cli, ["ec2", *command, "--region", region])
    assert result.exit_code == 2
    assert (f"Invalid value for '--region': expected an AWS region such as us-east-1, "
            f"got {region!r}") in result.stderr


@pytest.mark.parametrize("command", [["ls"], ["ls", "--json"], ["gc"], ["down", "rwork"]])
def test_cli_an_unknown_region_is_an_error_not_a_traceback(client: Any,
                                                           command: list[str]) -> None:
    # Well-formed but unknown: moto answers with an HTML error page (real AWS: no such
    # endpoint). catch_exceptions=False: an exception that escapes fails the test.
    result = run("ec2", *command, "--region", "xx-nowhere-9")
    assert result.exit_code == 1
    assert "DescribeInstances: the endpoint's answer is not an EC2 answer" in result.stderr
    assert "hint: check the region" in result.stderr


def test_cli_ls_goes_on_past_a_region_that_fails(client: Any, ami: str, hosts: SshHosts,
                                                 tmp_path: Path) -> None:
    do_up(make_spec(ami, count=1), client, hosts, tmp_path)
    (tmp_path / "state" / "xx-nowhere-9--ghost.json").write_text("{}")
    result = run("ec2", "ls", "--json")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: xx-nowhere-9: DescribeInstances: ")
    found = json.loads(result.stdout)  # (not a list: a script must not take it as all)
    assert (found["ok"], found["listed_regions"], list(found["errors"])) == (
        False, ["us-east-1"], ["xx-nowhere-9"])
    assert [c["name"] for c in found["clusters"]] == ["rwork"]
    assert found["errors"]["xx-nowhere-9"]["message"].startswith("DescribeInstances: ")
    assert found["error"]["message"] == ("could not list the clusters in xx-nowhere-9; the "
                                         "clusters listed are those in us-east-1 only")
    table = run("ec2", "ls")
    assert table.exit_code == 1 and "rwork" in table.stdout
    assert table.stdout.splitlines()[-1] == ("not listed: xx-nowhere-9 (see the error "
                                             "above); clusters there, if any, are not shown")
    result = run("ec2", "gc")
    assert result.exit_code == 1 and "nothing to collect in us-east-1" in result.stdout


def test_cli_ls_of_a_region_that_refuses_is_no_empty_list(
        client: Any, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """The only region asked refuses the credentials: no "[]" (no clusters, no bill) but
    the error, in the JSON too, and exit status 1."""
    proxy.refuse("DescribeInstances", "AuthFailure", "AWS was not able to validate the "
                 "provided access credentials", status=401)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    result = run("ec2", "ls", "--json")
    assert result.exit_code == 1
    found = json.loads(result.stdout)
    assert (found["ok"], found["clusters"], found["listed_regions"]) == (False, [], [])
    assert found["error"]["message"] == "could not list the clusters in us-east-1"
    assert found["error"]["exit_code"] == 1
    error = found["errors"]["us-east-1"]
    assert error["code"] == "AuthFailure"
    assert error["message"] == ("DescribeInstances: AuthFailure: AWS was not able to "
                                "validate the provided access credentials")
    assert error["hint"] == HINTS["AuthFailure"]
    assert result.stderr.startswith("error: us-east-1: DescribeInstances: AuthFailure: ")

    table = run("ec2", "ls")
    assert table.exit_code == 1
    assert table.stdout == ("not listed: us-east-1 (see the error above); clusters there, "
                            "if any, are not shown\n")
    assert "error: us-east-1: DescribeInstances: AuthFailure: " in table.stderr
    assert f"hint: {HINTS['AuthFailure']}" in table.stderr


def test_cli_up_waits_for_the_setup_unless_told_not_to(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("ec2.yaml").write_text(spec_text(ami, count=1))
    dry = run("ec2", "up", "ec2.yaml", "--dry-run")
    assert dry.exit_code == 0
    assert dry.stdout.splitlines()[0].startswith(f"ok: image {ami} (x86_64), type t3.medium")
    assert "ok: not checked: the vCPU quota L-1216C47A" in dry.stdout

    result = run("ec2", "up", "ec2.yaml", "--no-wait", obj=hosts.cli_seams())
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"cluster rwork: 1 instances of {ami}, expires ")
    assert "setup:" not in result.stderr
    assert run("ec2", "down", "rwork").exit_code == 0

    hosts.status[0] = "failed: installing r-cran-foreach\nE: Unable to fetch archives"
    try:
        result = CliRunner().invoke(cli, ["ec2", "up", "ec2.yaml", "--keep-on-failure"],
                                    obj=hosts.cli_seams())
    finally:
        hosts.status[0] = hosts.status[1]
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error: the setup failed on 1 of 1 instances:" in result.stderr
    assert "  | E: Unable to fetch archives" in result.stderr
    assert "kept (--keep-on-failure) to look at; 'sshcluster ec2 down rwork' ends it" \
        in result.stderr
    assert len(live(client)) == 1
    result = run("ec2", "up", "ec2.yaml", obj=hosts.cli_seams())  # the kept one, now ready
    assert result.exit_code == 0 and ", ready, expires" in result.stdout


@pytest.mark.parametrize(("args", "out"), [
    ([], "no clusters (no cluster records on this machine, and no default AWS region; "
         "pass --region to look in one)\n"),
    (["--json"], "[]\n")])
def test_cli_ls_with_no_region_and_no_records_says_no_clusters(
        args: list[str], out: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("SSHCLUSTER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never AWS, in any case
    result = run("ec2", "ls", *args)
    assert (result.exit_code, result.stdout, result.stderr) == (0, out, "")
