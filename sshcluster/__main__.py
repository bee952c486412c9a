"""``python -m sshcluster`` runs the command-line tool."""

from sshcluster.cli import main

main()
