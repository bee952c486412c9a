# sshcluster sync: what runs on each host. sshcluster.packages.sync prepends the data as
# shell variables: mode (probe, receive, install or verify), rscript, root, digest, token,
# manifest (the packages, one per line), where_r, verify_r and install_r (R code), repos,
# pins, lifetime (the seconds this sync may take: its timeout, and a margin).
# Every answer is one KEY=value line. Nothing is ever written into the user's own R
# libraries: only under $root, and a library appears there whole (a rename) or not at all.

say() { printf '%s\n' "$1"; }
fail() { say "FAILED=$1"; exit 1; }

case $root in "~/"*) root=$HOME/${root#"~/"};; "~") root=$HOME;; esac
rs=${rscript:-$(command -v Rscript 2>/dev/null)}
[ -n "$rs" ] || fail "no Rscript on the PATH of a non-interactive shell: $PATH"

# Whether a library is whole: its manifest, and every package's DESCRIPTION at the pinned
# version, as the check finds them (a package removed from it by hand is found missing).
whole_r='sshcluster_whole <- function(lib, pins) {
  ok <- file.exists(file.path(lib, "SSHCLUSTER-MANIFEST"))
  for (p in strsplit(pins, "=", fixed = TRUE)) {
    f <- file.path(lib, p[[1]], "DESCRIPTION")
    ok <- ok && file.exists(f) && identical(tryCatch(read.dcf(f, "Version")[[1]],
                                                     error = function(e) ""), p[[2]])
  }
  ok
}'

# R's version and platform, this library's place for this R minor version, platform and
# OS release (where_r: R/library_dir.R, as the check and the workers name it), and
# whether it is whole there.
out=$("$rs" --default-packages=NULL -e "$where_r" -e "$whole_r" -e 'a <- commandArgs(TRUE)
  lib <- sshcluster_library_dir(a[[1]], a[[2]])
  cat("\nSSHCLUSTER-FACTS ", R.version$major, ".", R.version$minor, " ", R.version$major, ".",
      sub("[.].*", "", R.version$minor), " ", R.version$platform, " ",
      if (sshcluster_whole(lib, a[-(1:2)])) "complete" else "absent",
      "\nSSHCLUSTER-LIBRARY ", lib, "\n", sep = "")' \
  "$root" "$digest" $pins) || fail "$rs did not run"
# (by their marks, each at a line's start: a profile of the user's may print before them,
# with or without an end of line, and a .Last() of the user's after them)
facts='' target=''
while IFS= read -r l; do
  case $l in
    "SSHCLUSTER-FACTS "*) facts=${l#"SSHCLUSTER-FACTS "};;
    "SSHCLUSTER-LIBRARY "*) target=${l#"SSHCLUSTER-LIBRARY "};;
  esac
done <<EOF
$out
EOF
[ -n "$facts" ] && [ -n "$target" ] || fail "$rs did not say where the library goes"
set -- $facts
base=${target%/*}

probe() {
  say "R_VERSION=$1"
  say "PLATFORM=$3"
  os=
  # (the release as its ABI goes, as R/library_dir.R takes it)
  if [ -r /etc/os-release ]; then
    os=$(. /etc/os-release && v=${VERSION_ID:-} &&
      case " ${ID:-} ${ID_LIKE:-} " in
        *" rhel "*|*" fedora "*|*" suse "*) v=${v%%.*} ;;
        *) case $v in *.*.*) v=$(printf '%s' "$v" | cut -d. -f1,2) ;; esac ;;
      esac && o=${ID:-} && { [ -z "$v" ] || o=${o:+$o }$v; } && echo "$o")
  fi
  say "OS=$os"
  mkdir -p "$base" || fail "cannot make $base"
  # Hosts that share this directory (one home on NFS) read the same id: the first
  # to link its token in place wins, atomically, and the library is sent once.
  if [ ! -s "$root/.sshcluster-id" ]; then
    printf '%s\n' "$token" >"$root/.id-$token" && ln "$root/.id-$token" "$root/.sshcluster-id" 2>/dev/null
    rm -f "$root/.id-$token"
  fi
  say "SHARED_ID=$(cat "$root/.sshcluster-id")"
  say "LIBRARY=$target"
  say "STATE=$4"
}

# Whole or not at all: into a fresh directory next to the target, checked there by
# loading every package, then renamed into place. An interruption leaves only the
# .incoming- directory, which no R ever looks at (and a later sync removes). Its name
# says until when (this host's clock, seconds) its sync may still be writing it: a sync
# with a long --timeout (a big install from source) is never swept away by another.
prepare() {
  mkdir -p "$base" || fail "cannot make $base"
  now=$(date +%s)
  for old in "$base"/.incoming-* "$base"/.broken-*; do
    [ -d "$old" ] || continue
    until=${old##*/.incoming-*-until}
    case $until in
      "$old") # (no deadline in its name: a sync from before, or a .broken- copy)
        [ -n "$(find "$old" -maxdepth 0 -mmin +60 2>/dev/null)" ] || continue;;
      *) until=${until%%-*}
        case $until in ''|*[!0-9]*) continue;; esac
        [ "$now" -gt "$until" ] || continue;;
    esac
    rm -rf "$old" 2>/dev/null
  done
  tmp=$(mktemp -d "$base/.incoming-$digest-until$((now + ${lifetime:-3600}))-XXXXXX") ||
    fail "cannot write in $base"
  trap 'rm -rf "$tmp"' EXIT
  trap 'exit 1' HUP INT TERM PIPE
}

finish() {
  printf '%s\n' "$manifest" >"$tmp/SSHCLUSTER-MANIFEST"
  "$rs" --default-packages=NULL -e "$verify_r" "$tmp/.verified" "$tmp" $pins 2>&1 |
    while IFS= read -r l; do say "$l"; done
  # (the verification's verdict: every package loaded, none missing)
  [ -f "$tmp/.verified" ] || fail "some packages do not load"
  rm -f "$tmp/.verified"
  # Into place with rename(2) (R's file.rename), which never puts one directory inside
  # another: when another sync got there first, this one's copy is discarded. A library
  # there that is not whole (a package removed by hand) is moved out of the way first.
  broken=$base/.broken-$digest-$token
  state=$("$rs" --default-packages=NULL -e "$whole_r" -e 'a <- commandArgs(TRUE)
    if (file.exists(a[[2]]) && !sshcluster_whole(a[[2]], a[-(1:3)]))
      invisible(file.rename(a[[2]], a[[3]]))
    cat("\nSSHCLUSTER-RENAMED ", if (file.rename(a[[1]], a[[2]])) "complete"
        else if (file.exists(a[[2]])) "there", "\n", sep = "")' "$tmp" "$target" "$broken" $pins 2>/dev/null)
  rm -rf "$broken"
  case $state in  # (its marked line: a profile or a .Last() of the user's may print)
    *"
SSHCLUSTER-RENAMED complete"*) trap - EXIT; say "STATE=complete";;
    *"
SSHCLUSTER-RENAMED there"*) say "STATE=there";;  # another sync got here first: the same content
    *) fail "cannot rename into $target";;
  esac
}

receive() {
  prepare
  gzip -dc | tar -xf - -C "$tmp" || fail "the package archive did not arrive whole"
  finish
}

# A host that shares the library another host just wrote: its own R loads it, every
# package at its pinned version, or the host fails (an R that dies loading a package
# leaves no verdict either). The verdict goes next to the library, never into it.
verify() {
  mark=$base/.verified-$token
  "$rs" --default-packages=NULL -e "$verify_r" "$mark" "$target" $pins 2>&1 |
    while IFS= read -r l; do say "$l"; done
  [ -f "$mark" ] || fail "some packages do not load"
  rm -f "$mark"
  say "STATE=verified"
}

install() {
  prepare
  "$rs" --default-packages=NULL -e "$install_r" "$tmp" "$repos" $pins 2>&1 |
    while IFS= read -r l; do say "$l"; done
  finish
}

case $mode in
  probe) probe "$@";;
  receive) receive;;
  install) install;;
  verify) verify;;
esac
