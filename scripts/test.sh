#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite: lint, types, then pytest.
# The multi-host tests build SSH test hosts in network namespaces and need root;
# with CI=true they must run (a testbed that cannot be built fails the run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check sshcluster tests bench
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
