# sshcluster's supervisor: the one process on the primary that holds every ssh
# session of a cluster, so that the R session itself needs a single connection
# for all of them (a pipe to this script's stdin), whatever the number of hosts.
#   sh supervisor.sh DIR HEARTBEAT RPID
# It reads commands from the R session, one per line:
#   start ID TOKENS MODE  run DIR/ID.sh (an ssh command) with, on its stdin, the
#                         host's script (DIR/remote.txt), the TOKENS line, then
#                         (MODE "tunnel") "go" once the host said "ready", then a
#                         heartbeat every HEARTBEAT seconds
#   kill ID               end that ssh session
#   stop GRACE            let the sessions end by themselves for GRACE seconds,
#                         then end them, and exit
# DIR/ID.sh writes DIR/ID.pid, .out, .err and, when ssh has ended, .status: that
# is how the R session learns that a host is gone, and ssh's own words for why.
# When the R session ends, in any way, this script's stdin ends: it then ends
# every session at once, and each host stops its workers (see remote.sh). Not
# quite in any way: a process the R session started (system(..., wait = FALSE),
# a local cluster) keeps a copy of that pipe after R is gone. So the R session's
# own process (RPID) is watched too, and its death counts as the end.
dir=$1
beat=$2
rpid=$3
me=$$
exec >>"$dir/supervisor.log" 2>&1
# Ctrl-C or Ctrl-Z in the R session's terminal reach its whole process group:
# they are for R, not for the cluster. ssh keeps ignoring what it inherits ignored.
trap '' INT QUIT TSTP HUP

# When a process started (Linux: field 22 of /proc/PID/stat), so that a new
# process that gets the R session's pid is not taken for it.
started() {
  [ -r "/proc/$1/stat" ] || return 0
  read -r stat <"/proc/$1/stat" || return 0
  set -- ${stat##*) }
  shift 19
  echo "$1"
}
rstart=$(started "$rpid")
r_alive() { kill -s 0 "$rpid" 2>/dev/null && [ "$(started "$rpid")" = "$rstart" ]; }

# The R session gone while its pipe lives on (see above), or its directory gone
# (R's normal exit removes it before its end closes the pipe, and without it no
# session's end can be seen): this script is told to end (USR1, below), and is
# killed if it has not within 10 seconds.
(
  while r_alive && kill -s 0 "$me" 2>/dev/null && [ -d "$dir" ]; do sleep 2; done
  kill -s USR1 "$me" 2>/dev/null || exit 0
  n=10
  while [ "$n" -gt 0 ] && kill -s 0 "$me" 2>/dev/null; do sleep 1; n=$((n - 1)); done
  kill -s KILL "$me" 2>/dev/null
) &

# Whether this script, the R session and the launch directory all still live:
# every loop below ends when one is gone.
live() { kill -s 0 "$me" 2>/dev/null && [ -d "$dir" ] && r_alive; }

said_ready() {
  while IFS= read -r said; do [ "$said" = ready ] && return 0; done <"$1"
  return 1
}

feed() {  # ID TOKENS MODE: what the host's session reads on its stdin
  cat "$dir/remote.txt" || return
  printf '%s\n' "$2"
  if [ "$3" = tunnel ]; then
    # (any line: the user's login shell may print something first)
    until [ -s "$dir/$1.out" ] && said_ready "$dir/$1.out"; do
      [ -e "$dir/$1.status" ] && return
      # (nor once this script, R or the launch directory is gone: with the
      # directory went the status file that would end this wait)
      live || return
      sleep 0.05 2>/dev/null || sleep 1
    done
    echo go
  fi
  while live; do
    echo . || return
    # (a second at a time: a feeder ends within one when this script does)
    n=$beat
    while [ "$n" -gt 0 ] && kill -s 0 "$me" 2>/dev/null; do sleep 1; n=$((n - 1)); done
  done
}

# Each session as ID:PID, PID that of its DIR/ID.sh (which passes a TERM on to
# its ssh): kept here, since the directory's pid files may be gone.
ids=''
pid_of() {
  for entry in $ids; do [ "${entry%%:*}" = "$1" ] && echo "${entry#*:}" && return; done
}
running() {
  left=''
  for entry in $ids; do kill -s 0 "${entry#*:}" 2>/dev/null && left="$left $entry"; done
  [ -n "$left" ]
}
# Ending: give the sessions GRACE seconds (the workers were told to stop), then
# TERM each session still running, then KILL its ssh and its script.
finish() {
  trap '' USR1
  ticks=$(( ${1:-0} * 20 ))
  while running && [ "$ticks" -gt 0 ]; do sleep 0.05 2>/dev/null || sleep 1; ticks=$((ticks - 1)); done
  for signal in TERM KILL; do
    running || break
    for entry in $left; do
      if [ "$signal" = KILL ]; then
        pid=$(cat "$dir/${entry%%:*}.pid" 2>/dev/null) && kill -s KILL "$pid" 2>/dev/null
      fi
      kill -s "$signal" "${entry#*:}" 2>/dev/null
    done
    ticks=40
    while running && [ "$ticks" -gt 0 ]; do sleep 0.05 2>/dev/null || sleep 1; ticks=$((ticks - 1)); done
  done
  exit 0
}
trap 'finish 0' USR1

while IFS=' ' read -r cmd id tokens mode; do
  case $cmd in
    start)
      feed "$id" "$tokens" "$mode" | sh "$dir/$id.sh" &
      ids="$ids $id:$!" ;;
    kill)
      pid=$(pid_of "$id") && [ -n "$pid" ] && kill -s TERM "$pid" 2>/dev/null ;;
    stop)
      finish "$id" ;;
  esac
done
finish 0
