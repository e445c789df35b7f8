"""What the CLI prints when piped, and what its exit codes and --help say; no servers."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from google.type import decimal_pb2
from rich.console import Console
from typer.testing import CliRunner

from libs.cli.main import (
    EXIT_FAILED,
    EXIT_OK,
    NOT_BUILT,
    StatusRow,
    app,
    stack_table,
    status_exit_code,
    status_table,
)
from libs.cli.receipts_cmd import status_table as receipt_status_table
from syncgov.receipt.v1 import receipt_pb2, receipt_service_pb2

ROOT = Path(__file__).resolve().parents[3]
LONG_LOG = "/var/lib/a-rather-long-data-directory/for/the/local/stack/logs/supplier-normalization.log"
LONG_URL = "nats://nats-0.nats-headless.syncgov-integration.svc.cluster.local:4222"


def _piped(code: str) -> str:
    """Run ``code`` in a child whose stdout is a pipe, as in ``syncgov up | tee up.log``."""
    env = {"PATH": "/usr/bin:/bin", "TERM": "xterm-256color"}  # no COLUMNS: the pipe alone decides
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        env=env,
        check=True,
        timeout=60,
        text=True,
    )
    return done.stdout


def test_the_stack_table_prints_whole_addresses_and_log_paths_when_piped():
    out = _piped(
        f"""
        from libs.cli.main import console, stack_table
        console.print(stack_table([
            ("nats-server", {LONG_URL!r}, "external", ""),
            ("supplier-normalization", "127.0.0.1:50051", "SERVING", {LONG_LOG!r}),
            ("po-publication", "127.0.0.1:50052", "EXITED(1)", "/tmp/po-publication.log"),
        ]))
        """
    )
    assert LONG_URL in out
    assert LONG_LOG in out
    assert "127.0.0.1:50051" in out
    assert "…" not in out
    assert "\x1b[" not in out, "no colour codes in a pipe"


def test_status_rows_whole_when_piped():
    out = _piped(
        """
        from libs.cli.main import console, status_table
        console.print(status_table([
            ("control-plane", "control-plane.syncgov-production.svc.cluster.local:50050", "SERVING",
             ["grpc.health.v1.Health", "syncgov.controlplane.v1.ControlPlaneService"]),
        ]))
        """
    )
    assert "control-plane.syncgov-production.svc.cluster.local:50050" in out
    assert "syncgov.controlplane.v1.ControlPlaneService" in out
    assert "…" not in out


def test_status_fails_when_any_built_component_is_down():
    serving: StatusRow = (
        "control-plane",
        "127.0.0.1:50050",
        "SERVING",
        ["syncgov.controlplane.v1.ControlPlaneService"],
    )
    not_built: StatusRow = ("invoice-status", "127.0.0.1:50054", NOT_BUILT, [])
    down: StatusRow = ("po-publication", "127.0.0.1:50052", "UNAVAILABLE", [])
    draining: StatusRow = ("po-publication", "127.0.0.1:50052", "NOT_SERVING", [])
    assert status_exit_code([serving, not_built]) == EXIT_OK
    assert status_exit_code([serving, down, not_built]) == EXIT_FAILED
    assert status_exit_code([serving, draining]) == EXIT_FAILED
    assert status_exit_code([]) == EXIT_FAILED


def test_tables_fold_rather_than_cut_on_a_narrow_terminal():
    narrow = Console(width=40, record=True, file=io.StringIO())
    narrow.print(stack_table([("supplier-normalization", "127.0.0.1:50051", "SERVING", LONG_LOG)]))
    narrow.print(status_table([("supplier-normalization", "127.0.0.1:50051", "SERVING", [])]))
    text = narrow.export_text()
    assert "…" not in text, "a narrow terminal folds cells onto more lines instead"


def test_demo_help_describes_the_command_it_is():
    result = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert re.search(r"Usage: \S+ demo \[OPTIONS\] *\n", result.stdout), result.stdout
    assert "COMMAND" not in result.stdout, "demo has no subcommands"
    assert "--grpc-port-base" in result.stdout
    assert "PERMISSION_DENIED" in result.stdout
    assert "Exit 0 when every step held" in result.stdout
    assert "receipt-reconciliation" in result.stdout
    assert "superseded_version" in result.stdout


def test_connection_options_are_on_every_command_that_calls_a_service():
    runner = CliRunner()
    for command in (["diff"], ["apply"], ["get"], ["history"], ["rollback"], ["explain"]):
        shown = runner.invoke(app, ["policy", *command, "--help"], env={"COLUMNS": "200"}).stdout
        for option in ("--address", "--system", "--token", "--cert", "--key", "--ca", "SYNCGOV_CONTROL_PLANE_ADDR"):
            assert option in shown, (command, option)
    audit = runner.invoke(app, ["audit", "show", "--help"], env={"COLUMNS": "200"}).stdout
    assert "--token" in audit
    assert "--ca" in audit
    suppliers = runner.invoke(app, ["suppliers", "import", "--help"], env={"COLUMNS": "200"}).stdout
    assert "SYNCGOV_SUPPLIER_ADDR" in suppliers
    assert "--cert" in suppliers
    for receipts in ("status", "findings"):
        shown = runner.invoke(app, ["receipts", receipts, "--help"], env={"COLUMNS": "200"}).stdout
        for option in ("--address", "--system", "--token", "--cert", "--key", "--ca", "SYNCGOV_RECEIPT_ADDR"):
            assert option in shown, (receipts, option)
        assert "127.0.0.1:50053" in shown, "receipt-reconciliation's default port"


def test_receipt_status_prints_decimals_as_given_and_a_line_the_order_lacks_without_figures():
    answer = receipt_service_pb2.GetPurchaseOrderReceiptStatusResponse(
        po_version=3,
        cancelled=True,
        documents=4,
        lines=[
            receipt_pb2.LineReceiptStatus(
                po_line_number=1,
                ordered_quantity=decimal_pb2.Decimal(value="0.1"),
                received_quantity=decimal_pb2.Decimal(value="0.30"),
                returned_quantity=decimal_pb2.Decimal(value="0.000001"),
                open_quantity=decimal_pb2.Decimal(value="-0.20"),
                unit_of_measure="KGM",
                fully_received=True,
            ),
            receipt_pb2.LineReceiptStatus(
                po_line_number=7, received_quantity=decimal_pb2.Decimal(value="12"), unit_of_measure="EA"
            ),
        ],
    )
    wide = Console(width=200, record=True, file=io.StringIO())
    wide.print(receipt_status_table("PO-9", answer))
    text = wide.export_text()
    assert "receipts of PO-9 at version 3: cancelled, fully received no, 4 document(s)" in text
    assert "ordered (v3)" in text
    rows = {cells[0]: cells for cells in _rows(text)}
    assert rows["1"] == ["1", "0.1", "0.30", "0.000001", "0", "-0.20", "KGM", "yes"]
    assert rows["7"] == ["7", "-", "12", "0", "0", "-", "EA", "no"]


def _rows(text: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in text.splitlines()
        if line.startswith("│")
    ]
