#!/usr/bin/env bash
# Install everything sshcluster, its demo and its tests need, on Debian 12 as root:
# the system packages (R, OpenSSH, iptables, iproute2) when missing, and a Python
# virtual environment in .venv with sshcluster and its test tools, at the versions of
# requirements.lock. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  r-base-core r-cran-parallelly r-cran-future r-cran-future.apply r-cran-doparallel
  r-cran-foreach r-cran-progressr
  r-cran-mass  # (a package the container tests' image has: R's own library, not Debian's r-base-core)
  r-cran-cli r-cran-crayon r-cran-prettyunits r-cran-sessioninfo  # (future.tests, in the tests)
  openssh-server openssh-client iptables iproute2 procps util-linux python3-venv
  tcsh fish rsync strace
  busybox  # (a host whose sh is BusyBox's ash, in the tests)
  podman runc
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) != 0 ]]; then
    echo "setup: need root to install: ${missing[*]}" >&2
    echo "setup: run as root, or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt_log=$(mktemp)
  trap 'rm -f "$apt_log"' EXIT
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>"$apt_log" \
    || { cat "$apt_log" >&2; exit 1; }
fi

# Podman on this kind of machine (workers in a container, docs/containers.md): runc, as
# crun refuses a hybrid cgroup layout; cgroupfs, with no systemd to ask; no default
# ulimits, as setting RLIMIT_NPROC is refused. A drop-in of ours, rewritten when it differs.
containers_conf=/etc/containers/containers.conf.d/50-sshcluster.conf
containers_text='# written by sshcluster scripts/setup.sh (docs/containers.md)
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"'
if [[ $(cat "$containers_conf" 2>/dev/null) != "$containers_text" ]]; then
  if [[ $(id -u) == 0 ]]; then
    mkdir -p "$(dirname "$containers_conf")"
    printf '%s\n' "$containers_text" >"$containers_conf"
  else
    echo "setup: as root, write $containers_conf for podman (see scripts/setup.sh)" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
# Runs a command quietly: its output is shown only if it fails (then setup fails too), so
# a working setup prints only its own lines.
quietly() {
  local out
  if ! out=$("$@" 2>&1); then
    printf '%s\n' "$out" | grep -v -e '^WARNING: Location' >&2
    echo "setup: failed: $*" >&2
    exit 1
  fi
}

# Exact, hashed versions of every Python package (requirements.lock, made by
# scripts/lock.sh), then sshcluster itself with nothing resolved afresh: what passed the
# suite is what installs, today and next month.
quietly .venv/bin/python -m pip install --disable-pip-version-check --require-hashes \
  -r requirements.lock
quietly .venv/bin/python -m pip install --disable-pip-version-check --no-deps \
  --no-build-isolation -e .
.venv/bin/python -c 'import sshcluster, asyncssh, boto3, moto, pytest' \
  || { echo "setup: the Python environment is incomplete" >&2; exit 1; }
echo "setup: ready (.venv, $(Rscript --version 2>&1 | head -n1), $(ssh -V 2>&1))" >&2
