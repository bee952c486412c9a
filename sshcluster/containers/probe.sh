# sshcluster's container check on a worker host: pasted into the check's remote script
# (sshcluster/check/probe.sh) after the launch's own container functions (container.sh),
# for a host with a container:. Data, as shell variables: engine, image, pull,
# container_options, workdir (and the check's own: budget, nonce, r_code, ...). Every
# answer is one CONTAINER_*=VALUE line; the check's verdicts read them.

# container: the engine (picked as the launch picks it), usable by the login user without
# a password, and the image there, or pulled now under pull:. Succeeds when R can be
# tried in the image.
step_container() {
  SSHCLUSTER_CONTAINER=$engine
  sshcluster_container_engine 2>/dev/null || {
    if [ "$engine" = auto ]; then say "CONTAINER_NOENGINE=podman or docker"
    else say "CONTAINER_NOENGINE=$engine"; fi
    return 1
  }
  e=$sshcluster_engine
  say "CONTAINER_ENGINE=$e"
  say "CONTAINER_USER=$(id -un 2>/dev/null || id -u)"
  out=$("$e" info </dev/null 2>&1 >/dev/null) || {
    say "CONTAINER_UNUSABLE=$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-300)"; return 1; }
  have=$("$e" image inspect --format '{{.Id}}' "$image" </dev/null 2>/dev/null) || have=''
  if [ -z "$have" ] || [ "$pull" = always ]; then
    if [ "$pull" = never ]; then say "CONTAINER_ABSENT=never"; return 1; fi
    out=$($to "$e" pull -q "$image" </dev/null 2>&1) || {
      say "CONTAINER_NOPULL=$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-300)"
      [ -n "$have" ] || { say "CONTAINER_ABSENT=$pull"; return 1; }
    }
    have=$("$e" image inspect --format '{{.Id}}' "$image" </dev/null 2>/dev/null) || have=''
    [ -n "$have" ] || { say "CONTAINER_ABSENT=$pull"; return 1; }
  fi
  say "CONTAINER_IMAGE=${have#sha256:}"
}

# The one directory the launch's container mounts and enters (wd; empty when it cannot
# be made): the inventory's workdir, made here as the launch makes it (R/workdir.sh), a
# relative one under the login directory; without one, the login directory.
container_wd() {
  wd=$(pwd -P)
  if [ -n "$workdir" ]; then
    wd=$(sshcluster_workdir "$workdir" 2>/dev/null && pwd -P) || wd=''
  fi
}

# Rscript ($rs) in the image with the check's R code, in a container made as the
# launch makes its own (container.sh, after remote.sh made and entered the workdir): host
# networking, the login user, the same one directory mounted and entered (wd), the
# inventory's options. So R sees exactly the files the workers will: a library elsewhere under the
# login directory is not there. The nonce comes on stdin, never on a command line or in
# the container's configuration, and the R code after it (r_stdin and r_boot, in the
# check's probe.sh: not in -e, which R drops when it is long). Labelled as the check's
# (sshcluster=check), not a launch's worker container. --rm: the container goes when R
# ends, and R ends within the budget.
r_in_image() {
  [ -n "$wd" ] || {
    echo "sshcluster: cannot make or enter workdir $workdir on $(uname -n)"; return 126; }
  sshcluster_container_user
  eval "set -- $container_options"
  for kv in $locale; do set -- "--env=$kv" "$@"; done  # (the launch's, as it hands them)
  r_stdin "$nonce" | $to "$sshcluster_engine" run -i --rm --label sshcluster=check \
    --label "sshcluster.user=$(id -u)" --network host "$user_opt" --pull never \
    --volume "$wd:$wd" --workdir "$wd" --entrypoint "$rs" "$@" \
    "$image" --default-packages=NULL -e "$r_boot" "${callback_host:-$primary}" "$port" \
    "$callback_timeout"
}

# The launch's keeper (container.sh), tried in the image: keeper_start starts the
# container exactly as the launch starts its own (sshcluster_container_run; only its
# name, its label check, and --pull never: the image is here by now), in the background
# while R runs in the image; keeper_look, once R has ended, says whether it still runs,
# or why not (the engine's words, or what the keeper said before it ended), and removes
# it. No --rm, so that what an ended keeper said can be read. A guard in a session of
# its own removes it after the budget should this script be cut off first.
keeper_start() {
  kname="sshcluster-check-$(id -u)-$$-$(date +%s 2>/dev/null)"
  say "CONTAINER_KEEPER=$sshcluster_keeper $sshcluster_keeper_args"
  command -v setsid >/dev/null 2>&1 && detach=setsid || detach=''
  $detach sh -c 'sleep "$1"; "$2" rm -f "$3"' sshcluster-guard "$budget" \
    "$sshcluster_engine" "$kname" </dev/null >/dev/null 2>&1 &
  kguard=$!
  (
    cd -- "$wd" || exit 1
    SSHCLUSTER_CONTAINER_NAME=$kname SSHCLUSTER_CONTAINER_IMAGE=$image
    SSHCLUSTER_CONTAINER_OPTIONS=$container_options
    out=$(sshcluster_container_run check --pull never </dev/null 2>&1 >/dev/null) || {
      say "CONTAINER_KEEPER_ERR=$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-300)"; exit 1; }
  ) &
  kstart=$!
}

keeper_look() {
  e=$sshcluster_engine
  if wait "$kstart"; then
    st=$($to "$e" container inspect --format '{{.State.Status}} {{.State.ExitCode}}' \
      "$kname" </dev/null 2>/dev/null) || st='gone'
    case $st in
      running*) ;;
      *) out=$($to "$e" logs "$kname" </dev/null 2>&1 | tail -n 3)
         [ -z "$out" ] || say "CONTAINER_KEEPER_ERR=$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-300)";;
    esac
    say "CONTAINER_KEEPER_STATE=$st"
  fi
  $to "$e" rm -f "$kname" </dev/null >/dev/null 2>&1
  kill -s KILL -- "-$kguard" 2>/dev/null || kill -s KILL "$kguard" 2>/dev/null
}
