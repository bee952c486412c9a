"""pytest fixtures for testing R code on local SSH test hosts.

Register them in your ``conftest.py``::

    pytest_plugins = ["sshcluster.testing.fixtures"]

and write tests that take ``testbed`` (four hosts shared by the whole session) or
``make_testbed`` (any number, removed at the end of the test)::

    from sshcluster.testing.fixtures import run_r_in_test

    def test_my_package_on_four_hosts(testbed, tmp_path):
        testbed.write_inventory(tmp_path / "hosts.yaml")
        ...  # render the bootstrap, then
        out = run_r_in_test('source("cluster.R"); ...', tmp_path)
        assert out.returncode == 0, out.stderr

A test that needs test hosts skips where this machine cannot build them (not root, no
network namespaces), except with ``CI=true``, where it fails instead: CI installs
everything and must run every test. Every testbed made here has a name starting with
:data:`TEST_PREFIX`, and a session starts by removing such testbeds left by an earlier
session that was killed (only those whose owner process has exited).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import pytest

from sshcluster.errors import TestbedError
from sshcluster.testing.hosts import TestHost
from sshcluster.testing.registry import down_all
from sshcluster.testing.rscript import RTimeout, run_r_code
from sshcluster.testing.spec import new_name, require_root_and_netns
from sshcluster.testing.testbed import Testbed

__all__ = [
    "R_TIMEOUT",
    "TEST_PREFIX",
    "MakeTestbed",
    "build_testbed",
    "fresh_name",
    "make_testbed",
    "root",
    "run_r_in_test",
    "skip_or_fail",
    "squatter",
    "testbed",
    "testbed_env",
]

#: Every testbed made by a test session has a name with this prefix, so a session can
#: clean up after an earlier one that was killed without touching anyone else's.
TEST_PREFIX = "sct"

#: Seconds an R run may take before the test fails (a hung launch must not hang the suite).
R_TIMEOUT = 90

#: The type of the :func:`make_testbed` fixture: ``make_testbed(n, **kwargs)``.
MakeTestbed = Callable[..., Testbed]


def fresh_name() -> str:
    """A fresh testbed name for a test (:data:`TEST_PREFIX` + 6 hex digits), not one that
    exists on this machine: a run builds hundreds, several at once (with 4 hex digits two
    alike met in a run here, and the second failed to build)."""
    return new_name(TEST_PREFIX, 6)


def skip_or_fail(reason: str) -> NoReturn:
    """Skip a test that this machine cannot run; in CI (``CI=true``) fail it instead,
    because CI installs everything the suite needs and must run every test."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this test, but: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def root() -> None:
    """This process is root, and can create namespaces (else skip, or fail in CI): for
    tests that act as another user or cut themselves off the network without a testbed.
    Tests that use it are marked ``testbed`` with the rest that need this machine's
    privileges."""
    try:
        require_root_and_netns()
    except TestbedError as e:
        skip_or_fail(str(e))


@pytest.fixture(scope="session")
def testbed_env(root: None) -> None:
    """This machine can build testbeds (else skip, or fail in CI).

    Also removes test testbeds left by killed earlier runs (only those whose owner is gone).
    """
    try:
        down_all(TEST_PREFIX)
    except TestbedError as e:  # leftovers we cannot remove do not stop this run
        print(f"warning: {e}")


def build_testbed(request: pytest.FixtureRequest, n: int, **kwargs: Any) -> Testbed:
    """Build ``Testbed(n, **kwargs)`` (named by :func:`fresh_name` unless ``name`` is
    given), removed when ``request``'s scope ends: for fixtures of any scope."""
    kwargs.setdefault("name", fresh_name())
    tb = Testbed(n, **kwargs)
    # Registered before up(), so the testbed goes even if the session is interrupted.
    request.addfinalizer(tb.down)
    return tb.up()


@pytest.fixture(scope="session")
def testbed(request: pytest.FixtureRequest, testbed_env: None) -> Iterator[Testbed]:
    """Four SSH hosts, shared by the whole session; tests must leave them as they found them."""
    yield build_testbed(request, 4)


@pytest.fixture
def make_testbed(request: pytest.FixtureRequest, testbed_env: None) -> MakeTestbed:
    """Factory for a testbed of any size, torn down at the end of the test.

    ``make_testbed(n, **kwargs)`` takes the arguments of :class:`Testbed`.
    """

    def make(n: int, **kwargs: Any) -> Testbed:
        return build_testbed(request, n, **kwargs)

    return make


def run_r_in_test(
    code: str, directory: Path, timeout: float = R_TIMEOUT, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the R ``code`` (written to a new file in ``directory``) and return its result;
    if it runs longer than ``timeout`` seconds, fail the test with what R printed, the
    launcher's per-host files and the process tree at the deadline."""
    try:
        # (R's TMPDIR in the test's directory: what its launch starts on this machine
        # can be told apart, see nothing_left())
        return run_r_code(code, directory, timeout=timeout,
                          env={"TMPDIR": str(directory), **(env or {})})
    except RTimeout as e:
        pytest.fail(f"{e.message}\n{e.diagnostics()}")


@contextlib.contextmanager
def squatter(host: TestHost, port: int) -> Iterator[None]:
    """Someone else listens on 127.0.0.1:``port`` on ``host`` for the duration; the test
    fails if anything connects to it (a reverse tunnel must never be hijacked)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", host.netns, "python3", "-c",
         "import socket, sys\n"
         "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
         "print('up', flush=True); s.settimeout(60); c, _ = s.accept(); print('HIJACKED')\n",
         str(port)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        yield
    finally:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
    assert "HIJACKED" not in out
