# sshcluster image push, on a worker host: run by read_script.sh as
#   sshcluster-image MODE ENGINE IMAGE
# MODE "id": print the image's id (nothing when the host lacks it); "load": load a
# gzip-compressed image archive from stdin (what follows this script), then print the
# id. ENGINE is podman, docker or auto. Each answer is one line:
#   sshcluster-image<TAB>id<TAB>ID           (ID empty: no such image)
#   sshcluster-image<TAB>failed<TAB>WHY
mode=$1; engine=$2; image=$3
say() { printf 'sshcluster-image\t%s\t%s\n' "$1" "$2"; }
if [ "$engine" = auto ]; then
  if command -v podman >/dev/null 2>&1; then engine=podman
  elif command -v docker >/dev/null 2>&1; then engine=docker
  else say failed "neither podman nor docker is installed on $(uname -n)"; exit 1; fi
fi
command -v "$engine" >/dev/null 2>&1 || { say failed "$engine is not installed on $(uname -n)"; exit 1; }
if [ "$mode" = load ]; then
  out=$(gzip -dc | "$engine" load -q 2>&1) || {
    say failed "$engine load: $(printf '%s' "$out" | tr '\n' ' ' | cut -c1-300)"; exit 1; }
fi
id=$("$engine" image inspect --format '{{.Id}}' "$image" </dev/null 2>/dev/null) || id=''
say id "${id#sha256:}"
