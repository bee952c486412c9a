#!/usr/bin/env bash
# The process tests looped: every way a launch, a failed launch or a job can end, N times
# (default 20), each time counting what is left on the primary and on every host. The
# suite (scripts/test.sh) runs each once; run this after changing start, stop, signals
# or cleanup. It takes long (about 20 s per launch-ending matrix cell and run).
#
#   bash scripts/loop.sh        # 20 times
#   bash scripts/loop.sh 5      # 5 times
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20}
bash scripts/setup.sh
export SSHCLUSTER_LEFTOVER_RUNS=$n SSHCLUSTER_FAILED_LAUNCH_TRIES=$n SSHCLUSTER_SIGNAL_LOOPS=$n
export SSHCLUSTER_DETACH_LOOPS=$n
export SSHCLUSTER_CONTAINER_RUNS=$n
exec .venv/bin/python -m pytest -n 2 -q -p no:cacheprovider \
  tests/test_launch_leftovers.py \
  "tests/test_cluster_faults.py::test_a_failed_launch_leaves_nothing_every_time" \
  tests/jobs/test_signals.py \
  tests/containers/test_launch.py \
  "tests/jobs/test_detached.py::test_stop_ends_a_detached_job_and_everything_it_started" \
  "tests/jobs/test_detached.py::test_a_supervisor_killed_outright_leaves_nothing"
