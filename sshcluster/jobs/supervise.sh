# sshcluster run --detach: a job's supervisor on its primary host. It runs in the job's
# directory (~/.cache/sshcluster/jobs/JOB), in a session of its own (setsid), so the
# user's ssh connection may end: it owns everything of the job and stops it.
#   job.env         JOB, RSCRIPT, MODE (try|wait), N (hosts), LEASE_TIMEOUT, STOP_TIMEOUT,
#                   HEARTBEAT (seconds between the lines each lease session hears)
#   args.sh         "set -- ARGS..." (the script's commandArgs(TRUE))
#   hosts           host I's label on line I
#   lease.I.in      what host I's lease session reads (lease.sh and its settings)
#   lease.I.cmd     the command that opens host I's lease session (ssh, or sh here)
# It writes: pid, started, state (leasing | waiting HOST N WHO... | running | refused
# HOST JOB<TAB>WHO... | failed WHY | ended; why: the refused/failed line it ended on),
# leased, r-ended, ended, status, stopped, log (R's
# stdout and stderr), workers/HOST.log and driver.R's notes. At its end it removes
# access_key (the key an EC2 job's fleet authorizes for it), if any, and R's TMPDIR
# (see below).
#
# Who stops what: the leases last as long as this shell holds the fifo "hold" open for
# writing (fd 9): each lease session reads it after its script, so when this shell ends,
# however it ends, every lease session sees the end of its input and ends, and the
# host's kernel drops the lock. Meanwhile each hears a line every HEARTBEAT seconds: a
# host cut off from this one without a word (every packet dropped) ends its lease by
# itself once those lines stop (lease.sh). R is this shell's child; if this shell is
# killed outright, its watcher stops R, and R's end stops the cluster (the launch's own
# supervisor ends every host's session, and each host stops its workers). No other
# process holds fd 9 (every command runs with 9>&-).
#
# R's temporary files (its tempdir(), with the launch's directory in it) go in a
# directory of the job's own, made in the host's TMPDIR (else /tmp), where R would have
# made its own ($tmp): R ended by a signal (a stop) leaves its tempdir behind. R, and
# everything it starts, inherit fd 8, a lock on $tmp/.lock that nothing else holds: once
# that lock is free they are all gone, and $tmp goes (drop_tmp), however R ended; if
# this shell was killed outright, its watcher removes it.
umask 077
. ./job.env
echo $$ >pid
# The time, in seconds, to the nanosecond where date can (BusyBox's prints %N as is).
now() { t=$(date +%s.%N 9>&- 8>&-); case $t in *[!0-9.]*) date +%s 9>&- 8>&-;; *) echo "$t";; esac; }
now >started
state() { printf '%s\n' "$*" >state.tmp && mv state.tmp state; }
rpid=''
stopping=''
# SIGTERM (sshcluster stop), SIGINT, SIGHUP: stop R, then end as below.
trap 'stopping=1; : >stopped; [ -n "$rpid" ] && kill -s TERM "$rpid" 2>/dev/null' TERM INT HUP
state leasing
rm -f hold && mkfifo hold && exec 9<>hold || { state "failed cannot make a fifo in $PWD"; exit 1; }

# What host I's lease session reads: its script, then a line every HEARTBEAT seconds
# until this shell lets go of the fifo (its end: the ticker is stopped at once, and
# its sleep holds none of the session's input).
feed() {
  cat "lease.$1.in"
  while echo; do sleep "$HEARTBEAT" </dev/null >/dev/null 2>&1; done &
  cat <hold
  kill -s TERM $! 2>/dev/null
}

start_lease() {
  # (9 closed by exec: a redirection on the function's call would keep a copy of it,
  # which dash saves on another descriptor while the function runs, and so the fifo
  # would never end for the feed's own cat)
  ( exec 9>&-; feed "$1" ) | sh "lease.$1.cmd" >"lease.$1.out" 2>"lease.$1.err" 9>&- &
  eval "lp_$1=\$!"
}

finish() {  # $1: the job's status
  exec 9>&-  # the leases end with their input
  [ -n "${wpid:-}" ] && kill -s TERM "$wpid" 2>/dev/null
  drop_tmp  # (while the lease sessions end)
  i=1
  while [ $i -le "$N" ]; do  # each lease session within 5 s, or it is ended
    eval "p=\${lp_$i:-}"
    k=0
    while [ -n "$p" ] && kill -s 0 "$p" 2>/dev/null && [ $k -lt 50 ]; do sleep 0.1; k=$((k + 1)); done
    [ -n "$p" ] && kill -s TERM "$p" 2>/dev/null
    i=$((i + 1))
  done
  # R has ended and so have the leases: nothing of the job opens an ssh connection any
  # more, and the key made for it (run --ec2 --detach) need not wait for fetch or stop.
  rm -f access_key
  echo "$1" >status
  now >ended
  # A refusal or failure stays readable after "ended" replaced it (the start polls).
  case "$(cat state 2>/dev/null)" in refused\ *|failed\ *) cp state why ;; esac
  state ended
  exit 0
}

label() { sed -n "${1}p" hosts; }

# Remove $tmp once nothing holds its lock (R and all it started are gone: the launch's
# own supervisor ends its sessions within seconds of R's end), or after 10 s: what R
# started and left running loses it then, as it would lose R's own tempdir at R's end.
tmp=''
drop_tmp() {
  [ -n "$tmp" ] && [ -d "$tmp" ] || return 0
  k=0
  while ! flock -n "$tmp/.lock" true 2>/dev/null && [ $k -lt 100 ]; do
    sleep 0.1; k=$((k + 1))
  done
  rm -rf -- "$tmp"
}

# Take the leases: all at once (try), or one host after another in one order (wait), so
# that two waiting jobs never each hold what the other waits for.
if [ "$MODE" = try ]; then
  i=1; while [ $i -le "$N" ]; do start_lease $i; i=$((i + 1)); done
fi
deadline=$(( $(date +%s) + LEASE_TIMEOUT ))
i=1
while [ $i -le "$N" ]; do
  [ "$MODE" = wait ] && start_lease $i
  while :; do
    [ -n "$stopping" ] && finish 143
    line=$(tail -n 1 "lease.$i.out" 2>/dev/null)
    case "$line" in
      leased) break ;;
      held\ *) state "refused $(label $i) ${line#held }"; finish 1 ;;
      wait\ *) state "waiting $(label $i) ${line#wait }" ;;
      error\ *) state "failed $(label $i): cannot take its lease: ${line#error }"; finish 1 ;;
    esac
    eval "p=\$lp_$i"
    if ! kill -s 0 "$p" 2>/dev/null; then
      # Its last word may have come just before it ended, after the look above (a
      # refusal: the session says "held ..." and ends): that word is the answer.
      case "$(tail -n 1 "lease.$i.out" 2>/dev/null)" in
        leased) break ;;
        held\ *|error\ *) continue ;;
      esac
      why=$(grep -v '^$' "lease.$i.err" 2>/dev/null | tail -n 1)
      state "failed $(label $i): cannot take its lease from this host: ${why:-its session ended}"
      finish 1
    fi
    if [ "$(date +%s)" -gt "$deadline" ]; then
      state "failed $(label $i): no answer about its lease in time"; finish 1
    fi
    sleep 0.1
  done
  i=$((i + 1))
done

now >leased
mkdir -p workers
. ./args.sh
buffer=''
command -v stdbuf >/dev/null 2>&1 && buffer='stdbuf -oL'
# (the lock taken before R starts: the lease sessions, started earlier, hold none of it)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sshcluster-job.XXXXXX") && : >"$tmp/.lock" &&
  exec 8<"$tmp/.lock" && flock -n 8 ||
  { state "failed cannot make R's temporary directory in ${TMPDIR:-/tmp}"; finish 1; }
SSHCLUSTER_RUN_DIR=$PWD SSHCLUSTER_BOOTSTRAP=$PWD/cluster.R SSHCLUSTER_SCRIPT=$PWD/script.R \
  TMPDIR=$tmp $buffer "$RSCRIPT" driver.R "$@" </dev/null >log 2>&1 9>&- &
rpid=$!
exec 8<&-  # (R's now, and its children's)
state running
# If this shell is killed outright, R must not outlive it.
me=$$
( while kill -s 0 "$me" 2>/dev/null && kill -s 0 "$rpid" 2>/dev/null; do sleep 1; done
  kill -s 0 "$me" 2>/dev/null && exit 0
  kill -s TERM "$rpid" 2>/dev/null
  k=0
  while kill -s 0 "$rpid" 2>/dev/null && [ $k -lt "$STOP_TIMEOUT" ]; do sleep 1; k=$((k + 1)); done
  kill -s KILL "$rpid" 2>/dev/null
  drop_tmp ) </dev/null >/dev/null 2>&1 9>&- &
wpid=$!
wait "$rpid"; rc=$?
stop_at=''
while kill -s 0 "$rpid" 2>/dev/null; do  # a trap cut the wait short: R is stopping
  [ -z "$stop_at" ] && stop_at=$(( $(date +%s) + STOP_TIMEOUT ))
  [ "$(date +%s)" -gt "$stop_at" ] && kill -s KILL "$rpid" 2>/dev/null
  sleep 0.2
  wait "$rpid"; rc=$?
done
now >r-ended
finish "$rc"
