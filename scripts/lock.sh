#!/usr/bin/env bash
# Refresh requirements.lock: the exact versions (with hashes) of every Python package that
# scripts/setup.sh installs, transitive ones and the build backend included.
#
#   bash scripts/lock.sh            # after a change to pyproject.toml's dependencies:
#                                   # keeps every pin it can, adds or drops what changed
#   bash scripts/lock.sh --upgrade  # take the newest releases within pyproject's ranges
#
# Then run the whole suite (bash scripts/test.sh) on the new lock before committing it.
# pyproject.toml keeps ranges, for people who pip install the library into their own
# environment; only this project's own scripts install from the lock.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8
tool=$(mktemp -d)
trap 'rm -rf "$tool"' EXIT
python3 -m venv "$tool/venv"
"$tool/venv/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION" 2>&1 \
  | grep -v -e '^WARNING: Location' >&2 || true
"$tool/venv/bin/uv" pip compile pyproject.toml scripts/build-requirements.in \
  --extra test --generate-hashes --universal --quiet \
  --custom-compile-command "bash scripts/lock.sh" -o requirements.lock "$@"
echo "lock: requirements.lock has $(grep -c '^[A-Za-z0-9].*==' requirements.lock) packages" >&2
