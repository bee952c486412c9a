"""Tests of sshcluster.push."""
