"""``sshcluster ARGS`` as its own process, with ``up``'s seams sent to 127.0.0.1.

Usage: ``python cli_with_seams.py PORT[,PORT...] ARGS...``. The instances ``ec2 up``
starts on moto are mapped, in order, onto 127.0.0.1 and these ports (so it never waits on
moto's made-up addresses); their console output is empty, so ``up`` waits for host keys
there. Everything else is the real command, signals included.
"""

from __future__ import annotations

import sys

from sshcluster import ec2
from sshcluster.cli import cli


def main() -> None:
    ports = [int(p) for p in sys.argv[1].split(",")]
    assigned: dict[str, int] = {}

    def address_of(inst: ec2.Instance) -> ec2.Endpoint:
        index = assigned.setdefault(inst.id, len(assigned))
        return ec2.Endpoint("127.0.0.1", ports[index % len(ports)])

    cli.main(sys.argv[2:], prog_name="sshcluster",
             obj=ec2.Seams(address_of=address_of, console_text=lambda instance_id: ""))


if __name__ == "__main__":
    main()
