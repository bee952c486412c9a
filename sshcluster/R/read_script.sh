# The command line ssh runs on each worker host (the last line of this file). ssh hands
# it to the account's login shell, whatever that is: sh, bash, zsh, csh, tcsh or fish.
# One line of single-quoted text holding no \\ and no \' means the same to all of them
# (a script on the command line would not: csh refuses a quoted newline, fish reads \\
# in quotes as \). It reads the host's script from the session's stdin, up to the
# end-of-script line, and runs it only if it arrived whole; the shell's read builtin
# reads a pipe byte by byte, so what follows (tokens, heartbeats) stays for the script.
S=$(while IFS= read -r l; do [ "$l" = "# sshcluster: end of script" ] && exit 0; printf "%s\n" "$l"; done; exit 1) || { echo "sshcluster: the script for this host did not arrive whole (ssh ended early?)" >&2; exit 1; }; eval "$S"
