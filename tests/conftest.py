"""Shared fixtures: local SSH test hosts (see sshcluster.testbed).

Tests that need them skip when this machine cannot build them (not root, no network
namespaces), except in CI (``CI=true``), where the multi-host tests must run: there the
fixtures fail instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sshcluster.errors import TestbedError
from sshcluster.testbed import Testbed, down_all, require_root_and_netns

#: Every testbed made by the test suite has a name with this prefix, so a test session
#: can clean up after an earlier one that was killed without touching anyone else's.
TEST_PREFIX = "sct"

MakeTestbed = Callable[..., Testbed]


def fresh_name() -> str:
    """A fresh testbed name for a test (``sct`` + 4 hex digits)."""
    return TEST_PREFIX + secrets.token_hex(2)


def _require() -> None:
    try:
        require_root_and_netns()
    except TestbedError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the testbed tests, but: {e}")
        pytest.skip(str(e))


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
