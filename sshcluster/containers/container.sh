# sshcluster's container functions for a worker host: pasted before remote.sh when
# the inventory names a container (sshcluster/containers). remote.sh calls them only
# when SSHCLUSTER_CONTAINER (the engine: podman, docker or auto) is set, with
#   SSHCLUSTER_CONTAINER_IMAGE    the image
#   SSHCLUSTER_CONTAINER_PULL     missing, always or never (the engine's --pull)
#   SSHCLUSTER_CONTAINER_OPTIONS  extra run arguments, as sh words
#   SSHCLUSTER_CONTAINER_NAME     the container's name (the cluster's and the host's)
# One container per session holds the host's workers: it runs its keeper (below) and
# each worker R is started in it with `ENGINE exec`. Its processes are the engine's
# (conmon's, dockerd's), not the session's: the session's process group does not
# reach them, so the container is removed by name, in a session of its own (setsid),
# which the group kill of the watchdog cannot cut short.
sshcluster_engine=''
# The keeper: the container's own command, which only holds it open for the workers'
# `exec`s (the program, then its words after the image). It is the image's program, not
# the host's: the check (probe.sh) starts it in the image as the launch does, since an
# image whose sleep has no `infinity` (BusyBox's) or no sleep at all would pass every
# other step and fail here.
sshcluster_keeper=sleep
sshcluster_keeper_args=infinity

# Which engine: resolved before the watchdog starts, so that its copy knows too.
sshcluster_container_engine() {
  sshcluster_engine=$SSHCLUSTER_CONTAINER
  if [ "$sshcluster_engine" = auto ]; then
    if command -v podman >/dev/null 2>&1; then sshcluster_engine=podman
    elif command -v docker >/dev/null 2>&1; then sshcluster_engine=docker
    else
      echo "sshcluster: neither podman nor docker is installed on $(uname -n); install one, or remove container: from the inventory" >&2
      return 127
    fi
  fi
  command -v "$sshcluster_engine" >/dev/null 2>&1 || {
    echo "sshcluster: $sshcluster_engine is not installed on $(uname -n) (PATH=$PATH); install it, or set container.engine" >&2
    return 127
  }
}

# The login user inside (in $user_opt): rootless podman maps it with keep-id; rootful
# podman and docker run as its uid and gid. (The check runs R in the image with it too.)
sshcluster_container_user() {
  if [ "$sshcluster_engine" = podman ] && [ "$(id -u)" != 0 ]; then
    user_opt=--userns=keep-id
  else
    user_opt="--user=$(id -u):$(id -g)"
  fi
}

# `ENGINE run -d` of the container that holds the workers, in the current directory
# (mounted and entered), its keeper as its command: the launch's (label worker), and the
# check's trial of it (label check). $1: the label; the rest: engine options that differ
# between the two (--rm, --pull), before the inventory's. Prints the container's id.
sshcluster_container_run() {
  label=$1; shift
  wd=$(pwd -P)
  sshcluster_container_user
  eval "set -- \"\$@\" $SSHCLUSTER_CONTAINER_OPTIONS"
  # (--stop-timeout=0: its keeper, as the container's first process, ignores TERM, so a
  # removal kills at once instead of waiting out the engine's 10 s; podman before 4.0 and
  # docker have no `rm -t`, and every engine has this; the keeper's words unquoted:
  # split as sh splits them)
  "$sshcluster_engine" run -d --stop-timeout=0 --name "$SSHCLUSTER_CONTAINER_NAME" \
    --label "sshcluster=$label" --label "sshcluster.user=$(id -u)" --network host \
    "$user_opt" --volume "$wd:$wd" --workdir "$wd" --entrypoint "$sshcluster_keeper" "$@" \
    "$SSHCLUSTER_CONTAINER_IMAGE" $sshcluster_keeper_args
}

sshcluster_container_start() {
  sshcluster_container_run worker --rm --pull "$SSHCLUSTER_CONTAINER_PULL" >/dev/null || {
    rc=$?
    echo "sshcluster: $sshcluster_engine could not start $SSHCLUSTER_CONTAINER_IMAGE on $(uname -n); run 'sshcluster check' on the inventory" >&2
    return "$rc"
  }
}

# Runs "$@" (a worker's Rscript command) in the container, with the variables
# remote.sh exported for R.
sshcluster_container_exec() {
  set -- "$SSHCLUSTER_CONTAINER_NAME" "$@"
  for v in SSHCLUSTER_OUTPUT SSHCLUSTER_CODE LANG LANGUAGE LC_ALL LC_CTYPE LC_COLLATE LC_TIME \
      LC_MONETARY LC_MESSAGES LC_PAPER LC_MEASUREMENT LC_NUMERIC; do
    eval "[ -n \"\${$v+set}\" ]" && set -- "--env=$v" "$@"
  done
  exec "$sshcluster_engine" exec -i "$@"
}

# Removes the container, whatever state it is in; quiet when there is none. With
# "again" (the watchdog's), once more a few seconds later, from outside the session:
# a `run` that the watchdog's group kill interrupted may have made it after all.
# (`rm -f` with no -t: podman before 4.0 refuses -t, and that refusal, unseen, left every
# container running; the container's stop timeout of 0 makes the removal quick anyway.)
sshcluster_container_remove() {
  [ -n "$sshcluster_engine" ] || return 0
  command -v setsid >/dev/null 2>&1 && detach=setsid || detach=''
  $detach "$sshcluster_engine" rm -f "$SSHCLUSTER_CONTAINER_NAME" </dev/null >/dev/null 2>&1
  if [ "${1:-}" = again ] && [ -n "$detach" ]; then
    setsid sh -c 'sleep 3; "$1" rm -f "$2"' sshcluster "$sshcluster_engine" \
      "$SSHCLUSTER_CONTAINER_NAME" </dev/null >/dev/null 2>&1 &
  fi
  return 0
}
