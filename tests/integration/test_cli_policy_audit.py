"""The syncgov CLI as an operator and an auditor use it, against a running control plane."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from libs.cli.main import app
from syncgov.po.v1 import po_service_pb2
from tests.integration.helpers import cli, eventually, sample_order
from tests.integration.test_control_plane import DEFAULT, PROCUREMENT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_validate_lists_problems_with_paths_and_exit_codes(tmp_path):
    ok = runner.invoke(app, ["policy", "validate", *map(str, sorted((ROOT / "deploy" / "policy").glob("*.yaml")))])
    assert ok.exit_code == 0
    assert ok.stdout.count(": valid") == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        DEFAULT.replace(
            "writers: [procurement]\n    sync: {from: procurement, to: [erp]}\n    conflict: "
            "system_of_record_wins\n  purchase_order_acknowledgment",
            "writers: [procurement, sap]\n    sync: {from: procurement, to: [erp]}\n    "
            "conflict: system_of_record_wins\n  purchase_order_acknowledgment",
        )
    )
    failed = runner.invoke(app, ["policy", "validate", str(bad)], env={"COLUMNS": "200"})
    assert failed.exit_code == 1
    assert "ownership.purchase_order.writers[1]" in failed.stdout
    assert "unknown system 'sap'" in failed.stdout


async def test_apply_history_explain_and_a_stale_apply(governed_stack, tmp_path):
    control, _, _, _ = governed_stack
    address = ["--address", control.address]
    policy = tmp_path / "policy.yaml"
    policy.write_text(DEFAULT)
    applied = await cli("policy", "apply", str(policy), "--comment", "initial", *address)
    assert applied.exit_code == 0, applied.stdout
    assert "applied revision 1" in applied.stdout
    history = await cli("policy", "history", *address)
    assert "initial" in history.stdout
    assert "ops-console" in history.stdout
    explained = await cli("policy", "explain", "purchase_order", "lines[].unit_price", *address)
    assert "system of record procurement" in explained.stdout
    assert "ownership.purchase_order" in explained.stdout
    policy.write_text(DEFAULT.replace("out_of_order_hold: 5m", "out_of_order_hold: 9m"))
    stale = await cli("policy", "apply", str(policy), "--expected-revision", "0", *address)
    assert stale.exit_code == 1
    assert "FAILED_PRECONDITION" in stale.stdout
    assert "current revision is 1" in stale.stdout
    dry = await cli("policy", "apply", str(policy), "--dry-run", *address)
    assert dry.exit_code == 0
    assert "+  out_of_order_hold: 9m" in dry.stdout
    refused = await cli("policy", "apply", str(policy), "--system", "erp", *address)
    assert refused.exit_code == 1
    assert "PERMISSION_DENIED" in refused.stdout


async def test_unreachable_control_plane_is_exit_code_3(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(DEFAULT)
    result = await cli("policy", "diff", str(policy), "--address", "127.0.0.1:1")
    assert result.exit_code == 3


async def test_audit_verify_passes_on_the_real_chain_and_pinpoints_an_altered_exported_entry(
    governed_stack, nats_server, tmp_path
):
    control, _, _, po_stub = governed_stack
    namespace = ["--nats-url", nats_server.url, "--namespace", control.runtime.namespace.root]
    for n in range(4):
        await po_stub.PublishPurchaseOrder(
            po_service_pb2.PublishPurchaseOrderRequest(purchase_order=sample_order(f"PO-A{n}")), metadata=PROCUREMENT
        )

    async def chained() -> bool:
        # four PO writes, plus the supplier record the fixture seeded: five writes, five entries
        result = await cli("audit", "verify", *namespace)
        return result.exit_code == 0 and "5 entries verified" in result.stdout

    await eventually(chained)
    tail = await cli("audit", "tail", "--limit", "2", *namespace)
    assert "PO-A3" in tail.stdout
    export = tmp_path / "audit.jsonl"
    exported = await cli("audit", "export", "--out", str(export), *namespace)
    assert exported.exit_code == 0
    assert (await cli("audit", "verify", "--file", str(export))).exit_code == 0

    lines = export.read_text().splitlines()
    altered = json.loads(lines[2])
    altered["actor"] = "erp"  # someone rewrites who did it
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join([*lines[:2], json.dumps(altered), *lines[3:]]) + "\n")
    result = await cli("audit", "verify", "--file", str(tampered))
    assert result.exit_code == 1
    assert f"broken at sequence {altered['sequence']}" in result.stdout
    assert "altered" in result.stdout

    removed = tmp_path / "removed.jsonl"
    removed.write_text("\n".join([*lines[:1], *lines[2:]]) + "\n")
    result = await cli("audit", "verify", "--file", str(removed))
    assert result.exit_code == 1
    assert f"broken at sequence {json.loads(lines[2])['sequence']}" in result.stdout
    assert "removed" in result.stdout
