"""Shared fixtures: local SSH test hosts (see sshcluster.testbed).

Tests that need them skip when this machine cannot build them (not root, no network
namespaces), except in CI (``CI=true``), where the multi-host tests must run: there the
fixtures fail instead.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pytest

from sshcluster.errors import TestbedError
from sshcluster.testbed import Testbed, TestHost, require_root_and_netns
from sshcluster.testbeds import down_all

#: Every testbed made by the test suite has a name with this prefix, so a test session
#: can clean up after an earlier one that was killed without touching anyone else's.
TEST_PREFIX = "sct"

MakeTestbed = Callable[..., Testbed]


def fresh_name() -> str:
    """A fresh testbed name for a test (``sct`` + 4 hex digits)."""
    return TEST_PREFIX + secrets.token_hex(2)


def skip_or_fail(reason: str) -> NoReturn:
    """Skip a test that this machine cannot run; in CI (``CI=true``) fail it instead,
    because CI installs everything the suite needs and must run every test."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this test, but: {reason}")
    pytest.skip(reason)


def _require() -> None:
    try:
        require_root_and_netns()
    except TestbedError as e:
        skip_or_fail(str(e))


@pytest.fixture(scope="session")
def testbed_env() -> None:
    """This machine can build testbeds (else skip, or fail in CI).

    Also removes test testbeds left by killed earlier runs (only those whose owner is gone).
    """
    _require()
    try:
        down_all(TEST_PREFIX)
    except TestbedError as e:  # leftovers we cannot remove do not stop this run
        print(f"warning: {e}")


def _build(request: pytest.FixtureRequest, n: int, **kwargs: Any) -> Testbed:
    kwargs.setdefault("name", fresh_name())
    tb = Testbed(n, **kwargs)
    # Registered before up(), so the testbed goes even if the session is interrupted.
    request.addfinalizer(tb.down)
    return tb.up()


@pytest.fixture(scope="session")
def testbed(request: pytest.FixtureRequest, testbed_env: None) -> Iterator[Testbed]:
    """Four SSH hosts, shared by the whole session; tests must leave them as they found them."""
    yield _build(request, 4)


@pytest.fixture
def make_testbed(request: pytest.FixtureRequest, testbed_env: None) -> MakeTestbed:
    """Factory for a testbed of any size, torn down at the end of the test.

    ``make_testbed(n, **kwargs)`` takes the arguments of :class:`Testbed`.
    """

    def make(n: int, **kwargs: Any) -> Testbed:
        return _build(request, n, **kwargs)

    return make


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


@contextlib.contextmanager
def squatter(host: TestHost, port: int) -> Iterator[None]:
    """Someone else listens on 127.0.0.1:``port`` on ``host`` for the duration; the test
    fails if anything connects to it (a reverse tunnel must never be hijacked)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", host.netns, "python3", "-c",
         "import socket, sys\n"
         "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
         "print('up', flush=True); s.settimeout(60); c, _ = s.accept(); print('HIJACKED')\n",
         str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        yield
    finally:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
    assert "HIJACKED" not in out
