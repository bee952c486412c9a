"""The version of sshcluster (the generated R files and the run records carry it)."""

__version__ = "0.1.0"
