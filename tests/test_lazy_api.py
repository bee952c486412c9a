"""The API's names are imported on first use (sshcluster.lazy), and still all there.

Each case runs in a fresh interpreter: what one test imports must not hide what another
would import.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_sshcluster_and_the_cli_import_no_ssh_library() -> None:
    said = _python("import sys, sshcluster, sshcluster.cli, sshcluster.packages.cli\n"
                   "print('asyncssh' in sys.modules, 'boto3' in sys.modules)")
    assert said.split() == ["False", "False"]


def test_every_public_name_and_sub_package_is_there() -> None:
    said = _python(
        "import sshcluster as s, inspect\n"
        "[getattr(s, n) for n in s.__all__]\n"
        "print(s.jobs.start_detached.__name__, s.ssh.connect.__name__, s.inventory.__name__)\n"
        "print(all(n in dir(s) for n in s.__all__))\n"
        "print(inspect.isfunction(s.check), inspect.isfunction(s.push))\n")
    assert said.split() == ["start_detached", "sshcluster.ssh.connect",
                            "sshcluster.inventory", "True", "True", "True"]


@pytest.mark.parametrize("first", ["import sshcluster.check.preflight, sshcluster.push.api",
                                   "import sshcluster; sshcluster.check, sshcluster.push"])
def test_check_and_push_stay_the_functions(first: str) -> None:
    said = _python(f"{first}\nimport sshcluster, sshcluster.check.report, sshcluster.push.api\n"
                   "print(sshcluster.check.__module__, sshcluster.push.__module__)")
    assert said.split() == ["sshcluster.check.preflight", "sshcluster.push.api"]


def test_a_wrong_name_is_an_attribute_error() -> None:
    said = _python("import sshcluster\ntry:\n    sshcluster.nosuchname\n"
                   "except AttributeError as e:\n    print(e)")
    assert said.strip() == "module 'sshcluster' has no attribute 'nosuchname'"
