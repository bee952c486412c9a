"""The OpenSSH layer: what ``ssh`` itself would do, done the same way for the check.

* :mod:`~sshcluster.ssh.command`: the ssh command line the launch (and the check's
  ``ssh`` step, push and sync) runs;
* :mod:`~sshcluster.ssh.config`: the user's client configuration, as ``ssh -G`` prints it;
* :mod:`~sshcluster.ssh.environment`: the variables ssh sends a server (SendEnv, SetEnv);
* :mod:`~sshcluster.ssh.connect`: asyncssh connections made as ssh would make them
  (ProxyJump, ProxyCommand, identities, host key algorithms);
* :mod:`~sshcluster.ssh.knownhosts`, :mod:`~sshcluster.ssh.revoked` and
  :mod:`~sshcluster.ssh.keycheck`: host keys, read and checked as OpenSSH reads and
  checks them (:mod:`~sshcluster.ssh.keyblob`: a key or certificate from its blob).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sshcluster.lazy import exports, listing
from sshcluster.ssh.command import CONNECT_TIMEOUT, known_hosts_option, openssh_version, ssh_command
from sshcluster.ssh.config import ClientSettings, SshConfigError, client_settings

if TYPE_CHECKING:
    from sshcluster.ssh.connect import Connector, HostKeyDecision, host_decision, trust_policy
    from sshcluster.ssh.keycheck import HostKeyVerdict, verify
    from sshcluster.ssh.knownhosts import KnownHostsFiles, TrustPolicy, fingerprint

#: What needs asyncssh, imported when first asked for: the launch's and push's ssh
#: command lines (command, config) are wanted without it.
_NAMES = {
    "connect": ("Connector", "HostKeyDecision", "host_decision", "trust_policy"),
    "keycheck": ("HostKeyVerdict", "verify"),
    "knownhosts": ("KnownHostsFiles", "TrustPolicy", "fingerprint"),
}
__getattr__ = exports(__name__, _NAMES)
__dir__ = listing(globals(), _NAMES)


__all__ = [
    "CONNECT_TIMEOUT",
    "ClientSettings",
    "Connector",
    "HostKeyDecision",
    "HostKeyVerdict",
    "KnownHostsFiles",
    "SshConfigError",
    "TrustPolicy",
    "client_settings",
    "fingerprint",
    "host_decision",
    "known_hosts_option",
    "openssh_version",
    "ssh_command",
    "trust_policy",
    "verify",
]
