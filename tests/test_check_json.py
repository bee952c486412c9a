"""``check --json`` is a contract: a versioned document with counts, hints of their own,
documented statuses, an error document for a wrong inventory, all as the JSON Schema
shipped in the package says (validated here against real output)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from sshcluster.check.report import (
    SCHEMA_VERSION,
    STATUSES,
    STEPS,
    CheckReport,
    HostReport,
    StepResult,
    check_schema,
)
from sshcluster.cli import cli
from sshcluster.inventory import Host
from sshcluster.testing import free_port
from sshcluster.testing.sshserver import keys, server_in_thread


def validate(doc: Any) -> None:
    jsonschema.Draft202012Validator(check_schema()).validate(doc)


def test_the_schema_is_a_schema_and_matches_the_code() -> None:
    schema = check_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    defs = schema["$defs"]
    assert defs["report"]["properties"]["schema"]["const"] == SCHEMA_VERSION
    assert defs["step"]["enum"] == list(STEPS)
    assert defs["check"]["properties"]["status"]["enum"] == list(STATUSES)
    for status in STATUSES:  # every status is explained
        assert f"{status}:" in defs["check"]["properties"]["status"]["description"]


def test_the_schema_refuses_what_breaks_the_contract() -> None:
    doc = CheckReport("p", 11000, (HostReport(Host("a"), {s: StepResult("ok") for s in STEPS}),
                                   )).to_dict()
    validate(doc)
    for broken in ({**doc, "schema": 2}, {k: v for k, v in doc.items() if k != "counts"},
                   {**doc, "hosts": [{**doc["hosts"][0], "checks": {
                       **doc["hosts"][0]["checks"], "auth": {"status": "maybe"}}}]}):
        with pytest.raises(jsonschema.ValidationError):
            validate(broken)


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "ssh_config"
    config.write_text("Host *\n  UserKnownHostsFile /dev/null\n  GlobalKnownHostsFile "
                      "/dev/null\n  IdentityAgent none\n")
    return config


def test_real_output_of_a_mixed_run_is_valid(tmp_path: Path) -> None:
    """One host that logs in (its key recorded by --accept-new), one whose port refuses:
    the real document, validated, with its counts, a hint of its own and the line."""
    key = keys().write_client_key(tmp_path / "id_ed25519")
    refused = free_port("127.0.0.1")
    with server_in_thread() as server:
        inv = tmp_path / "hosts.yaml"
        inv.write_text(f"primary: 127.0.0.1\nknown_hosts: {tmp_path}/kh\nhosts:\n"
                       f"  - host: 127.0.0.1\n    ssh_port: {server.port}\n"
                       f"    identity_file: {key}\n"
                       f"  - host: 127.0.0.1\n    ssh_port: {refused}\n")
        result = CliRunner().invoke(cli, ["check", str(inv), "--json", "-F",
                                          str(_config(tmp_path)), "--timeout", "8",
                                          "--accept-new"])
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)  # nothing but the document
    validate(doc)
    assert doc["schema"] == SCHEMA_VERSION and doc["ok"] is False
    assert doc["counts"]["hosts"] == 2 and doc["counts"]["failed"] >= 1
    assert doc["counts"]["ready"] + doc["counts"]["failed"] == 2
    bad = doc["hosts"][1]
    assert (bad["host"], bad["line"]) == (f"127.0.0.1:{refused}", 7)
    connect = bad["checks"]["connect"]
    assert connect["status"] == "failed" and "hint:" not in connect["detail"]
    assert connect["hint"] and "ssh_port" in connect["hint"]
    assert (connect["line"], connect["field"]) == (8, "ssh_port")
    assert doc["hosts"][0]["checks"]["auth"]["status"] == "ok"


@pytest.mark.parametrize(("text", "line", "field"), [
    ('primary: p\nhosts:\n  - host: a\n    ncore: "2"\n', 4, "hosts[0].ncore"),
    ("primary: p\nhosts:\n  - host: a\n\tncore: 2\n", 4, None),
    (None, None, None),  # no such file
])
def test_an_inventory_error_is_a_json_document_on_stdout_exit_2(
        tmp_path: Path, text: str | None, line: int | None, field: str | None) -> None:
    inv = tmp_path / "hosts.yaml"
    if text is not None:
        inv.write_text(text)
    result = CliRunner().invoke(cli, ["check", str(inv), "--json"])
    assert result.exit_code == 2
    assert result.stderr == ""
    doc = json.loads(result.stdout)
    validate(doc)
    error = doc["error"]
    assert (doc["ok"], error["kind"], error["path"]) == (False, "inventory", str(inv))
    assert (error["line"], error["field"]) == (line, field)
    assert error["message"].startswith(str(inv)) and error["hint"]


def test_without_json_an_inventory_error_stays_text(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["check", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: {tmp_path}/none.yaml: no such file")
