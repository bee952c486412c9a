# The inventory's workdir on a host, shared by the launch (remote.sh: its workers start
# in it) and the check (check/probe.sh: its R starts there too, and so reads the
# workdir's .Rprofile and .Renviron, an renv project's say, as the workers do).

# Makes the workdir $1 if missing and enters it (a relative one is relative to the login
# directory, where ssh starts both). Fails, saying why on stderr, when it cannot.
sshcluster_workdir() {
  mkdir -p -- "$1" && cd -- "$1" || {
    echo "sshcluster: cannot make or enter workdir $1 on $(uname -n)" >&2
    return 126
  }
}
