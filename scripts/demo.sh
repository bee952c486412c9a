#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the demo: build 4 local SSH test hosts, render the
# R bootstrap for them, run a Monte Carlo simulation across the cluster, tear down.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/sshcluster demo "$@"
