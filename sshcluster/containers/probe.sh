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

# Rscript ($rs) in the image with the check's R code, in a container made as the
# launch makes its own: host networking (the callback goes where a worker's would), the
# login user, the workdir (the inventory's, if it is there yet, else the login
# directory) mounted and entered, the inventory's options. The nonce comes on stdin,
# never on a command line or in the container's configuration. --rm: the container
# goes when R ends, and R ends within the budget.
r_in_image() {
  wd=$(pwd -P)
  if [ -n "$workdir" ] && [ -d "$workdir" ]; then wd=$(cd -- "$workdir" && pwd -P); fi
  sshcluster_container_user
  eval "set -- $container_options"
  printf '%s\n' "$nonce" | $to "$sshcluster_engine" run -i --rm --network host \
    "$user_opt" --pull never --volume "$wd:$wd" --workdir "$wd" --entrypoint "$rs" "$@" \
    "$image" --default-packages=NULL -e "$r_code" "${callback_host:-$primary}" "$port" \
    "$callback_timeout"
}
