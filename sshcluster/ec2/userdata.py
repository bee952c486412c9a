"""The user data an instance runs at first boot (``userdata.sh``, filled in with data).

In this order: the dead man's switch, so that a setup that fails or hangs cannot keep an
instance alive (``shutdown -h`` at the expiry powers it off, and as the instance is
started with shutdown behaviour ``terminate``, powering off ends it and its bill); the
host keys on the console, before anything slow; then the setup, detached and logging to
:data:`SETUP_LOG`: the spec's ``setup`` script, R and the ``r_packages``, and a check that
they load, whose outcome ``up`` reads from :data:`STATUS_FILE` over SSH.

The shell lives in ``userdata.sh``; Python only supplies the data (the expiry, the
package names, the CRAN mirror, the setup script as a quoted here-document).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from importlib import resources
from typing import Protocol

from sshcluster.quoting import shell_quote


class UserDataSpec(Protocol):
    """What the user data reads of a cluster's spec (an
    :class:`~sshcluster.ec2.spec.EC2Spec`, which checks its size when it is read)."""

    @property
    def name(self) -> str: ...
    @property
    def setup(self) -> str | None: ...
    @property
    def r_packages(self) -> tuple[str, ...]: ...
    @property
    def cran(self) -> str: ...
    @property
    def repos(self) -> str: ...
    @property
    def r_version(self) -> str: ...


#: Where the setup's outcome is: ``running``, ``ready <R version>`` or ``failed: <what>``.
STATUS_FILE = "/var/lib/sshcluster/status"
#: ``armed <expiry>`` once the dead man's switch scheduled the shutdown at the expiry.
EXPIRY_FILE = "/var/lib/sshcluster/expiry"
#: The setup's log on the instance (readable by the login user).
SETUP_LOG = "/var/log/sshcluster-setup.log"

#: CRAN's apt repositories sign with these keys (``r_version: cran``), by the
#: distribution's os-release ID: fetched by fingerprint from :data:`KEYSERVER` and
#: refused unless the fingerprint matches (cran.r-project.org/bin/linux/debian and
#: /ubuntu, "secure apt").
CRAN_KEYS = {
    "debian": "95C0FAF38DB3CCAD0C080A7BDC78B2DDEABC47B7",  # Johannes Ranke
    "ubuntu": "E298A3A825C0D65DFD57CBB651716619E084DAB9",  # Michael Rutter
}
#: Where a key is fetched by its fingerprint.
KEYSERVER = "https://keyserver.ubuntu.com/pks/lookup?op=get&options=mr&search=0x"

_TEMPLATE = "userdata.sh"
_SETUP_HERE = "#@setup@\n"


def _template() -> str:
    return resources.files("sshcluster.ec2").joinpath(_TEMPLATE).read_text(encoding="utf-8")


def user_data(spec: UserDataSpec, expires: datetime, *, now: datetime | None = None) -> str:
    """The instances' user data for ``spec``'s cluster, which ends at ``expires``: the
    instance counts the time left from ``now`` (this machine's clock) on its own clock."""
    left = max(0, int((expires - (now or datetime.now(timezone.utc))).total_seconds()))
    header = [
        "#!/bin/sh",
        f"# Written by sshcluster for cluster {spec.name}; expires "
        f"{expires.astimezone().isoformat(timespec='seconds')}.",
        f"lifetime={left}",
        f"r_packages={shell_quote(' '.join(spec.r_packages))}",
        f"cran={shell_quote(spec.cran)}",
        f"repos={shell_quote(spec.repos)}",
        f"r_version={shell_quote(spec.r_version)}",
        f"cran_keys={shell_quote(' '.join(f'{k}={v}' for k, v in CRAN_KEYS.items()))}",
        f"keyserver={shell_quote(KEYSERVER)}",
    ]
    setup = ""
    if spec.setup:
        script = spec.setup if spec.setup.endswith("\n") else spec.setup + "\n"
        # A quoted here-document passes the script through untouched; its end marker is
        # derived from the script so no line of the script can end it early.
        marker = "SSHCLUSTER_SETUP_" + hashlib.sha256(script.encode()).hexdigest()[:16]
        setup = (f"cat > \"$state/setup\" <<'{marker}'\n{script}{marker}\n"
                 "chmod 700 \"$state/setup\"\n")
    before, _, after = _template().partition(_SETUP_HERE)
    return "\n".join(header) + "\n" + before + setup + after


__all__ = ["CRAN_KEYS", "EXPIRY_FILE", "KEYSERVER", "SETUP_LOG", "STATUS_FILE", "UserDataSpec",
           "user_data"]
