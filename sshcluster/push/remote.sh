# sshcluster push, on each host: POSIX sh and standard tools (GNU find, tar, xargs,
# awk, sha256sum or b2sum, openssl and perl where present, tee, mv), nothing else. The
# launch's read_script.sh has read this script from the session's stdin into $S (with
# $READ_SCRIPT, $FORWARD_PL, forward.pl, $PUSH_LOCK_WAIT, $PUSH_ID (the push's own,
# for the lock) and $SESSION_OPTIONS, the primary's own ssh options for a session, set
# before it); what follows
# on stdin is for the mode:
#   scan DEST TOP...     print "sshcluster-push-hash sha256|b2" (the hash receive checks
#                        with), then "KIND SIZE MTIME MODE PATH" for every file,
#                        link and directory under DEST/TOP (nothing if DEST is missing)
#   sums DEST EVERY      stdin: paths under DEST, one a line; print sha256sum lines
#   touch DEST           stdin: "MTIME PATH" lines; set those modification times
#                        These three print "sshcluster-push-progress VALUE" lines on
#                        stderr, VALUE changing as the work moves (sums: every EVERY
#                        seconds, the bytes its hash has read): the primary gives a host
#                        up once its progress has not moved for its stall limit.
#   receive DEST LABEL [NEXT...]
#                        stdin: a tar stream whose last members are .sshcluster-push-b2sums
#                        (where a host checks with b2sum) and .sshcluster-push-sums.
#                        Unpacked into a staging directory
#                        inside DEST, each file hashed (SHA-256 by openssl where the
#                        CPU has SHA instructions, else b2sum, else sha256sum) and
#                        checked against the list of that hash, then each file renamed
#                        into place: no reader ever sees half a file under its final
#                        name. NEXT is the rest of a chain, four words per host (LABEL
#                        HOST PORT USER): the stream goes on to the first of them, with
#                        the others after it, as it arrives.
#                        One receive into a DEST at a time: another waits for
#                        its lock (see lock below), then fails.
#                        Prints one verdict line per host, this one's first:
#                        "sshcluster-push<TAB>LABEL<TAB>ok" or "...<TAB>failed<TAB>WHY".
# An ssh that ends (Ctrl-C on the primary, a lost link) ends the stream: tar fails, the
# staging directory is removed, nothing is renamed.
# A relative DEST is relative to the login directory, where ssh starts this script.
# Below DEST no symbolic link is followed: receive refuses one where it needs a
# directory (whoever can write in DEST could plant one to send the copy elsewhere).
trap '' PIPE  # a write to a closed session fails, so that the EXIT trap still runs
unset CDPATH  # (cd to a relative DEST goes there, not to a directory CDPATH names)
mode=$1; dest=$2; shift 2
case $dest in -*) dest=./$dest ;; esac  # (cd - is another directory)

# The hash: SHA-256 by openssl where the CPU has SHA instructions (x86 sha_ni, arm64
# sha2: twice b2sum's speed here), else b2sum (BLAKE2b: several times coreutils'
# sha256sum, which uses no SHA instructions), else sha256sum. The list of sums it checks
# against, and "sha256" or "b2" for the primary (which then computes only what it needs).
pick_sum() {
  sum=sha256sum list=.sshcluster-push-sums kind=sha256
  if grep -qw -e sha_ni -e sha2 /proc/cpuinfo 2>/dev/null &&
      openssl dgst -sha256 -r </dev/null >/dev/null 2>&1; then
    sum="openssl dgst -sha256 -r"
  elif command -v b2sum >/dev/null 2>&1; then
    sum=b2sum list=.sshcluster-push-b2sums kind=b2
  fi
}

progress() { printf 'sshcluster-push-progress %s\n' "$1" >&2; }
# Whether pid $1 is still this shell's child (Linux's /proc; elsewhere taken as so): a
# child that has ended was collected by whatever this shell waited for since, and its
# pid may be another process's now.
mine() { [ ! -d /proc/self ] || [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null |
  cut -d ' ' -f 2)" = "$$" ]; }

case $mode in
scan)
  progress start
  pick_sum
  echo "sshcluster-push-hash $kind"
  cd -- "$dest" 2>/dev/null || exit 0
  # (./TOP: a name that starts with - is not an expression to find; the ./ goes again)
  for top; do
    if [ -e "$top" ] || [ -L "$top" ]; then
      find -H "./$top" \( -type f -o -type l -o -type d \) -printf '%y %s %T@ %m %p\n'
    fi
  done | sed 's|^\(\([^ ]* \)\{4\}\)\./|\1|'
  exit 0 ;;
sums)
  progress start
  cd -- "$dest" || exit 1
  # Beside the hashing, every $1 seconds: the bytes the running sha256sum has read (its
  # pid in $pidf, written as xargs starts it), as Linux counts them (/proc/PID/io; a
  # host without it reports a new value only with each sha256sum xargs starts). A
  # report that cannot be written (the primary gone) stops the hashing.
  # A signal (HUP, INT, TERM) ends it all through the EXIT trap: the reporter, the
  # hashing, and the pid file, whose pid would otherwise be one to kill once reused.
  # (The hashing runs in the background, with wait: a trap runs only once the command
  # in the foreground has ended. fd 3: an asynchronous list's own stdin is /dev/null.)
  # The reporter and xargs get KILL, while still this shell's children (mine): dash
  # loses a TERM that comes before a new child has dropped the inherited trap.
  pidf=$(mktemp "${TMPDIR:-/tmp}/sshcluster-push.XXXXXX") || exit 1
  reports= hashing=
  trap 'for k in $hashing $reports; do mine "$k" && kill -s KILL "$k"; done 2>/dev/null
    for k in $(cat -- "$pidf" 2>/dev/null); do kill "$k"; done 2>/dev/null
    rm -f -- "$pidf"' EXIT
  trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM
  ( trap - EXIT HUP INT TERM
    while sleep "${1:-5}" >/dev/null 2>&1; do
      pid=$(cat -- "$pidf" 2>/dev/null)
      got=$(sed -n 's/^rchar: //p' "/proc/${pid:-0}/io" 2>/dev/null)
      progress "${pid:-none} ${got:-?}" || {
        [ -z "$pid" ] || { kill "$pid"; kill -s CONT "$pid"; } 2>/dev/null; exit 0; }
    done ) &
  reports=$!
  exec 3<&0
  tr '\n' '\0' <&3 | xargs -0 -r sh -c 'echo $$ >"$0" && exec sha256sum -- "$@"' "$pidf" &
  hashing=$!
  wait "$hashing"; hashing=
  ! mine "$reports" || kill -s KILL "$reports" 2>/dev/null; reports=; : >"$pidf"
  exit 0 ;;
touch)
  progress start
  cd -- "$dest" || exit 1
  # (the path is all after the first space, spaces at either end included; one that
  # cannot be touched does not stop the others)
  bad=0 n=0
  while IFS= read -r l; do
    touch -m -h -d "@${l%% *}" -- "${l#* }" || bad=1
    n=$((n + 1)); [ $((n % 200)) != 0 ] || progress "$n"
  done
  exit $bad ;;
receive) ;;
*) echo "sshcluster push: unknown mode $mode" >&2; exit 2 ;;
esac

label=$1; shift
say() {  # STATUS [WHY]
  printf 'sshcluster-push\t%s\t%s\t%s\n' "$label" "$1" "$(printf '%s' "${2-}" | tr '\n\t' '  ')"
}
q() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
# Remove a staging directory, its read-only directories included (a source's 0555
# directory is one there, as tar leaves it).
clear_stage() {
  rm -rf -- "$1" 2>/dev/null && return
  [ -L "$1" ] || chmod -R u+rwx -- "$1" 2>/dev/null
  rm -rf -- "$1"
}
# Staging directories of this user's that a push killed outright (SIGKILL, a crash of
# the host) left in DEST: removed once nothing in one has changed for $stale seconds
# (six hours). By the change time, which tar cannot set back: a push that is still
# writing into its staging directory shows there. ($SSHCLUSTER_PUSH_STALE: for tests)
sweep() {
  stale=${SSHCLUSTER_PUSH_STALE:-21600}
  touch -d "@$(($(date +%s) - stale))" "$work/stale" || return 0
  find "$top" -mindepth 1 -maxdepth 1 -name '.sshcluster-push.??????' -type d \
      -user "$(id -u)" ! -cnewer "$work/stale" -print 2>/dev/null |
    while IFS= read -r old; do
      [ -n "$(find "$old" -cnewer "$work/stale" -print -quit 2>/dev/null)" ] ||
        clear_stage "$old" 2>/dev/null
    done
  return 0
}
# One receive into DEST at a time (two pushes from two terminals, or from hosts that
# share DEST over NFS: their renames would interleave). The lock: flock(1) on
# DEST/.sshcluster-push.lock where the host has flock and Linux's /proc/PID/fd
# (util-linux's or BusyBox's flock; the kernel lets it go however the push ends; the
# file is removed at the end, so a lock taken on a file that was removed meanwhile is
# taken again), else a directory made by mkdir, DEST/.sshcluster-push.lockdir, with its
# holder's host and pid in it (removed at the end; one whose holder is gone from this
# host is taken over). Waited for $PUSH_LOCK_WAIT seconds at most (the primary's share
# of its stall limit: meanwhile nothing of the stream is read); another user's lock is
# waited for, never opened. Whoever can write in DEST could plant a link there, or a
# lock of theirs that every push would wait on: the file is made only where nothing is
# (noclobber: O_EXCL, which follows no link), 0600, opened for reading only (never
# made, never truncated through its name), and then, by what the descriptor names in
# /proc, it must be that very path, a regular file of this user's; the push id is
# written through that descriptor. A link, or anything but a regular file (a directory
# for the lockdir), there fails the host, naming it. Neither name is a staging
# directory's (.sshcluster-push.??????): the sweep leaves them alone.
lockf= lockdir=
lock_refused() {  # PATH WHAT
  why="$1 is $2: refused, a push takes its lock in DEST only with a file or directory it made itself; remove it and push again"
}
# Whether the holder, as its lock says ("PUSH_ID HOST PID LABEL", read from stdin), is
# this same push ($PUSH_ID, the primary's): then for this host it is a chain's receive
# left behind by a host lost before it, which the direct copy now under way replaces:
# it is ended (and the lock then taken); for another host that shares DEST both place
# the same files, side by side: no lock is needed between them (0: go on without it).
same_push() {
  id= holder= pid= who=
  read -r id holder pid who
  [ -n "${PUSH_ID:-}" ] && [ "$id" = "$PUSH_ID" ] || return 1
  [ "$who" = "$label" ] && [ "$holder" = "$(uname -n)" ] || return 0
  kill "$pid" 2>/dev/null
  return 1
}
# The file descriptor 9 opened on, as /proc says: "ok" (PATH itself, a regular file of
# this user's), "gone" (PATH was removed since: its holder has ended) or anything else.
opened() {
  o=$(readlink "/proc/$$/fd/9" 2>/dev/null)
  if [ "$o" = "$1 (deleted)" ]; then echo gone
  elif [ "$o" = "$1" ] && [ -f "/proc/$$/fd/9" ] && [ -O "/proc/$$/fd/9" ]; then echo ok
  else echo "${o:-unknown}"; fi
}
# 0 locked (or no lock needed), 1 cannot (why in $work/err), 2 waited in vain, 3 refused
# (why in $why)
lock() {
  waited=0 other=
  if command -v flock >/dev/null 2>&1 && [ -d "/proc/$$/fd" ]; then
    lk=$pre/.sshcluster-push.lock
    while :; do
      : >"$work/err"
      [ -e "$lk" ] || [ -L "$lk" ] || (umask 077; set -C; : >"$lk") 2>"$work/err"
      if [ -L "$lk" ]; then
        lock_refused "$lk" "a symbolic link (to $(readlink -- "$lk"))"; return 3
      elif [ ! -e "$lk" ]; then
        [ ! -s "$work/err" ] || return 1  # (else removed at once by its holder)
      elif [ ! -f "$lk" ]; then
        lock_refused "$lk" "not a regular file"; return 3
      elif [ ! -O "$lk" ]; then
        other="; its lock, $lk, is another user's"
      else
        { command exec 9<"$lk"; } 2>"$work/err" || return 1
        case $(opened "$lk") in
        ok) if flock -n 9; then
              case $(opened "$lk") in
              ok) lockf=$lk
                  # (one an older push left may be readable by others: no more)
                  chmod 600 "/proc/$$/fd/9" 2>/dev/null
                  printf '%s %s %s %s\n' "${PUSH_ID:--}" "$(uname -n)" "$$" "$label" \
                    >"/proc/$$/fd/9"
                  return 0 ;;
              esac
            elif same_push <&9; then
              exec 9<&-; return 0
            fi ;;
        gone) ;;
        *) exec 9<&-
           lock_refused "$lk" "not what was opened there (that was $(opened "$lk"))"
           return 3 ;;
        esac
        exec 9<&-
      fi
      [ "$waited" -lt "${PUSH_LOCK_WAIT:-60}" ] || return 2
      sleep 1; waited=$((waited + 1))
    done
  fi
  held=$pre/.sshcluster-push.lockdir
  until mkdir -m 700 -- "$held" 2>"$work/err"; do
    if [ -L "$held" ]; then
      lock_refused "$held" "a symbolic link (to $(readlink -- "$held"))"; return 3
    elif [ ! -e "$held" ]; then
      return 1
    elif [ ! -d "$held" ]; then
      lock_refused "$held" "not a directory"; return 3
    elif [ ! -O "$held" ]; then
      other="; its lock, $held, is another user's"
    else
      # (this user's own, 0700: nobody else put the owner file there)
      seen=$(cat -- "$held/owner" 2>/dev/null)
      ! same_push <<EOF || return 0
$seen
EOF
      if [ "$holder" = "$(uname -n)" ] && [ -n "$pid" ] &&
          ! kill -0 "$pid" 2>/dev/null && [ ! -d "/proc/$pid" ]; then
        # Taken over by a rename to a name of this receive's own: of two that found it
        # stale, one renames it; the other finds the new holder's there (another owner
        # line, or none yet) and puts it back.
        gone=$held.$(uname -n).$$
        if mv -T -- "$held" "$gone" 2>/dev/null; then
          if [ ! -L "$gone" ] && [ "$(cat -- "$gone/owner" 2>/dev/null)" = "$seen" ]; then
            rm -rf -- "$gone"
          elif [ ! -e "$held" ] && [ ! -L "$held" ]; then
            mv -T -- "$gone" "$held"
          fi
        fi
        continue
      fi
    fi
    [ "$waited" -lt "${PUSH_LOCK_WAIT:-60}" ] || return 2
    sleep 1; waited=$((waited + 1))
  done
  lockdir=$held
  printf '%s %s %s %s\n' "${PUSH_ID:--}" "$(uname -n)" "$$" "$label" >"$held/owner"
}
work=$(mktemp -d "${TMPDIR:-/tmp}/sshcluster-push.XXXXXX") || {
  say failed "cannot make a directory in ${TMPDIR:-/tmp}"; exit 1; }
stage=
# The long children (tar, the hashing, the chain's forwarder and ssh) run in the
# background, waited for, so that a signal's trap runs at once (a POSIX shell runs it
# only once the command in the foreground has ended), and without the lock's fd 9: the
# lock goes with this shell. The EXIT trap ends those still running (mine) before the
# staging directory and the lock go: a receive ended by the direct copy of its own push
# (see same_push) lets go of DEST at once. KILL, as sums does its reporter, but TERM (and
# CONT: a stopped one too) for the next hop's ssh, which then ends its ProxyCommand.
kid= fwdpid= nextpid=
trap 'for k in $kid $fwdpid; do mine "$k" && kill -s KILL "$k" && wait "$k"; done \
  2>/dev/null
  if [ -n "$nextpid" ] && mine "$nextpid"; then
    kill "$nextpid"; kill -s CONT "$nextpid"; wait "$nextpid"; fi 2>/dev/null
  rm -rf -- "$work"; [ -z "$stage" ] || clear_stage "$stage"
  [ -z "$lockf" ] || rm -f -- "$lockf"; [ -z "$lockdir" ] || rm -rf -- "$lockdir"' EXIT
trap 'exit 130' INT TERM HUP
why=
# DEST made if missing, then entered: $top is its real path, and everything below it is
# reached from there (a relative DEST is relative to where this shell started, not to
# where it is later). DEST itself may be a link, the user's own: it is followed, once.
if ! { mkdir -p -- "$dest" && cd -P -- "$dest" && top=$PWD && pre=${top%/} && sweep &&
    stage=$(mktemp -d "$pre/.sshcluster-push.XXXXXX"); } 2>"$work/err"; then
  why="cannot write to $dest: $(tail -n 1 "$work/err")"
  stage=
fi
if [ -n "$stage" ]; then
  lock
  case $? in
  1) why="cannot lock $dest: $(tail -n 1 "$work/err")" ;;
  2) why="another push to $dest is running on $label (waited ${PUSH_LOCK_WAIT:-60} s for it$other): try again once it has ended" ;;
  esac
  [ -z "$why" ] || { clear_stage "$stage"; stage=; }
fi

next=
exec 3<&0  # (the stream, for the children in the background)
if [ $# -ge 4 ]; then
  nlabel=$1; nhost=$2; nport=$3; nuser=$4; shift 4
  rest=
  for w; do rest="$rest $(q "$w")"; done
  # AES-GCM first where this ssh knows the ^ form (AES-NI: several times chacha20's speed)
  gcm=^aes128-gcm@openssh.com,aes256-gcm@openssh.com
  ssh -G -o "Ciphers=$gcm" localhost >/dev/null 2>&1 || gcm=
  [ -n "$stage" ] && mkfifo "$work/fifo"
  # The stream on to the next host and into this host's tar: forward.pl where perl and
  # Linux's splice(2) and tee(2) numbers are known (no copy in between), else tee. (The
  # shell opens the fifo for forward.pl: tar sees its end however perl ends.)
  fwd=
  if [ -n "$stage" ] && command -v perl >/dev/null 2>&1; then
    case $(uname -s)/$(uname -m) in
      Linux/x86_64) fwd="275 276" ;;
      Linux/aarch64|Linux/arm64) fwd="76 77" ;;
    esac
  fi

  # (ssh with the primary's session options: a keepalive, and never the user's
  # ControlMaster here, which with ControlPersist would outlive the push)
  # The next host gets this same script, then the stream as it arrives here; tee -p (and
  # forward.pl likewise): a host whose own tar has given up (a full disk) still passes
  # the stream on. (Through the fifo up: two jobs, each with its pid for the EXIT trap.)
  mkfifo "$work/up"
  { printf '%s\n# sshcluster: end of script\n' "$S"
    if [ -z "$stage" ]; then exec cat
    elif [ -n "$fwd" ]; then exec perl -e "$FORWARD_PL" $fwd "$work/fifo" 4>"$work/fifo"
    else exec tee -p "$work/fifo"; fi; } <&3 >"$work/up" 9>&- &
  fwdpid=$!
  ssh $SESSION_OPTIONS -o BatchMode=yes -o StrictHostKeyChecking=yes \
      -o ConnectTimeout=10 ${gcm:+-o "Ciphers=$gcm"} \
      ${nport:+-p "$nport"} ${nuser:+-l "$nuser"} -- "$nhost" \
      "exec sh -c $(q "$READ_SCRIPT") sshcluster-push receive $(q "$dest") $(q "$nlabel")$rest" \
      <"$work/up" >"$work/next.out" 2>"$work/next.err" 9>&- &
  next=$! nextpid=$!
fi

# cd to DEST/REL ("": DEST itself) by its real path, and only if it is that directory:
# a symbolic link there, or one on the way (put there since), is refused, never followed.
enter() {
  if [ -z "$1" ]; then p=$top; else p=$pre/$1; fi
  if [ -L "$p" ]; then
    printf '%s is a symbolic link (to %s): refused, a push does not follow one below DEST' \
      "$p" "$(readlink -- "$p")" >"$work/refused"
  elif ! cd -P -- "$p" 2>/dev/null; then
    if [ -d "$p" ]; then echo "cannot enter $p"; else echo "$p is not a directory"; fi \
      >"$work/refused"
  elif [ "$PWD" != "$p" ]; then
    printf '%s leads to %s (a symbolic link on the way): refused' "$p" "$PWD" \
      >"$work/refused"
  else
    return 0
  fi
  return 1
}
# Into DEST: every directory of the stage made there (or found), parents first, and
# writable by its owner until the end; only then every file and link renamed into its
# directory, one mv per directory (each file still its own rename), not one per file;
# then each directory given its mode, deepest first (a 0555 one takes nothing in, a
# 0444 one cannot be entered). The stage's own directories are made writable first
# (tar leaves them with their modes: nothing could be renamed out of a 0555 one).
place() {
  cd -- "$stage" && rm -f .sshcluster-push-sums .sshcluster-push-b2sums &&
    find . -mindepth 1 -type d -printf '%m %P\n' >"$work/dirs" &&
    find . -mindepth 1 -type d ! -perm -u=rwx -exec chmod u+rwx -- {} \; || return
  while IFS= read -r l; do
    d=${l#* }
    case $d in */*) enter "${d%/*}" ;; *) enter "" ;; esac || exit
    # (another receive into DEST, a host sharing it over NFS, may make it meanwhile)
    if [ ! -L "${d##*/}" ] && [ ! -d "${d##*/}" ]; then
      mkdir -m 700 -- "${d##*/}" 2>/dev/null || [ -d "${d##*/}" ] || exit
    fi
    enter "$d" && { [ -w . ] || chmod u+w .; } || exit
  done <"$work/dirs" || return
  { echo "- "; cat "$work/dirs"; } | while IFS= read -r l; do
    enter "${l#* }" &&
      find "$stage/${l#* }" -mindepth 1 -maxdepth 1 ! -type d -exec mv -f -t . -- {} + ||
      exit
  done || return
  awk '{ l[NR] = $0 } END { for (i = NR; i > 0; i--) print l[i] }' "$work/dirs" |
    while IFS= read -r l; do
      # (only where the permissions differ: a directory in a set-group-ID DEST keeps
      # that bit, and one of a colleague's there cannot be changed, nor need be)
      enter "${l#* }" && { [ $(($(printf '0%s' "$(stat -c %a .)") & 01777)) = \
        $((0${l%% *} & 01777)) ] || chmod "${l%% *}" .; } || exit
    done
}

pick_sum
# (-B: a pipe, read whole; -b 256: 128 KiB records, so a tenth of the system calls of
# tar's 10 KiB, the content written to each file in pieces that size. The directories
# come first in the stream, their files later: each gets its mode at the end, so that
# a 0555 one still takes its files when tar is not root.)
if [ -n "$stage" ]; then
  if [ -n "$next" ]; then from=$work/fifo; else from=-; fi
  tar -B -b 256 --delay-directory-restore -C "$stage" -xpf "$from" <&3 2>"$work/tar.err" \
    9>&- &
  kid=$!
  wait "$kid"; rc=$? kid=
elif [ -n "$next" ]; then
  wait "$next"; rc=1 nextpid=
else
  cat >/dev/null; rc=1
fi

if [ -z "$why" ] && [ "$rc" != 0 ]; then
  why="$(grep -v 'Exiting with failure' "$work/tar.err" | head -n 3)"
fi
if [ -z "$why" ] && [ ! -f "$stage/$list" ]; then
  # No BLAKE2b list: the primary was told (by scan) that this host checks SHA-256
  if openssl dgst -sha256 -r </dev/null >/dev/null 2>&1; then
    sum="openssl dgst -sha256 -r"
  else
    sum=sha256sum
  fi
  list=.sshcluster-push-sums
fi
if [ -z "$why" ]; then
  # Every file in the list hashed, and compared with the hash it was sent with.
  ( cd "$stage" && awk '{ print substr($0, index($0, "  ") + 2) }' $list |
    xargs -d '\n' -r $sum -- ) >"$work/got" 2>"$work/hash.err" 9>&- &
  kid=$!
  wait "$kid"; kid=
  awk -v got="$work/got" '
    BEGIN { while ((getline l < got) > 0) {  # "HASH  PATH", or openssl'"'"'s "HASH *PATH"
      i = index(l, " "); h[substr(l, i + 2)] = substr(l, 1, i - 1) } }
    { i = index($0, "  "); p = substr($0, i + 2)
      if (!(p in h)) { print p ": FAILED open or read"; bad = 1 }
      else if (h[p] != substr($0, 1, i - 1)) { print p ": FAILED"; bad = 1 } }
    END { exit bad }' "$stage/$list" >"$work/sums" 2>&1 ||
    why="verification failed: $(head -n 3 "$work/sums")"
fi
if [ -z "$why" ]; then
  ( place ) 2>"$work/err" ||
    why=$(cat "$work/refused" 2>/dev/null) ||
    why="cannot rename into $dest: $(tail -n 1 "$work/err")"
fi
if [ -z "$why" ]; then say ok; else say failed "$why"; fi

if [ -n "$next" ]; then
  wait "$next"; nextpid=
  wait "$fwdpid"; fwdpid=
  grep '^sshcluster-push	' "$work/next.out"
  grep -q "^sshcluster-push	$nlabel	" "$work/next.out" ||
    printf 'sshcluster-push\t%s\tfailed\tfrom %s: %s\n' "$nlabel" "$label" \
      "$(tail -n 2 "$work/next.err" | tr '\n\t' '  ')"
fi
[ -z "$why" ]
