# lease: true on a host, shared by the launch (remote.sh, whose session holds the lease
# for as long as it lives) and the check (check/probe.sh, which tries the lock and lets
# go of it at once). The same file as a job's lease session (jobs/lease.sh): a flock
# the kernel drops when the last process holding its descriptor ends.

# Opens the host's lease file ($lf) on descriptor 9 and tries its lock without waiting.
# 0: locked, now this shell's; 1: held by another (its first line names the holder: see
# sshcluster_lease_holder); else no lock can be had here, which it says on stderr.
sshcluster_lease_try() {
  command -v flock >/dev/null 2>&1 || {
    echo "sshcluster: flock(1) not found on $(uname -n): lease: true needs util-linux" >&2
    return 3
  }
  ldir="${HOME:-/tmp}/.cache/sshcluster/leases"
  ns=$(readlink /proc/self/ns/net 2>/dev/null | tr -dc 0-9)
  lf="$ldir/$(uname -n)${ns:+-$ns}.lock"
  # ("command": a failed redirection of a plain exec would end the whole shell)
  mkdir -p "$ldir" && command exec 9>>"$lf" || {
    echo "sshcluster: cannot open $lf on $(uname -n)" >&2; return 3; }
  _rc=0; flock -n 9 || _rc=$?
  if [ $_rc -gt 1 ]; then  # (1: held; else no lock can be taken there: ENOLCK on NFS)
    echo "sshcluster: cannot lock $lf on $(uname -n) (flock exit $_rc): file locks do not work there (a home on NFS without a lock service?); lease: false in the inventory goes without" >&2
    return 3
  fi
  return $_rc
}

# The holder's line $1 (the lease file's first: job, who, since, script, tab-separated),
# as the launch names it.
sshcluster_lease_holder() {
  h=$(printf '%s' "$1" | awk -F '\t' '{ printf "job %s (%s, since %s, script %s)", $1, $2, $3, $4 }')
  printf '%s\n' "${h:-another job}"
}
