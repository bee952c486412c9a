# The preflight check's remote script: one function per step, every answer one
# KEY=value line. sshcluster.check.probe prepends the data as shell variables: budget,
# primary, primary_user, primary_ssh_port, connect_timeout, rscript, r_code, nonce,
# port, callback_host, callback_timeout, engine (empty: no container), locale (the
# NAME=VALUE pairs the launch hands the host; R/locale.sh, pasted before this script,
# exports them as the launch does, for R only; with classic, the classic launch, whose
# workers take them once started, only reports the ones the host lacks), workdir (R/workdir.sh makes and enters
# it as the launch does), lease (non-empty: lease: true, tried with R/lease.sh). The
# nonce goes to
# R in its environment only (in a container, on its stdin): the script comes on stdin,
# so it is never on a command line that `ps` shows. The script's own stdin is done with
# before it runs (sshcluster.check.probe wraps it in { ... } </dev/null), so R gets a
# stdin of its own: see r_boot.
#
# For a host with a container: (engine set), the container's functions come before this
# script (sshcluster/containers/container.sh and probe.sh): the engine and the image are
# checked first, and R, its packages and the callback then run inside the image, as the
# launch's workers do, while the launch's container (its keeper) is tried beside it; R
# on the host itself is never asked for.

tick() { _t=0; read -r _t _x </proc/uptime 2>/dev/null; }
say() { printf '%s\n' "$1"; }
to=
# (a timeout that takes "timeout SECONDS COMMAND", as the launch's: BusyBox's before
# 1.30 wants -t, and would fail R's start and the reverse ssh at once)
timeout 1 true </dev/null >/dev/null 2>&1 && to="timeout $budget"
# R's code comes on its stdin (r_stdin), never in -e: R drops an -e expression of
# 10,000 characters or more (each space counting as three), and the code grows with the
# reference's packages. The short -e reads one line first (the nonce in a container,
# where it comes on stdin; empty when it is in the environment), then parses the rest
# and runs it as -e would have: in the global environment, commandArgs() unchanged.
r_boot='local({i <- file("stdin", "r"); n <- readLines(i, 1L)
if (length(n) && nzchar(n)) Sys.setenv(SSHCLUSTER_NONCE = n)
e <- parse(i, keep.source = FALSE); close(i); for (x in e) eval(x, globalenv())})'
# What R reads on stdin: the line r_boot reads first ($1), then the code.
r_stdin() { printf '%s\n%s\n' "$1" "$r_code"; }

# Where the primary is, as this host sees it (the client end of SSH_CONNECTION).
step_primary() {
  say "SSH_CONNECTION=$SSH_CONNECTION"
  set -- $SSH_CONNECTION
  [ -n "$primary" ] || primary=${1:-}
  # (an IPv4 client as a dual-stack sshd reports it, ::ffff:192.0.2.1: R's sockets are
  # IPv4 only, and take the IPv4 address)
  case $primary in *:*.*) primary=${primary##*:} ;; esac
  say "PRIMARY=$primary"
}

# reverse_ssh: log in to the primary, non-interactively.
step_reverse_ssh() {
  tick; a=$_t; n=0; rc=; kex="-o KexAlgorithms=^curve25519-sha256"
  if [ -z "$primary" ]; then
    err="no SSH_CONNECTION on this host, so the primary's address is unknown"; rc=skip
  else
    while :; do
      # A subsystem nobody has: sshd refuses it right after the login succeeded, so
      # this proves host key, non-interactive auth and a session channel without
      # starting the primary user's shell (and its rc files) at all.
      # (LogLevel ERROR: the refusal is said by ssh's fatal(), which a LogLevel QUIET
      # in the host's ssh config would silence)
      err=$($to ssh -o BatchMode=yes -o LogLevel=ERROR -o ConnectTimeout="$connect_timeout" $kex \
-l "$primary_user" ${primary_ssh_port:+-p "$primary_ssh_port"} \
-s -- "$primary" sshcluster-check 2>&1 </dev/null)
      rc=$?
      case "$rc:$err" in
        255:*"subsystem request failed"*) rc=0; err=;;
        # sshd drops connections beyond MaxStartups while many workers log in at once
        255:*kex_exchange_identification*|255:*"closed by remote host"*|\
255:*"reset by peer"*)
          # (default MaxStartups 10:30:100): back off a little, with jitter, and retry
          n=$((n+1))
          if [ $n -lt 6 ]; then
            sleep "0.$(( ($$ + n * 7) % 9 + 1 ))" 2>/dev/null || sleep 1; continue
          fi;;
        # an ssh too old for "^" in KexAlgorithms: its own defaults then
        255:*KexAlgorithms*) if [ -n "$kex" ]; then kex=; continue; fi;;
      esac
      break
    done
  fi
  tick
  printf '%s\n' "$err" | while IFS= read -r l; do [ -n "$l" ] && say "REVERSE_ERR=$l"; done
  say "REVERSE=$rc $a $_t"
}

# cores and load: shell builtins and /proc only.
step_cores() {
  # (GNU nproc obeys OMP_NUM_THREADS and OMP_THREAD_LIMIT, which HPC and BLAS setups
  # set in rc files: the cores are what is asked here)
  n=$(OMP_NUM_THREADS= OMP_THREAD_LIMIT= nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null)
  say "NPROC=$n"
}

step_load() {
  if [ -r /proc/loadavg ]; then
    read -r l1 l5 l15 _x </proc/loadavg; say "LOADAVG=$l1 $l5 $l15"
  else
    say "UPTIME=$(uptime 2>/dev/null)"
  fi
  if [ -r /proc/meminfo ]; then
    while read -r k v _x; do
      case $k in MemTotal:) say "MEM_TOTAL_KB=$v";; MemAvailable:) say "MEM_AVAIL_KB=$v";; esac
    done </proc/meminfo
  fi
}

# rscript: the inventory's path, or the one on the non-interactive PATH.
step_rscript() {
  rs=$rscript
  if [ -n "$rs" ]; then
    case $rs in
      /*) if [ ! -f "$rs" ] || [ ! -x "$rs" ]; then
            say "RSCRIPT_ERR=no executable file $rs"; rs=
          fi;;
      *) r2=$(command -v -- "$rs" 2>/dev/null) || r2=
         [ -n "$r2" ] || say "RSCRIPT_ERR=$rs is not on the PATH of a non-interactive shell: $PATH"
         rs=$r2;;
    esac
  else
    rs=$(command -v Rscript 2>/dev/null) || rs=
    [ -n "$rs" ] || say "RSCRIPT_ERR=Rscript is not on the PATH of a non-interactive shell: $PATH"
  fi
  say "RSCRIPT=$rs"
}

# workdir: made and entered as the launch makes and enters it (workdir.sh), so that R
# starts there, reading its .Rprofile and .Renviron as the workers do. (Tried in a
# subshell first, for what it says when it cannot.)
step_workdir() {
  [ -n "$workdir" ] || return 0
  err=$(sshcluster_workdir "$workdir" 2>&1 >/dev/null) && sshcluster_workdir "$workdir" &&
    return 0
  printf '%s\n' "$err" | while IFS= read -r l; do [ -n "$l" ] && say "WORKDIR_ERR=$l"; done
  return 1
}

# lease: the launch's lock on the host's lease file (lease.sh), taken in a subshell,
# which lets go of it as it ends: at once. LEASE=0: it can be taken; 1: held (LEASE_SAID
# names the holder); else file locks cannot be had here (LEASE_SAID says why).
step_lease() {
  out=$(sshcluster_lease_try 2>&1; rc=$?
        [ $rc -ne 1 ] || sshcluster_lease_holder "$(head -n 1 "$lf")"; exit $rc)
  rc=$?
  printf '%s\n' "$out" | while IFS= read -r l; do [ -n "$l" ] && say "LEASE_SAID=$l"; done
  say "LEASE=$rc"
}

# rscript (its version), packages and callback: one R start answers all three.
step_r() {
  # Through a line reader: the background ssh above writes to the same stdout, and
  # only whole-line writes keep the two from mixing inside a line.
  # (in a container the launch hands the image these variables as they are)
  { if [ -n "$engine" ]; then r_in_image 2>&1; else
      # (the classic launch's R starts as ssh leaves it: its workers take the locale
      # once started, so the lack of it is only reported)
      if [ -n "$classic" ]; then (sshcluster_locales $locale); else
        sshcluster_locales $locale; fi
      r_stdin '' | SSHCLUSTER_NONCE=$nonce $to "$rs" --default-packages=NULL -e "$r_boot" \
"${callback_host:-$primary}" "$port" "$callback_timeout" 2>&1
    fi
    say "R_EXIT=$?"; } | while IFS= read -r l; do say "$l"; done
}

step_primary
step_reverse_ssh &
tick; a=$_t
step_cores
step_load
tick; say "T_LOCAL=$a $_t"
a=$_t
if [ -n "$engine" ]; then  # (Rscript: the inventory's, or the image's on its PATH)
  step_container && rs=${rscript:-Rscript} || rs=
  tick; say "T_CONTAINER=$a $_t"
  [ -z "$rs" ] || say "RSCRIPT=$rs"
  a=$_t
else
  step_rscript
  login=$PWD
  [ -z "$rs" ] || step_workdir || rs=
  # (the classic launch's workers start in the login directory, reading its .Rprofile
  # and .Renviron, and move to the workdir once started)
  [ -z "$classic" ] || cd -- "$login" || rs=
fi
tick; say "T_LOOKUP=$a $_t"
[ -z "$lease" ] || step_lease
kstart=''
if [ -n "$engine" ] && [ -n "$rs" ]; then  # (the launch's keeper tried while R runs)
  container_wd
  [ -z "$wd" ] || keeper_start
fi
[ -z "$rs" ] || step_r
[ -z "$kstart" ] || keeper_look
wait
say "DONE=1"
