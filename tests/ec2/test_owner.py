"""The owner tag: the caller's STS identity and a per-user id kept in the state
directory, not ``user@host``; clusters started under an older owner tag stay the
caller's (listed, ended, collected)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sshcluster import ec2
from sshcluster.ec2.records import OWNER_ID_FILE, principal, save_record

from .helpers import SshHosts, do_up, live, make_spec, nothing_left, state_files
from .test_cleanup import dead_process

OLD = "alice@alices-laptop.fritz.box"  # an older version's user@host, since renamed


def test_the_owner_is_the_sts_identity_and_an_id_created_once(
        client: Any, tmp_path: Path) -> None:
    owner = ec2.default_owner()
    (ident,) = (tmp_path / "state" / OWNER_ID_FILE).read_text().split()
    assert owner == f"123456789012:user/moto/{ident}"  # moto's caller identity
    assert ec2.default_owner() == owner
    # another state directory (another user, another machine): another id
    assert ec2.default_owner(tmp_path / "other") != owner
    assert (tmp_path / "state" / OWNER_ID_FILE).read_text().split() == [ident]


def test_an_assumed_roles_session_name_is_left_out() -> None:
    assert (principal("arn:aws:sts::123456789012:assumed-role/Admin/alice-1733450000")
            == "123456789012:assumed-role/Admin")
    assert principal("arn:aws:iam::123456789012:user/alice") == "123456789012:user/alice"


def test_a_cluster_of_an_old_owner_is_still_listed_and_downed(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    do_up(make_spec(ami, count=2), client, hosts, tmp_path, owner=OLD)
    assert {t["Value"] for i in live(client) for t in i["Tags"]
            if t["Key"] == "sshcluster:owner"} == {OLD}
    assert ec2.default_owner() != OLD
    (status,) = ec2.list_clusters(client=client)
    assert status.name == "rwork" and status.owner == OLD and status.known
    assert len(status.live) == 2
    report = ec2.down("rwork", client=client)  # no ForeignCluster
    assert len(report.terminated) == 2
    assert live(client) == []
    assert ec2.load_records() == []


def test_a_cluster_of_an_old_owner_is_still_collected(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    do_up(make_spec(ami, count=1), client, hosts, tmp_path, owner=OLD)
    (record,) = ec2.load_records()
    save_record(tmp_path / "state", ec2.Record(**{**record.__dict__, "status": "starting",
                                                  "process": dead_process()}))
    (garbage,) = ec2.find_garbage(client=client)  # the up that started it was killed
    assert garbage.name == "rwork" and garbage.owner == OLD and len(garbage.instance_ids) == 1
    ec2.collect_garbage([garbage], client=client)
    assert nothing_left(client) == {} and not state_files(tmp_path / "state")
