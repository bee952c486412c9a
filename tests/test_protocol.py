"""The constants the Python side shares with the R and shell code it sends
(:mod:`sshcluster.protocol`) are the ones that code uses."""

from __future__ import annotations

import json
import re
from importlib import resources

from sshcluster import protocol
from sshcluster.check.probe import VERDICTS
from sshcluster.check.report import STEPS as REPORT_STEPS
from sshcluster.check.steps import STEPS
from sshcluster.containers.check import IN_IMAGE
from sshcluster.protocol import Fact, SyncFact


def _text(package: str, *path: str) -> str:
    return resources.files(package).joinpath(*path).read_text(encoding="utf-8")


def test_the_runner_runs_the_steps_in_the_protocols_order() -> None:
    assert tuple(s.name for s in STEPS) == protocol.STEPS == REPORT_STEPS
    assert [s for s in protocol.STEPS if s in protocol.REMOTE_STEPS] == list(
        protocol.REMOTE_STEPS)
    # (callback: also the listener's record; container: sshcluster/containers/check.py)
    assert {*VERDICTS, "callback", "worker_output", "lease", "container"} == set(
        protocol.REMOTE_STEPS)
    assert set(IN_IMAGE) <= set(VERDICTS)


def test_the_schema_names_the_same_steps() -> None:
    schema = json.loads(_text("sshcluster", "schema", "check.schema.json"))
    assert schema["$defs"]["step"]["enum"] == list(protocol.STEPS)


def test_every_fact_is_a_line_the_remote_script_prints() -> None:
    sources = "\n".join([_text("sshcluster.check", "probe.sh"),
                         _text("sshcluster.check", "R", "probe.R"),
                         _text("sshcluster.check", "R", "callback.R"),
                         _text("sshcluster.packages", "R", "environment.R"),
                         _text("sshcluster.containers", "probe.sh"),
                         _text("sshcluster", "R", "locale.sh")])
    facts = {v for k, v in vars(Fact).items() if k.isupper()}
    assert all(k == v for k, v in vars(Fact).items() if k.isupper())
    assert [f for f in sorted(facts) if f"{f}=" not in sources] == []


def test_every_sync_fact_is_a_line_the_sync_script_prints() -> None:
    sources = "\n".join(_text("sshcluster.packages", "R", name) for name in
                        ("sync.sh", "verify.R", "install.R", "reference.R"))
    facts = {v for k, v in vars(SyncFact).items() if k.isupper()}
    assert [f for f in sorted(facts) if f"{f}=" not in sources] == []


def test_the_hello_starts_with_the_magic_of_proof_r() -> None:
    proof = _text("sshcluster", "R", "proof.R")
    magic = re.search(r'^PROOF_MAGIC <- charToRaw\("([^"]+)"\)$', proof, re.M)
    assert magic is not None and magic.group(1).encode() == protocol.PROOF_MAGIC


def test_a_workers_end_is_reported_with_the_protocols_word() -> None:
    proof = _text("sshcluster", "R", "proof.R")
    worker = _text("sshcluster", "R", "worker.R")
    remote = _text("sshcluster", "R", "remote.sh")
    node = _text("sshcluster", "R", "launch", "node.R")
    assert f'\nGONE <- "{protocol.GONE}"\n' in proof
    assert "cat(GONE, slots[[pid]]" in worker
    assert f'echo "{protocol.GONE} ${{t%%:*}} $rc" >&4' in remote
    assert "words[1] == GONE" in node


def test_the_launch_takes_its_connection_budget_from_python() -> None:
    start = _text("sshcluster", "R", "launch", "start.R")
    assert 'S$config$connections[["launch"]]' in start
    assert 'S$config$connections[["user"]]' in start
    assert not re.search(r"workers \+ \d", start)


def test_a_push_host_reports_progress_with_the_protocols_word() -> None:
    script = _text("sshcluster.push", "remote.sh")
    assert f"printf '{protocol.PUSH_PROGRESS} %s\\n'" in script
