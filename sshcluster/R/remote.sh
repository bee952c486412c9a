# sshcluster's script on each worker host, run as
#   sh -c SCRIPT sshcluster RSCRIPT MASTER PORT MACHINE TIMEOUT MODE START SILENCE [NAME=VALUE...]
# (ssh's command line, read_script.sh, reads it with $code, the workers' R code,
# from the session's stdin first, then evaluates it with those arguments).
# MODE is "tunnel" or "direct", START "fork" or "fresh"; NAME=VALUE pairs (the
# primary's locale, and SSHCLUSTER_OUTPUT: where the workers' output goes) are
# exported to R (a locale this host lacks replaced by C.UTF-8 or C: locale.sh, pasted
# before this script with workdir.sh and lease.sh, as they are before the check's). Its
# stdin is the ssh session's: after the script itself, one line of worker tokens (never
# on a command line, where other users could read it), then, behind a reverse tunnel, "go", then a heartbeat line
# every few seconds for as long as the primary's R session lives.
#
# Nothing this script starts may outlive the session. A watchdog, started before
# anything else, reads the heartbeat; when the session's stdin ends (ssh ended,
# the primary is gone) or falls silent for SILENCE seconds (the primary is cut
# off), it stops the session's whole process group: the R workers, their forks,
# and whatever they started in the background. sshd makes each session its own
# process group. TERM is never trapped here: a shell that traps TERM passes the
# trap to each child it forks until that child execs, and a TERM arriving in
# between would be swallowed.
r="$1"; master="$2"; port="$3"; machine="$4"; timeout="$5"; mode="$6"; start="$7"
silence="$8"
shift 8
# sshd may hang the session up; the watchdog decides when to stop, not a HUP.
trap '' HUP
for kv in "$@"; do export "$kv"; done
# (in a container, what counts is the image's locales, not the host's)
[ -n "${SSHCLUSTER_CONTAINER:-}" ] || sshcluster_locales "$@" >/dev/null
IFS= read -r tokens || exit 0
[ -n "${SSHCLUSTER_CONTAINER:-}" ] || command -v "$r" >/dev/null 2>&1 || {
  echo "sshcluster: $r not found on $(uname -n) (PATH=$PATH); set rscript: in the inventory" >&2
  exit 127
}
# The inventory's workdir: made if missing, and the workers start in it (workdir.sh,
# pasted before this script, as it is before the check's).
if [ -n "${SSHCLUSTER_WORKDIR:-}" ]; then
  sshcluster_workdir "$SSHCLUSTER_WORKDIR" || exit 126
fi
# Behind a reverse tunnel, start only once the primary has seen "ready": ssh has
# then processed sshd's answer to its -R request, so the port is ours.
if [ "$mode" = tunnel ]; then
  echo ready
  IFS= read -r go || exit 0
fi
# lease: true: this session holds the host's lease for as long as it lives, as a job's
# lease session does (jobs/lease.sh: the same file, a flock the kernel drops when the
# session's last process ends). Taken only now, past the last read without a watchdog
# ("go" above): a primary cut off before it would else keep the host leased for good.
# Only this shell and its watchdog hold the lock's descriptor (9): the workers and
# whatever they start (a program of theirs that outlives the cluster) run with 9>&-.
# A host leased to anyone else fails the launch, naming the holder; an older session
# of this same cluster (a repair's host that was cut off) ends within SILENCE
# seconds, so it is waited for.
if [ -n "${SSHCLUSTER_LEASE:-}" ]; then
  # (lease.sh, pasted before this script, as it is before the check's)
  rc=0; sshcluster_lease_try || rc=$?
  [ $rc -le 1 ] || exit 125
  if [ $rc -eq 1 ]; then
    h=$(head -n 1 "$lf")
    if [ "${h%%	*}" = "${SSHCLUSTER_LEASE%%	*}" ] && flock -w "$silence" 9; then :; else
      echo "sshcluster: $(uname -n) is leased to $(sshcluster_lease_holder "$h"); 'sshcluster jobs' lists the leases" >&2
      exit 125
    fi
  fi
  : >"$lf"
  printf '%s\t%s\n' "$SSHCLUSTER_LEASE" "$$" >&9
fi
me=$$
leader=''
# --- containers (sshcluster/containers/container.sh, pasted before this script): the
# workers run in a container of the host's, which every way out removes.
in=''
unbox=:
if [ -n "${SSHCLUSTER_CONTAINER:-}" ]; then
  sshcluster_container_engine || exit $?
  unbox=sshcluster_container_remove
fi
# ---
# A signal to a process group: POSIX's "kill -s SIG -- -PGID", which BusyBox's kill
# refuses ("invalid number '--'"), then BusyBox's "kill -s SIG -PGID", which dash
# refuses (as an option).
group_kill() { kill -s "$1" -- "-$2" 2>/dev/null || kill -s "$1" "-$2" 2>/dev/null; }
group_kill 0 "$me" && leader=yes

watchdog() {
  # Immune to the group's signals below, so that it lives to send the group KILL.
  trap '' TERM INT USR2
  if command -v bash >/dev/null 2>&1; then
    bash --norc --noprofile -c \
      'while IFS= read -r -t "$1" _; do kill -s 0 "$2" 2>/dev/null || exit 0; done' \
      sshcluster "$silence" "$me"
  elif timeout 1 sleep 0 </dev/null >/dev/null 2>&1; then
    # (a timeout that takes "timeout SECONDS COMMAND": BusyBox's before 1.30 wants -t,
    # and failing at once would end the session at once)
    # --foreground where it exists: else GNU timeout moves itself and its reader to a
    # process group of their own, out of reach of the group kill below, and they
    # outlive the session by up to SILENCE seconds (holding its output open, so sshd
    # does not close it either).
    fg=''
    timeout --foreground 1 sleep 0 </dev/null >/dev/null 2>&1 && fg=--foreground
    while timeout $fg "$silence" sh -c 'IFS= read -r _' && kill -s 0 "$me" 2>/dev/null; do :; done
  else
    while IFS= read -r _ && kill -s 0 "$me" 2>/dev/null; do :; done
  fi
  $unbox again 9>&-
  if [ "$leader" ]; then
    # TERM (not USR2, on which R runs its whole exit inside its signal handler, and
    # aborts about one time in three): the workers' temporary files go with the
    # session's directory below, whatever ended them.
    group_kill TERM "$me"
    sleep 2
    [ -z "$sess" ] || rm -rf -- "$sess"
    group_kill KILL "$me"
  else
    kill -s TERM "$me" 2>/dev/null
  fi
}
# The workers' temporary files (their tempdir()s, what they write there) go in a
# directory of this session's, removed however the session ends (made here, just before
# the watchdog and the exit trap that remove it): R removes its own when
# it quits, not when it is killed. (In a container, the container's /tmp goes with it.)
# A program a worker starts that must outlive the cluster (with setsid) finds the host's
# own in SSHCLUSTER_HOST_TMPDIR.
sess=''
if [ -z "${SSHCLUSTER_CONTAINER:-}" ]; then
  export SSHCLUSTER_HOST_TMPDIR="${TMPDIR:-/tmp}"
  sess=$(umask 077 && mktemp -d "${TMPDIR:-/tmp}/sshcluster-workers.XXXXXX" 2>/dev/null) &&
    export TMPDIR="$sess" || sess=''
fi
# A USR2 to the group (tooling of the user's) must not end this script without its exit
# trap (R sets its own handler whatever it inherits).
trap '' USR2
# (A background job's stdin is /dev/null unless it is redirected by name.)
exec 3<&0
watchdog <&3 &
watch=$!
exec 0</dev/null 3<&-
pids=''
# On the way out, stop what is left: the watchdog and, as the group leader,
# everything the workers left behind; else each worker this script started.
# The reaper: 2 s after the group's TERM, the session's temporary files go, and KILL
# for whatever the workers started that shrugs TERM off. A process of the group (so its
# id stays the group's) that ignores TERM, holds none of the session's descriptors (the
# session ends now), and whose command line is not the session's (status would take it
# for a stray session).
reaper() {
  trap '' TERM
  exec sh -c 'sleep 2; [ -z "$1" ] || rm -rf -- "$1"
    kill -s KILL -- "-$2" 2>/dev/null || kill -s KILL "-$2"' \
    sshcluster-reaper "$sess" "$me" </dev/null >/dev/null 2>&1 4>&- 5>&- 9>&-
}
if [ "$leader" ]; then
  trap 'trap "" TERM; $unbox; kill -s KILL $watch 2>/dev/null; reaper &
    group_kill TERM "$me"' EXIT
else
  # Not under sshd (run by hand): only what this script knows of can be stopped,
  # so no forks, and TERM (the watchdog's) stops the workers too.
  trap '$unbox; kill -s KILL $watch 2>/dev/null; kill -s TERM $pids 2>/dev/null
    [ -z "$sess" ] || rm -rf -- "$sess"' EXIT
  trap 'exit 143' TERM
fi
if [ -n "${SSHCLUSTER_CONTAINER:-}" ]; then  # (containers)
  sshcluster_container_start 9>&- || exit $?
  in=sshcluster_container_exec
fi
# ---
rargs="--default-packages=datasets,utils,grDevices,graphics,stats,methods"
# The workers' code is a function, in the environment (Rscript drops an -e expression
# of 10,000 characters or more, counting each space and newline as three): the short
# -e below evaluates it, then calls it, once that evaluation has returned (no frame
# of eval() stays below the worker's: see worker.R).
export SSHCLUSTER_CODE="$code"
boot='(eval(parse(text = Sys.getenv("SSHCLUSTER_CODE"))))()'
exec 4>&1  # the session's stdout, for the "gone" reports
# R's own stdout (5): nowhere, or with worker_output: console the session's stdout,
# which the primary prints after the host's name.
if [ "${SSHCLUSTER_OUTPUT:-none}" = console ]; then exec 5>&4; else exec 5>/dev/null; fi
n=0
old=$IFS; IFS=,
for t in $tokens; do n=$((n + 1)); done
# (R tracks its forks with select(), which stops at file descriptor 1024: two
# per fork, so a host with more than 256 workers gets fresh ones.)
if [ "$start" = fork ] && [ "$leader" ] && [ "$n" -le 256 ]; then
  IFS=$old
  printf '%s\n' "$tokens" |
    $in "$r" "$rargs" -e "$boot" "$master" "$port" "$machine" "$timeout" fork >&5 9>&- &
  pids=$!
else
  for t in $tokens; do
    IFS=$old
    case $t in -*) continue ;; esac  # (a relay's token: these workers connect alone)
    if [ "$leader" ]; then
      # a subshell waits for the worker and reports its end (the group kill
      # reaches both)
      (
        printf '%s\n' "$t" |
          $in "$r" "$rargs" -e "$boot" "$master" "$port" "$machine" "$timeout" fresh >&5 9>&-
        rc=$?
        echo "gone ${t%%:*} $rc" >&4
        exit $rc
      ) &
    else
      printf '%s\n' "$t" |
        $in "$r" "$rargs" -e "$boot" "$master" "$port" "$machine" "$timeout" fresh >&5 9>&- &
    fi
    pids="$pids $!"
  done
  IFS=$old
fi
# Reaped pids are forgotten, so that the exit trap cannot hit a reused pid. An R
# that failed (to start, say) makes this script fail with its status.
rc=0
for p in $pids; do wait "$p" || rc=$?; done
pids=''
exit $rc
