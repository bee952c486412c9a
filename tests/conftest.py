"""Shared fixtures: the local SSH test hosts come from sshcluster.testing.fixtures (as a
user's own tests would get them); the EC2 stand-in is here.

Tests that need test hosts skip when this machine cannot build them (not root, no network
namespaces), except in CI (``CI=true``), where the multi-host tests must run: there the
fixtures fail instead.
"""

from __future__ import annotations

import contextlib
import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["sshcluster.testing.fixtures"]

# --------------------------------------------------------------------------- nothing left

#: Where, under root's home, a job on the test hosts writes by default: its workers'
#: results/ (a job without a workdir starts in the login directory), and sshcluster's own
#: state (a detached job's directory on its primary host, the hosts' lease files, the
#: bootstrap's library), and the primary's records (without SSHCLUSTER_STATE_DIR). The
#: test hosts share this machine's filesystem, so "on a host" is this machine's /root: a
#: test must keep out of it. (~/.cache/sshcluster itself may appear: each test host
#: mounts its testbed's own directory there, see sshcluster.testing.hosts.)
HOME_WATCHED = ("results", ".cache/sshcluster/jobs", ".cache/sshcluster/leases",
                ".cache/sshcluster/lib", ".local/state/sshcluster",
                # (and what is in these: a new job's record where runs/ already exists)
                ".local/state/sshcluster/runs", ".local/state/sshcluster/ec2")


def home_entries() -> set[Path]:
    """The :data:`HOME_WATCHED` directories of root's home that exist, what is in each
    (one level), and what is in ~/.cache/sshcluster."""
    home = Path(pwd.getpwnam("root").pw_dir)
    out: set[Path] = set()
    # (a directory missing, or not readable when not root, where no testbed is made)
    for name in HOME_WATCHED:
        with contextlib.suppress(OSError):
            out |= {home / name, *(home / name).iterdir()}
    with contextlib.suppress(OSError):
        out |= set((home / ".cache/sshcluster").iterdir())
    return out


#: What root's home held where jobs write when the session started (the controller's
#: record: with pytest-xdist, the workers' sessions start and end at other times).
HOME_BEFORE = pytest.StashKey[set[Path]]()


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):
        session.config.stash[HOME_BEFORE] = home_entries()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The session fails if it left anything new in root's home where jobs write
    (:data:`HOME_WATCHED`), checked once, after every test of every worker has ended."""
    if hasattr(session.config, "workerinput") or HOME_BEFORE not in session.config.stash:
        return
    new = sorted(home_entries() - session.config.stash[HOME_BEFORE])
    if new:
        shown = ", ".join(map(str, new[:10])) + (f" and {len(new) - 10} more"
                                                 if len(new) > 10 else "")
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"the tests left {len(new)} new entries in root's home: {shown}"
        if reporter is not None:
            reporter.write_line(f"FAILED (home): {message}", red=True, bold=True)
        else:
            print(message)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --------------------------------------------------------------------------- EC2 stand-in

#: The region the EC2 tests use against moto.
REGION = "us-east-1"


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's EC2 server over HTTP on 127.0.0.1; boto3 is pointed at it through the
    environment (fake credentials, ``AWS_ENDPOINT_URL``), never at real AWS."""
    from moto.server import ThreadedMotoServer


    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION,
           "AWS_ENDPOINT_URL": url, "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    saved = {k: os.environ.get(k) for k in [*env, "AWS_PROFILE"]}
    os.environ.update(env)
    os.environ.pop("AWS_PROFILE", None)
    try:
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


# --------------------------------------------------------------------------- tiers

#: A test that uses this fixture, directly or through another fixture, needs this
#: machine's privileges (root, network namespaces) and mostly local SSH test hosts:
#: every testbed fixture depends on it.
TESTBED_FIXTURE = "root"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``testbed`` from the fixtures each test uses, never by hand, so that
    ``-m "not testbed"`` (scripts/test.sh --fast) leaves out exactly the tests that need
    root, network namespaces or sshd."""
    for item in items:
        if TESTBED_FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.testbed)
    # The slow tests first (a stable sort: each group keeps its order), so that with
    # several workers (pytest-xdist) the longest ones start at once and the short ones
    # fill in around them, instead of one long test starting last.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
