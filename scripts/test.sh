#!/usr/bin/env bash
# Set up (scripts/setup.sh), then lint, types and the tests.
#
#   bash scripts/test.sh            # the whole suite (the multi-host tests need root)
#   bash scripts/test.sh --fast     # only what needs no root, namespaces or sshd: a minute
#   bash scripts/test.sh tests/test_inventory.py -k ncore   # pytest's own arguments
#
# The whole suite runs in two parts: the tests that need nothing of this machine, four at
# a time (pytest-xdist), then those that build SSH test hosts or are slow, four at a time
# (SSHCLUSTER_TESTBED_WORKERS=N for another number)
# (each builds its own test hosts on a subnet of its own; on 2 cores, four keep the CPU
# about 94% busy: their R workers, R primaries and ssh). Each part prints its 25 slowest tests. The
# process tests run once each here; scripts/loop.sh runs them 20 times. With CI=true the
# multi-host tests must run: if the test hosts cannot be built, the run fails instead of
# skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

fast=0
if [[ ${1:-} == --fast ]]; then
  fast=1
  shift
fi

bash scripts/setup.sh
.venv/bin/ruff check sshcluster tests bench
.venv/bin/mypy

pytest=(.venv/bin/python -m pytest)
#: What needs no root, network namespaces or sshd (the testbed mark is set from the
#: fixtures a test uses) and is not a fault, scale or soak test.
quick=(-m "not testbed and not slow" -n 4)

if ((fast)); then
  exec "${pytest[@]}" "${quick[@]}" --durations=10 "$@"
fi
if (($#)); then
  exec "${pytest[@]}" --durations=25 "$@"
fi

rc=0
"${pytest[@]}" "${quick[@]}" --durations=25 || rc=$?
"${pytest[@]}" -m "testbed or slow" -n "${SSHCLUSTER_TESTBED_WORKERS:-4}" --durations=25 || rc=$?
exit "$rc"
