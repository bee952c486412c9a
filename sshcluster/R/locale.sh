# The workers' locale on a host, pasted before remote.sh (the launch) and before the
# check's probe.sh, so that the check's R starts in the locale the launch's workers get.
# The primary sends its own LANG and LC_* (or the inventory's locale:), but a host may
# lack that locale: R then warns at every start ("Setting LC_CTYPE failed"), and a
# ~/.Rprofile with options(warn = 2) turns that into an error that kills each worker.

# Whether this host has locale $1. glibc's locale(1) says "Cannot set LC_..." on stderr
# (and exits 0) for one it lacks. Without locale(1) (musl, BusyBox), it cannot be told:
# musl's setlocale() accepts any name, so the value is kept.
sshcluster_has_locale() {
  case $1 in '' | C | POSIX) return 0 ;; esac
  command -v locale >/dev/null 2>&1 || return 0
  [ -z "$(LC_ALL="$1" locale 2>&1 >/dev/null)" ]
}

# Exports each NAME=VALUE argument. A locale variable (LANG, LC_*) whose locale this
# host lacks gets C.UTF-8 instead if the host has that, else C; each such change is
# printed as "LOCALE=NAME VALUE STAND-IN" (the check reports it; the launch drops it).
sshcluster_locales() {
  for kv in "$@"; do
    case $kv in
      LANG=* | LC_*=*)
        v=${kv#*=}
        if ! sshcluster_has_locale "$v"; then
          if sshcluster_has_locale C.UTF-8; then s=C.UTF-8; else s=C; fi
          printf 'LOCALE=%s %s %s\n' "${kv%%=*}" "$v" "$s"
          kv="${kv%%=*}=$s"
        fi ;;
    esac
    export "$kv"
  done
}
