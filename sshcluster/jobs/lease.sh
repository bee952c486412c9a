# sshcluster's lease on one host: a job's own ssh session runs this script (after
# lines that set MODE, JOB, WHO, SINCE, SCRIPT and SILENCE) and holds the host's lease
# for as long as the session lasts.
#   MODE try    take the lease or say who holds it:  "leased" | "held JOB<TAB>WHO..."
#   MODE wait   wait in line for it, saying the place: "wait N JOB<TAB>WHO..." ... "leased"
#   MODE list   say who holds it, take nothing:        "free" | "held JOB<TAB>WHO..."
# The lease is a flock(1) on a file: the kernel drops it when this shell ends, so a job
# that ends in any way (finished, crashed, killed, its ssh cut) releases its hosts. The
# shell ends when its stdin (the ssh session) ends: the job closes it to release. Its
# holder also writes a line every few seconds: after SILENCE seconds without one the
# shell ends too (in line, it leaves the line), since a holder cut off by a network
# that drops every packet sends no end, and sshd may never notice (TCP keepalive: 2 h).
# No child process may keep the lock's descriptor (9) open after this shell is gone,
# so every external command runs with 9>&- (and 8>&-, the ticket in line).
umask 077
dir="${HOME:-/tmp}/.cache/sshcluster/leases"
mkdir -p "$dir" 9>&- || { echo "error cannot create $dir"; exit 1; }
command -v flock >/dev/null 2>&1 || { echo "error flock(1) not found (util-linux)"; exit 1; }
# One lease file per machine, named after it: home directories shared over NFS hold
# every host's file. The network namespace keeps apart hosts that share a kernel and a
# hostname (containers, test hosts).
ns=$(readlink /proc/self/ns/net 2>/dev/null | tr -dc 0-9)
key="$(uname -n)${ns:+-$ns}"
f="$dir/$key.lock"

# flock -n exits 1 when another holds the lock; anything else is a lock that cannot be
# taken at all (ENOLCK: a home on NFS without a lock service), never "leased".
lock_error() {
  printf 'error cannot lock %s on %s (flock exit %s): file locks do not work there (a home on NFS without a lock service?)\n' \
    "$f" "$(uname -n 9>&- 8>&-)" "$1"
  exit 1
}

holder() {
  # The holder's line; it writes it just after taking the lock, so try a few times.
  i=0
  while [ $i -lt 20 ]; do
    h=$(head -n 1 "$f" 2>/dev/null 9>&- 8>&-)
    [ -n "$h" ] && { printf '%s\n' "$h"; return; }
    i=$((i + 1)); sleep 0.05 9>&- 8>&-
  done
  printf 'unknown\n'
}

# The dead man's switch, in the background (a child, holding no lock: the lease goes
# with this shell): it reads the holder's lines and ends at the end of them, or after
# SILENCE seconds without one (bash's read -t; else coreutils' timeout; else, on a host
# with neither, only at their end).
listen() {
  if [ "${SILENCE:-0}" -gt 0 ] 2>/dev/null && command -v bash >/dev/null 2>&1; then
    exec bash --norc --noprofile -c 'while IFS= read -r -t "$1" _; do :; done' \
      sshcluster-lease "$SILENCE"
  elif [ "${SILENCE:-0}" -gt 0 ] 2>/dev/null && timeout 1 sleep 0 </dev/null >/dev/null 2>&1
  then  # (not BusyBox's before 1.30, which wants -t: it would end the lease at once)
    # (--foreground where it exists: else timeout takes a process group of its own)
    fg=''
    timeout --foreground 1 sleep 0 </dev/null >/dev/null 2>&1 && fg=--foreground
    while timeout $fg "$SILENCE" sh -c 'IFS= read -r _'; do :; done
  else
    while IFS= read -r _; do :; done
  fi
}
heard=''
start_listening() {
  # (A background job's stdin is /dev/null unless it is redirected by name.)
  exec 3<&0
  listen <&3 >/dev/null 2>&1 3<&- 8>&- 9>&- &
  heard=$!
  exec 0</dev/null 3<&-
}

if [ "$MODE" = list ]; then
  [ -e "$f" ] || { echo free; exit 0; }
  exec 9<"$f"
  # A shared lock: free means nobody holds the exclusive one.
  rc=0; flock -n -s 9 || rc=$?
  case $rc in 0) echo free;; 1) printf 'held %s\n' "$(holder)";; *) lock_error $rc;; esac
  exit 0
fi

exec 9>>"$f"
if [ "$MODE" = wait ]; then
  # A ticket in line: a file locked for as long as this shell waits. Names sort by
  # the time they were made; a ticket nobody holds is of a waiter that has gone.
  t="$dir/$key.q.$(date +%s%N 9>&-).$$"
  # (a waiter that is stopped takes its ticket with it; one killed outright leaves it,
  # unlocked, and the next waiter removes it)
  trap 'rm -f "$t"; kill -s TERM $heard 2>/dev/null' EXIT
  trap 'exit 1' TERM HUP INT PIPE
  exec 8>>"$t"
  flock -n 8 9>&-
  start_listening
  while :; do
    ahead=0
    for q in "$dir/$key".q.*; do
      [ -e "$q" ] && [ "$q" != "$t" ] || continue
      [ "$(expr "$q" \< "$t" 9>&- 8>&-)" = 1 ] || continue
      # (opened for writing: over NFS an exclusive lock needs it)
      if flock -n 7 7>>"$q" 9>&- 8>&-; then rm -f "$q"; else ahead=$((ahead + 1)); fi
    done
    if [ $ahead -eq 0 ]; then
      rc=0; flock -n 9 8>&- || rc=$?
      [ $rc -eq 0 ] && break
      [ $rc -eq 1 ] || lock_error $rc
    fi
    # Writing to a session that has ended kills this shell (SIGPIPE): so a waiter that
    # was stopped leaves the line.
    printf 'wait %s %s\n' $((ahead + 1)) "$(holder)" || exit 1
    sleep 1 9>&- 8>&-
    # A waiter whose holder fell silent leaves the line too.
    kill -s 0 "$heard" 2>/dev/null || exit 1
  done
  rm -f "$t"
  trap - EXIT TERM HUP INT PIPE
  exec 8>&-
else
  rc=0; flock -n 9 8>&- || rc=$?
  case $rc in
    0) start_listening;;
    1) printf 'held %s\n' "$(holder)"; exit 0;;
    *) lock_error $rc;;
  esac
fi
: >"$f"
printf '%s\t%s\t%s\t%s\t%s\n' "$JOB" "$WHO" "$SINCE" "$SCRIPT" "$$" >&9
echo leased
wait "$heard"
# Still holding the lock: the line goes before the lease does.
: >"$f"
