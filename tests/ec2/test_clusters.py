"""``ls``, ``down`` and ``gc`` in the library: finding clusters by their tags, ending them,
and collecting expired and orphaned ones, in every region with a record."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sshcluster import ec2
from sshcluster.errors import EC2Error, NoSuchCluster

from .helpers import REGION, SshHosts, do_up, live, make_spec, nothing_left


def test_ls_down_and_down_again(client: Any, ami: str, hosts: SshHosts,
                                tmp_path: Path) -> None:
    c = do_up(make_spec(ami, count=2), client, hosts, tmp_path)
    ids = sorted(i.id for i in c.instances)
    client.stop_instances(InstanceIds=[ids[0]])  # a stopped instance must not escape

    (status,) = ec2.list_clusters(client=client)
    assert status.name == "rwork" and status.known
    assert sorted(i.id for i in status.live) == ids
    assert {i.state for i in status.instances} == {"running", "stopped"}
    data = status.to_dict(ec2.utcnow())
    assert 0 < data["time_left_seconds"] <= 7200
    assert all(i["age_seconds"] >= 0 for i in data["instances"])

    report = ec2.down("rwork", client=client)
    assert sorted(report.terminated) == ids
    assert len(report.deleted_security_groups) == 1
    assert len(report.deleted_key_pairs) == 1
    assert report.removed_files == (str(tmp_path / "rwork.pem"),)
    assert nothing_left(client) == {}
    tag_filter = [{"Name": "tag:sshcluster:cluster", "Values": ["rwork"]}]
    assert client.describe_security_groups(Filters=tag_filter)["SecurityGroups"] == []
    assert client.describe_key_pairs(Filters=tag_filter)["KeyPairs"] == []
    (status,) = ec2.list_clusters(client=client)  # terminated instances are still listed
    assert not status.live and not status.known

    again = ec2.down("rwork", client=client)
    assert again.summary() == "nothing left to remove"
    with pytest.raises(NoSuchCluster) as e:  # never was a cluster
        ec2.down("rwrok", client=client)
    assert e.value.name == "rwrok" and e.value.existing == ("rwork",)


def test_gc_finds_expired_and_orphaned_clusters(client: Any, ami: str, hosts: SshHosts,
                                                tmp_path: Path) -> None:
    mine = do_up(make_spec(ami, count=1), client, hosts, tmp_path / "a", owner="me@here")
    do_up(make_spec(ami, name="other", count=1), client, hosts, tmp_path / "b",
          owner="me@here")
    assert ec2.find_garbage(client=client, owner="me@here") == ()

    later = mine.expires + timedelta(minutes=1)
    expired = ec2.find_garbage(client=client, owner="me@here", now=later)
    assert {g.name for g in expired} == {"rwork", "other"}
    assert all(g.reason.startswith("expired at") for g in expired)

    (tmp_path / "state" / f"{REGION}--other.json").unlink()  # its up died, say
    (orphan,) = ec2.find_garbage(client=client, owner="me@here")
    assert orphan.name == "other" and "no record" in orphan.reason
    # someone else's unexpired cluster without a record here is theirs, not garbage
    assert ec2.find_garbage(client=client, owner="you@there") == ()

    reports = ec2.collect_garbage([orphan], client=client)
    assert reports[0].terminated == orphan.instance_ids
    assert [i["InstanceId"] for i in live(client)] == [mine.instances[0].id]


def test_gc_judges_a_cluster_by_its_live_run(client: Any, ami: str, hosts: SshHosts,
                                            tmp_path: Path) -> None:
    short = do_up(make_spec(ami, count=1, max_lifetime=timedelta(minutes=10)), client, hosts,
                  tmp_path)
    ec2.down("rwork", client=client)
    do_up(make_spec(ami, count=1), client, hosts, tmp_path)  # same name, a new run
    # the first run's terminated instance is still listed, with its earlier expiry
    assert ec2.find_garbage(client=client, now=short.expires + timedelta(minutes=1)) == ()


def test_search_regions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    records = tmp_path / "state"
    records.mkdir()
    for name in ("us-west-2--west.json", "eu-central-1--a--b.json", "us-west-2--other.json",
                 "not a region--x.json", "us-west-2--x.tmp"):
        (records / name).write_text("not even JSON")  # unreadable records count too
    assert ec2.search_regions(records=records) == ("eu-central-1", "us-east-1", "us-west-2")
    assert ec2.search_regions("ap-south-1", records=records) == ("ap-south-1",)
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert ec2.search_regions(records=records) == ("eu-central-1", "us-west-2")
    with pytest.raises(EC2Error, match="no AWS region given"):
        ec2.search_regions(records=tmp_path / "none")


def test_garbage_is_collected_with_a_client_for_its_region(client: Any) -> None:
    garbage = ec2.Garbage("west", "expired", ("i-0123456789abcdef0",), "us-west-2")
    with pytest.raises(EC2Error, match="found in us-west-2 cannot be collected with a "
                                       "client for us-east-1"):
        ec2.collect_garbage([garbage], client=client)


def test_every_region_is_asked_and_every_outcome_kept(client: Any, ami: str, hosts: SshHosts,
                                                      tmp_path: Path) -> None:
    # like fabric's GroupResult: a region that fails does not hide the others' answers
    do_up(make_spec(ami, count=1), client, hosts, tmp_path)
    (tmp_path / "state" / "xx-nowhere-9--ghost.json").write_text("{}")
    found = ec2.list_all_clusters()
    assert not found.ok
    assert [c.name for c in found.succeeded[REGION]] == ["rwork"]
    assert set(found.failed) == {"xx-nowhere-9"}
    assert found.failed["xx-nowhere-9"].operation == "DescribeInstances"  # type: ignore[attr-defined]
    garbage = ec2.find_all_garbage(region=REGION)
    assert garbage.ok and garbage.succeeded == {REGION: ()}


def test_a_cluster_started_for_a_job_is_the_job_s(client: Any, ami: str, hosts: SshHosts,
                                                  tmp_path: Path) -> None:
    """``up(job_id=)`` (``run --ec2 --detach``): the tag ``sshcluster:job`` on every
    resource and the job in the record; ``ls`` and ``gc`` show it, and ``gc`` leaves it
    alone until its expiry."""
    do_up(make_spec(ami, count=2), client, hosts, tmp_path, job_id="20261206-0900-abc123")
    job = "20261206-0900-abc123"
    tagged = [{"Name": "tag:sshcluster:job", "Values": [job]}]
    assert len(live(client, **{"sshcluster:job": job})) == 2
    assert len(client.describe_security_groups(Filters=tagged)["SecurityGroups"]) == 1
    assert len(client.describe_key_pairs(Filters=tagged)["KeyPairs"]) == 1
    (record,) = ec2.load_records()
    assert record.job == job
    (status,) = ec2.list_clusters(client=client)
    assert status.job == job and status.to_dict(ec2.utcnow())["job"] == job
    assert f"rwork (job {job})" in ec2.format_clusters([status])
    assert ec2.find_garbage(client=client) == ()
    (garbage,) = ec2.find_garbage(client=client, now=ec2.utcnow() + timedelta(hours=3))
    assert garbage.job == job and garbage.reason.startswith("expired at")
    ec2.down("rwork", client=client)
    assert nothing_left(client) == {}
    # a cluster started for no job says so nowhere
    do_up(make_spec(ami, count=1), client, hosts, tmp_path)
    (status,) = ec2.list_clusters(client=client)
    assert status.job is None and "(job" not in ec2.format_clusters([status])
    (path,) = (Path(ec2.state_dir())).glob("*--rwork.json")
    assert '"job"' not in path.read_text()
    ec2.down("rwork", client=client)


def test_a_job_s_fleet_never_takes_over_a_cluster_of_its_name(
        client: Any, ami: str, hosts: SshHosts, tmp_path: Path) -> None:
    """``up(job_id=)`` refuses a name whose cluster exists, the user's own (finished
    by an earlier ``up``) or another job's, and leaves it and its record as they were:
    the job's fetch or stop would end it."""
    first = do_up(make_spec(ami, count=1), client, hosts, tmp_path)
    for job in ("20261206-0900-abc123", "20261206-0901-def456"):
        with pytest.raises(EC2Error) as e:
            do_up(make_spec(ami, count=1), client, hosts, tmp_path, job_id=job)
        assert "cluster rwork already exists" in e.value.message
        assert "sshcluster ec2 down rwork" in str(e.value.hint)
        (record,) = ec2.load_records()
        assert record.run_id == first.run_id and record.job is None
        assert [i["InstanceId"] for i in live(client)] == [first.instances[0].id]
    ec2.down("rwork", client=client)
    # a record alone (its instances gone another way) is a cluster too
    job = do_up(make_spec(ami, count=1), client, hosts, tmp_path, job_id="20261206-0902-a1")
    client.terminate_instances(InstanceIds=[job.instances[0].id])
    with pytest.raises(EC2Error, match="a record here"):
        do_up(make_spec(ami, count=1), client, hosts, tmp_path, job_id="20261206-0903-b2")
    (record,) = ec2.load_records()
    assert record.job == "20261206-0902-a1"
    ec2.down("rwork", client=client)
    assert nothing_left(client) == {}


def test_a_job_ends_only_its_own_fleet(client: Any, ami: str, hosts: SshHosts,
                                       tmp_path: Path) -> None:
    """``release_fleet`` (a detached job's fetch or stop) ends the cluster only while this
    machine's record of it is the job's run: a cluster of that name started since (by
    the user, here) is left alone."""
    from sshcluster.jobs import release_fleet, stop_job
    from sshcluster.jobs.record import runs_dir

    def fleet_for(job: str, cluster: ec2.Cluster) -> None:
        (runs_dir() / job).mkdir(parents=True)
        (runs_dir() / job / "fleet.json").write_text(json.dumps(
            {"name": "rwork", "region": REGION, "run_id": cluster.run_id, "keep": False,
             "inventory": str(tmp_path / "none.yaml"), "released": None}))

    job = "20261206-0900-abc123"
    fleet_for(job, do_up(make_spec(ami, count=1), client, hosts, tmp_path, job_id=job))
    ec2.down("rwork", client=client)  # (the user ended it) ...
    mine = do_up(make_spec(ami, count=1), client, hosts, tmp_path)  # ... and started theirs
    said = release_fleet(job)
    assert said is not None and "no longer job" in said and "left alone" in said
    assert [i["InstanceId"] for i in live(client)] == [mine.instances[0].id]
    ec2.down("rwork", client=client)
    # the job's own fleet does end: here, one whose start was killed after the fleet
    # was up, before the job started (its record has the fleet alone), by its stop
    other = "20261206-0901-def456"
    fleet_for(other, do_up(make_spec(ami, count=1), client, hosts, tmp_path, job_id=other))
    status = stop_job(other)
    assert status.state == "failed" and status.detail is not None
    assert "cluster rwork ended" in status.detail
    assert nothing_left(client) == {} and not (runs_dir() / other).exists()
