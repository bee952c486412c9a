"""Transient EC2 workers: start them, list them, and make sure they stop.

The Python API behind ``sshcluster ec2 up | ls | down | gc``::

    from sshcluster import ec2

    spec = ec2.load_spec("ec2.yaml")
    with ec2.cluster(spec, output="hosts.yaml") as c:
        print(c.next_steps)  # sshcluster render hosts.yaml --check -o cluster.R, then R
    # every instance, spot request, security group and key pair it made is gone here

    found = ec2.list_all_clusters()          # every region this machine has a record in
    for region, error in found.failed.items():
        print(region, error)
    ec2.down("rwork")                         # raises ec2.NoSuchCluster for a wrong name

Safe by default: every resource is tagged (``sshcluster:cluster``, ``sshcluster:owner``,
``sshcluster:expires``, ``sshcluster:run``); instances stop billing at their expiry even if
this machine dies (shutdown behaviour ``terminate`` plus the dead man's switch in their user
data); anything that goes wrong during :func:`up`, Ctrl-C included, terminates what that
``up`` started. Host keys come from the console output, never from the network, unless the
caller accepts new keys in so many words.

The modules: :mod:`~sshcluster.ec2.spec` (the spec file), :mod:`~sshcluster.ec2.userdata`
(what an instance runs at boot), :mod:`~sshcluster.ec2.aws` (clients, calls, errors),
:mod:`~sshcluster.ec2.instances` (instances and tags), :mod:`~sshcluster.ec2.records`
(this machine's records), :mod:`~sshcluster.ec2.regions` (which regions, results per
region), :mod:`~sshcluster.ec2.images` (images by name), :mod:`~sshcluster.ec2.plan`
(the checks before a launch), :mod:`~sshcluster.ec2.launch` (creating resources, the dry
run), :mod:`~sshcluster.ec2.wait` (waiting for the instances, SSH and host keys),
:mod:`~sshcluster.ec2.ready` (waiting for the setup), :mod:`~sshcluster.ec2.output` (the
inventory ``up`` writes), :mod:`~sshcluster.ec2.startup`
(starting a cluster), :mod:`~sshcluster.ec2.signals` (SIGTERM, SIGHUP and
Ctrl-C during ``up``), :mod:`~sshcluster.ec2.cleanup` (removing one),
:mod:`~sshcluster.ec2.clusters` (ls, down), :mod:`~sshcluster.ec2.garbage` (gc) and
:mod:`~sshcluster.ec2.cli` (the ``sshcluster ec2`` commands).
"""

from __future__ import annotations

from sshcluster.ec2.aws import aws_error, make_client
from sshcluster.ec2.cleanup import CleanupIncomplete, DownReport, remove_resources
from sshcluster.ec2.clusters import (
    ClusterStatus,
    down,
    format_clusters,
    list_all_clusters,
    list_clusters,
)
from sshcluster.ec2.garbage import (
    Garbage,
    collect_all_garbage,
    collect_garbage,
    find_all_garbage,
    find_garbage,
)
from sshcluster.ec2.images import IMAGE_NAMES
from sshcluster.ec2.instances import (
    LIVE_STATES,
    TAG_CLUSTER,
    TAG_EXPIRES,
    TAG_JOB,
    TAG_OWNER,
    TAG_RUN,
    Endpoint,
    Instance,
    client_token,
    format_duration,
    format_time,
    utcnow,
)
from sshcluster.ec2.launch import dry_run
from sshcluster.ec2.plan import LaunchCheckFailed, LaunchPlan, plan_launch
from sshcluster.ec2.ready import SetupFailed, SetupStatus
from sshcluster.ec2.records import Record, default_owner, load_records, my_owners, state_dir
from sshcluster.ec2.regions import (
    RegionResults,
    Results,
    each_region,
    resolve_region,
    search_regions,
)
from sshcluster.ec2.signals import Interrupted
from sshcluster.ec2.spec import (
    MAX_LIFETIME,
    MIN_LIFETIME,
    NAME_RULE,
    REGION_RULE,
    EC2Spec,
    is_cluster_name,
    is_region,
    load_spec,
    parse_duration,
    parse_spec,
)
from sshcluster.ec2.startup import (
    SETUP_TIMEOUT,
    Cluster,
    Seams,
    cluster,
    default_address,
    next_steps,
    up,
)
from sshcluster.ec2.userdata import user_data
from sshcluster.ec2.wait import AddressOf, ConsoleText, Progress, Step
from sshcluster.errors import EC2Error, ForeignCluster, NoSuchCluster

__all__ = [
    "IMAGE_NAMES",
    "LIVE_STATES",
    "MAX_LIFETIME",
    "MIN_LIFETIME",
    "NAME_RULE",
    "REGION_RULE",
    "SETUP_TIMEOUT",
    "TAG_CLUSTER",
    "TAG_EXPIRES",
    "TAG_JOB",
    "TAG_OWNER",
    "TAG_RUN",
    "AddressOf",
    "CleanupIncomplete",
    "Cluster",
    "ClusterStatus",
    "ConsoleText",
    "DownReport",
    "EC2Error",
    "EC2Spec",
    "Endpoint",
    "ForeignCluster",
    "Garbage",
    "Instance",
    "Interrupted",
    "LaunchCheckFailed",
    "LaunchPlan",
    "NoSuchCluster",
    "Progress",
    "Record",
    "RegionResults",
    "Results",
    "Seams",
    "SetupFailed",
    "SetupStatus",
    "Step",
    "aws_error",
    "client_token",
    "cluster",
    "collect_all_garbage",
    "collect_garbage",
    "default_address",
    "default_owner",
    "down",
    "dry_run",
    "each_region",
    "find_all_garbage",
    "find_garbage",
    "format_clusters",
    "format_duration",
    "format_time",
    "is_cluster_name",
    "is_region",
    "list_all_clusters",
    "list_clusters",
    "load_records",
    "load_spec",
    "make_client",
    "my_owners",
    "next_steps",
    "parse_duration",
    "parse_spec",
    "plan_launch",
    "remove_resources",
    "resolve_region",
    "search_regions",
    "state_dir",
    "up",
    "user_data",
    "utcnow",
]
