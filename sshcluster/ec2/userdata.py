"""The user data an instance runs at first boot: the dead man's switch, then the setup.

The switch comes first so that a setup script that fails or hangs cannot keep an instance
alive: ``shutdown -h`` at the expiry powers it off, and as the instance is started with
shutdown behaviour ``terminate``, powering off ends it and its bill.
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sshcluster.ec2.spec import EC2Spec

_EXPIRY_SCRIPT = "/var/lib/cloud/scripts/per-boot/sshcluster-expiry.sh"


def user_data(spec: EC2Spec, expires: datetime) -> str:
    """The instances' user data: arm the dead man's switch, then run ``spec.setup``.

    The switch is also installed as a cloud-init per-boot script, because a reboot
    forgets a scheduled shutdown. The time left is computed on the instance from the
    absolute expiry, so a slow boot does not stretch the lifetime.
    """
    epoch = int(expires.timestamp())
    parts = [
        "#!/bin/sh",
        f"# Written by sshcluster for cluster {spec.name}; expires "
        f"{expires.astimezone().isoformat(timespec='seconds')}.",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin; export PATH",
        f"mkdir -p {os.path.dirname(_EXPIRY_SCRIPT)}",
        f"cat > {_EXPIRY_SCRIPT} <<'SSHCLUSTER_EXPIRY'",
        "#!/bin/sh",
        "# sshcluster dead man's switch: power off at the cluster's expiry, also after a reboot.",
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin; export PATH",
        f"expires={epoch}",
        'left=$(( (expires - $(date +%s) + 59) / 60 ))',
        'if [ "$left" -lt 1 ]; then shutdown -h now',
        'else shutdown -h "+$left" "sshcluster: max_lifetime reached"; fi',
        "SSHCLUSTER_EXPIRY",
        f"chmod 755 {_EXPIRY_SCRIPT}",
        _EXPIRY_SCRIPT,
    ]
    if spec.setup:
        script = spec.setup if spec.setup.endswith("\n") else spec.setup + "\n"
        # A quoted here-document passes the script through untouched; its end marker is
        # derived from the script so no line of the script can end it early.
        marker = "SSHCLUSTER_SETUP_" + hashlib.sha256(script.encode()).hexdigest()[:16]
        run = "/var/lib/sshcluster/setup" if script.startswith("#!") else \
            "/bin/sh -e /var/lib/sshcluster/setup"
        parts += [
            "mkdir -p /var/lib/sshcluster",
            f"cat > /var/lib/sshcluster/setup <<'{marker}'",
            script.rstrip("\n"),
            marker,
            "chmod 700 /var/lib/sshcluster/setup",
            f"{run} > /var/log/sshcluster-setup.log 2>&1",
        ]
    return "\n".join(parts) + "\n"


__all__ = ["user_data"]
