# sshcluster's container check on a worker host, run as
#   sh -s ENGINE IMAGE PULL RSCRIPT BUDGET PACKAGES...
# It prints one fact per line (NAME=VALUE) and never fails itself: the check's verdict
# reads the facts. ENGINE is podman, docker or auto; BUDGET the seconds a pull may take.
engine=$1; image=$2; pull=$3; rscript=$4; budget=$5
shift 5
if [ "$engine" = auto ]; then
  if command -v podman >/dev/null 2>&1; then engine=podman
  elif command -v docker >/dev/null 2>&1; then engine=docker
  else echo "NOENGINE=podman or docker"; exit 0; fi
fi
command -v "$engine" >/dev/null 2>&1 || { echo "NOENGINE=$engine"; exit 0; }
echo "ENGINE=$engine"
echo "USER=$(id -un 2>/dev/null || id -u)"
out=$("$engine" info </dev/null 2>&1 >/dev/null) || {
  echo "UNUSABLE=$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-300)"; exit 0; }
image_id() { "$engine" image inspect --format '{{.Id}}' "$image" </dev/null 2>/dev/null; }
have=$(image_id) || have=''
if [ -z "$have" ] || [ "$pull" = always ]; then
  if [ "$pull" = never ]; then echo "ABSENT=never"; exit 0; fi
  if command -v timeout >/dev/null 2>&1; then t="timeout $budget"; else t=''; fi
  out=$($t "$engine" pull -q "$image" </dev/null 2>&1) || {
    echo "NOPULL=$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-300)"
    [ -n "$have" ] || exit 0
  }
  have=$(image_id) || have=''
  [ -n "$have" ] || { echo "ABSENT=$pull"; exit 0; }
fi
echo "IMAGE=${have#sha256:}"
code='cat("RVERSION=", as.character(getRversion()), "\n", sep = "")
for (p in commandArgs(TRUE)) cat("PKG=", p, "=", if (suppressMessages(suppressWarnings(
  requireNamespace(p, quietly = TRUE)))) "ok" else "missing", "\n", sep = "")'
out=$("$engine" run --rm --network host --pull never --entrypoint "$rscript" "$image" \
  -e "$code" "$@" </dev/null 2>&1)
rc=$?
printf '%s\n' "$out" | grep -E '^(RVERSION|PKG)='
[ "$rc" = 0 ] || echo "NOR=$(printf '%s' "$out" | grep -vE '^(RVERSION|PKG)=' | tr '\n' ' ' | cut -c1-300)"
