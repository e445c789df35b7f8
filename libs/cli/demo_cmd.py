"""``syncgov demo``: one procurement-to-ERP story through a running stack, checked step by step.

Suppliers from procurement and the ERP become one golden record (the ERP's bank account wins, as
the policy says); a purchase order is published, changed, receives a version out of order (held,
then applied), the ERP tries to publish its own change order (refused and audited), acknowledges an
old version (not enough) and then the latest. Then the warehouse: procurement lowers the order, and a goods
receipt prepared from the superseded version, with its old quantity, is caught (reconciled against the current
version, findings raised as exceptions) and the order's receiving status is shown line by line. Then accounts
payable: an invoice for a line nothing was received on yet is blocked, and matched by itself once the goods land;
one over the price tolerance is blocked and released by a person; the matched one is paid by the ERP. Then operations:
the exceptions the story raised are listed, each routed to its owner team by policy; a person takes the price
variance of the released invoice and closes it, and the backlog and closure times are read back. Every step states
what should happen and what did; the exit code is 0 only when all of them held.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated

import grpc
import typer
from google.protobuf import timestamp_pb2
from google.type import decimal_pb2, money_pb2
from rich.table import Table

from libs.cli.client import EXIT_NO, EXIT_OK, EXIT_UNREACHABLE, stub
from libs.cli.components import COMPONENTS, DEFAULT_GRPC_PORT_BASE
from libs.cli.exceptions_cmd import (
    backlog_table,
    closure_table,
    duration_text,
    exception_type,
    exceptions_table,
    kind_name,
)
from libs.cli.exceptions_cmd import state_name as exception_state
from libs.cli.invoices_cmd import reason_name, state_name
from libs.cli.output import make_console
from libs.cli.receipts_cmd import finding_name, findings_table, status_table
from libs.cli.samples import purchase_order
from libs.runtime.telemetry import environment_context, traced_metadata
from libs.runtime.values import date_to_proto, money_from_proto, money_to_proto
from syncgov.common.v1 import types_pb2
from syncgov.controlplane.v1 import controlplane_pb2
from syncgov.controlplane.v1 import controlplane_service_pb2 as cp
from syncgov.controlplane.v1 import controlplane_service_pb2_grpc as cp_rpc
from syncgov.exception.v1 import exception_pb2
from syncgov.exception.v1 import exception_service_pb2 as exc
from syncgov.exception.v1 import exception_service_pb2_grpc as exc_rpc
from syncgov.invoice.v1 import invoice_pb2
from syncgov.invoice.v1 import invoice_service_pb2 as inv
from syncgov.invoice.v1 import invoice_service_pb2_grpc as inv_rpc
from syncgov.po.v1 import po_pb2
from syncgov.po.v1 import po_service_pb2 as po
from syncgov.po.v1 import po_service_pb2_grpc as po_rpc
from syncgov.receipt.v1 import receipt_pb2
from syncgov.receipt.v1 import receipt_service_pb2 as gr
from syncgov.receipt.v1 import receipt_service_pb2_grpc as gr_rpc
from syncgov.supplier.v1 import supplier_pb2
from syncgov.supplier.v1 import supplier_service_pb2 as sp
from syncgov.supplier.v1 import supplier_service_pb2_grpc as sp_rpc

console = make_console()


HELP = (
    "Drive one procurement-to-ERP story through a running stack and check every step.\n\n"
    "It needs the stack `syncgov up` starts: control-plane, supplier-normalization, po-publication, "
    "receipt-reconciliation, invoice-status and exception-router on consecutive ports from --grpc-port-base, in "
    "development mode "
    "(no SYNCGOV_CALLER_TOKENS, no mTLS), as the demo names each caller's system in x-syncgov-system. "
    "Every run uses fresh ids, so it can be repeated.\n\n"
    "The story: supplier records from procurement and the ERP become one golden record (the ERP's bank "
    "account wins); a VAT number with a wrong check digit is flagged; a purchase order is published, "
    "changed, and receives version 4 before 3 (held, then applied); the ERP's own change order is refused "
    "(PERMISSION_DENIED); the ERP acknowledges version 2 (not the latest), then version 4; the order's "
    "audit trail is read back. Then the warehouse: procurement lowers line 1 (version 5); wms-east, which serves "
    "DC-EAST only, is refused a receipt for DC-HAMBURG (PERMISSION_DENIED); the ERP posts a goods receipt prepared "
    "from version 4 with its old quantity, and it is caught: recorded, reconciled against version 5, findings "
    "superseded_version and over_receipt raised as exceptions; the order's receiving status is printed per line. "
    "Then the invoices: procurement adds line 2 (version 6) and submits an invoice for it before anything is "
    "received (blocked awaiting_receipt, an exception raised); the ERP receives the goods and invoice-status "
    "re-matches the invoice by itself (matched); an invoice for line 1 above the price tolerance is blocked "
    "(price_variance, with the limit that applied), wms-east may not release it (PERMISSION_DENIED), j.doe "
    "releases it through ops-console; procurement may not record a payment (PERMISSION_DENIED), the ERP pays the "
    "matched invoice (paid). Then operations: the exceptions the story raised (four refusals, the receipt's two "
    "findings, the two invoice blocks) are listed, each routed by policy to its owner team; the awaiting_receipt "
    "exception closed by itself when the goods arrived (cleared by invoice-status); j.doe acknowledges the "
    "price_variance exception of the released invoice through ops-console and resolves it (accepted, with a note); "
    "the backlog by team and type and the closure times are read back.\n\n"
    "Exit 0 when every step held, 1 when one did not, 3 when the stack cannot be reached."
)


def _as(system: str) -> tuple[tuple[str, str], ...]:
    """Acting as ``system``, in the trace the demo was started in (``TRACEPARENT``), if any."""
    return traced_metadata((("x-syncgov-system", system),), environment_context())


@dataclass
class Step:
    name: str
    expected: str
    actual: str
    ok: bool


def _record(system: str, local_id: str, name: str, vat: str, iban: str) -> supplier_pb2.SupplierRecord:
    return supplier_pb2.SupplierRecord(
        source_system=system,
        local_id=local_id,
        legal_name=name,
        tax_ids=[supplier_pb2.TaxIdentifier(scheme="vat", value=vat)],
        addresses=[
            types_pb2.PostalAddress(
                lines=["Hafenstrasse 1"], locality="Hamburg", postal_code="20457", country_code="DE"
            )
        ],
        bank_accounts=[supplier_pb2.BankAccount(iban=iban)],
    )


def _order(po_id: str, supplier_id: str, version: int, quantity: str, stretch_film: str = "") -> po_pb2.PurchaseOrder:
    approved = timestamp_pb2.Timestamp()
    approved.FromDatetime(datetime.now(UTC))
    return purchase_order(po_id, version, quantity, supplier_id, approved, "demo", stretch_film)


def _goods_receipt(
    receipt_id: str, po_id: str, version: int, site: str, quantity: str, po_line: int = 1
) -> gr.PostGoodsReceiptRequest:
    """A receipt of one line (line 1 unless told) as the warehouse prepared it: from ``version``, in each (EA)."""
    return gr.PostGoodsReceiptRequest(
        receipt=receipt_pb2.GoodsReceipt(
            receipt_id=receipt_id,
            po_id=po_id,
            po_version=version,
            site_id=site,
            kind=receipt_pb2.RECEIPT_KIND_RECEIPT,
            lines=[
                receipt_pb2.GoodsReceiptLine(
                    line_number=1,
                    po_line_number=po_line,
                    quantity=decimal_pb2.Decimal(value=quantity),
                    unit_of_measure="EA",
                )
            ],
        )
    )


def _port(base: int, name: str) -> int:
    return next(c for c in COMPONENTS if c.name == name).grpc_port(base)


VAT_RATE = Decimal("0.19")


def _invoice(
    invoice_id: str, supplier_id: str, po_id: str, po_line: int, quantity: str, price: str
) -> inv.SubmitInvoiceRequest:
    """A one-line supplier invoice in EUR with German VAT, its totals adding up."""
    net = (Decimal(quantity) * Decimal(price)).quantize(Decimal("0.01"))
    tax = (net * VAT_RATE).quantize(Decimal("0.01"))
    return inv.SubmitInvoiceRequest(
        invoice=invoice_pb2.Invoice(
            invoice_id=invoice_id,
            supplier_id=supplier_id,
            invoice_number=f"RE-{invoice_id}",
            invoice_date=date_to_proto(datetime.now(UTC).date()),
            currency_code="EUR",
            lines=[
                invoice_pb2.InvoiceLine(
                    line_number=1,
                    po_id=po_id,
                    po_line_number=po_line,
                    quantity=decimal_pb2.Decimal(value=quantity),
                    unit_price=money_to_proto(Decimal(price), "EUR"),
                    line_amount=money_to_proto(net, "EUR"),
                )
            ],
            net_amount=money_to_proto(net, "EUR"),
            tax_amount=money_to_proto(tax, "EUR"),
            total_amount=money_to_proto(net + tax, "EUR"),
        )
    )


def reasons_of(status: invoice_pb2.InvoiceStatus) -> list[str]:
    """Every blocking reason of the latest match, header and lines, once each, as policy names them."""
    names: list[str] = []
    for reason in [*status.match.block_reasons, *(r for line in status.line_results for r in line.block_reasons)]:
        if reason_name(reason) not in names:
            names.append(reason_name(reason))
    return names


def tolerance_of(status: invoice_pb2.InvoiceStatus) -> str:
    """The price limit that applied to the first line checked for price, as the service words it."""
    return next((line.price.limit.text for line in status.line_results if line.HasField("price")), "")


def _amount(money: money_pb2.Money) -> str:
    """12.5 EUR -> 12.50, 0.125 EUR -> 0.125: at least the cents."""
    value = money_from_proto(money)
    cents = value.quantize(Decimal("0.01"))
    return f"{cents if cents == value else value.normalize():f}"


def invoices_table(title: str, statuses: list[invoice_pb2.InvoiceStatus]) -> Table:
    """One row per invoice: what it bills, its state, why it is blocked, the exceptions raised, the release."""
    table = Table(title=title)
    for column in ("invoice", "bills", "state", "reasons", "price limit", "exception ids", "released by"):
        table.add_column(column, overflow="fold")
    for status in statuses:
        line = status.invoice.lines[0] if status.invoice.lines else None
        release = status.release if status.HasField("release") else None
        table.add_row(
            status.invoice.invoice_id,
            f"{line.po_id} line {line.po_line_number}: {line.quantity.value} x {_amount(line.unit_price)}"
            if line is not None
            else "",
            state_name(status.state),
            ", ".join(reasons_of(status)) or "-",
            tolerance_of(status) or "-",
            "\n".join(status.exception_ids) or "-",
            f"{release.released_by} via {release.released_through}: {release.reason}" if release is not None else "-",
        )
    return table


def _refusal(call: Callable[[], object]) -> str:
    try:
        call()
    except grpc.RpcError as error:
        return str(error.code().name)
    return "accepted"


def invoice_steps(
    host: str,
    base: int,
    run_id: str,
    po_id: str,
    supplier_id: str,
    check: Callable[[str, str, str, bool], None],
    tables: list[Table],
) -> None:
    """Accounts payable: an invoice ahead of its goods, re-matched when they land, one over the price tolerance
    released by a person, the matched one paid, and two systems refused what they do not own."""
    orders = stub(po_rpc.PurchaseOrderServiceStub, grpc.insecure_channel(f"{host}:{_port(base, 'po-publication')}"))
    receipts = stub(
        gr_rpc.ReceiptReconciliationServiceStub,
        grpc.insecure_channel(f"{host}:{_port(base, 'receipt-reconciliation')}"),
    )
    invoices = stub(inv_rpc.InvoiceStatusServiceStub, grpc.insecure_channel(f"{host}:{_port(base, 'invoice-status')}"))
    added = orders.ChangePurchaseOrder(
        po.ChangePurchaseOrderRequest(purchase_order=_order(po_id, supplier_id, 6, "12", stretch_film="5")),
        metadata=_as("procurement"),
    )
    check(
        "procurement adds line 2: 5 rolls of film at 40.00",
        "version 6",
        f"version {added.version}",
        added.version == 6,
    )

    early_id = f"INV-{run_id}-1"
    # invoice-status learns of the golden supplier from its event; a caller retries while it has not yet.
    request = _invoice(early_id, supplier_id, po_id, 2, "5", "40.00")
    for attempt in range(50):
        try:
            early = invoices.SubmitInvoice(request, metadata=_as("procurement")).status
            break
        except grpc.RpcError as error:
            retry = error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE)
            if not retry or attempt == 49:
                raise
            time.sleep(0.1)
    check(
        "an invoice for line 2, nothing received yet",
        "blocked: awaiting_receipt, an exception raised",
        f"{state_name(early.state)}: {', '.join(reasons_of(early)) or 'no reason'}; "
        f"exception {', '.join(early.exception_ids) or '(none reported)'}",
        early.state == invoice_pb2.INVOICE_STATE_BLOCKED
        and reasons_of(early) == ["awaiting_receipt"]
        and len(early.exception_ids) == 1,
    )

    posted = receipts.PostGoodsReceipt(
        _goods_receipt(f"GR-{run_id}-2", po_id, 6, "DC-HAMBURG", "5", po_line=2), metadata=_as("erp")
    )
    check(
        "the ERP receives the 5 rolls",
        "recorded against v6, no finding",
        f"recorded against v{posted.reconciled_po_version}, {len(posted.findings)} finding(s)",
        posted.reconciled_po_version == 6 and not posted.findings,
    )
    # Nobody calls invoice-status: it re-matches the invoice when the receipt's event reaches its consumer.
    deadline = time.monotonic() + 10
    rematched = early
    while time.monotonic() < deadline:
        rematched = invoices.GetInvoice(inv.GetInvoiceRequest(invoice_id=early_id), metadata=_as("procurement")).status
        if rematched.state != invoice_pb2.INVOICE_STATE_BLOCKED:
            break
        time.sleep(0.1)
    check(
        "the invoice, once the goods are in",
        "matched by itself within 10 s (no call)",
        f"{state_name(rematched.state)}: {', '.join(reasons_of(rematched)) or 'no reason'}",
        rematched.state == invoice_pb2.INVOICE_STATE_MATCHED and not reasons_of(rematched),
    )

    priced_id = f"INV-{run_id}-2"
    priced = invoices.SubmitInvoice(
        _invoice(priced_id, supplier_id, po_id, 1, "10", "13.00"), metadata=_as("procurement")
    ).status
    limit = tolerance_of(priced)
    check(
        "an invoice for line 1 at 13.00 (order: 12.50)",
        "blocked: price_variance, over the 2% limit",
        f"{state_name(priced.state)}: {', '.join(reasons_of(priced)) or 'no reason'}; limit {limit or '(none)'}; "
        f"exception {', '.join(priced.exception_ids) or '(none reported)'}",
        priced.state == invoice_pb2.INVOICE_STATE_BLOCKED
        and reasons_of(priced) == ["price_variance"]
        and limit.startswith("upper percent 2")
        and len(priced.exception_ids) == 1,
    )
    release = inv.ReleaseInvoiceRequest(
        invoice_id=priced_id, reason="price rise agreed with the supplier by phone", released_by="j.doe"
    )
    refused = _refusal(lambda: invoices.ReleaseInvoice(release, metadata=_as("wms-east")))
    check(
        "wms-east releases that invoice",
        "PERMISSION_DENIED (not a release writer)",
        refused,
        refused == "PERMISSION_DENIED",
    )
    released = invoices.ReleaseInvoice(release, metadata=_as("ops-console")).status
    person = released.release.released_by if released.HasField("release") else ""
    check(
        "j.doe releases it through ops-console",
        "released by j.doe via ops-console, price_variance overridden",
        f"{state_name(released.state)} by {person or '(no one recorded)'} via "
        f"{released.release.released_through or '(no system recorded)'}",
        released.state == invoice_pb2.INVOICE_STATE_RELEASED
        and person == "j.doe"
        and released.release.released_through == "ops-console"
        and [reason_name(r) for r in released.release.overridden] == ["price_variance"],
    )

    payment = inv.RecordInvoicePaymentRequest(invoice_id=early_id, payment_reference=f"PAY-{run_id}")
    refused = _refusal(lambda: invoices.RecordInvoicePayment(payment, metadata=_as("procurement")))
    check(
        "procurement records the payment",
        "PERMISSION_DENIED (the ERP owns payments)",
        refused,
        refused == "PERMISSION_DENIED",
    )
    paid = invoices.RecordInvoicePayment(payment, metadata=_as("erp")).status
    check(
        "the ERP pays the matched invoice",
        "paid",
        state_name(paid.state),
        paid.state == invoice_pb2.INVOICE_STATE_PAID,
    )
    tables.append(invoices_table(f"invoices of {po_id}", [paid, released]))


# What the story raises, by type, and the owner team the default policy routes it to: four refusals (the ERP's change
# order, wms-east's receipt and release, procurement's payment), the two findings of the receipt prepared from
# version 4, the invoice ahead of its goods and the one over the price tolerance.
RAISED = {
    "ownership_violation": ("integration-team", 4),
    "superseded_version": ("procurement-ops", 1),
    "over_receipt": ("procurement-ops", 1),
    "awaiting_receipt": ("accounts-payable", 1),
    "price_variance": ("accounts-payable", 1),
}


def _raised_by_run(
    router: exc_rpc.ExceptionRouterServiceStub, run_id: str, since: datetime
) -> list[exception_pb2.Exception]:
    """The exceptions about this run's objects (every id the story makes holds ``run_id``), oldest first."""
    request = exc.ListExceptionsRequest()
    request.raised_after.FromDatetime(since)
    found: list[exception_pb2.Exception] = []
    while True:
        request.page.page_size = 500
        answer = router.ListExceptions(request, metadata=_as("ops-console"))
        found += [e for e in answer.exceptions if run_id in e.object.object_key]
        if not answer.page_info.next_page_token:
            return found
        request.page.page_token = answer.page_info.next_page_token


def _by_type(exceptions: list[exception_pb2.Exception]) -> dict[str, tuple[str, int]]:
    """type -> (its owner teams, how many), as RAISED states what is expected."""
    grouped: dict[str, list[str]] = {}
    for exception in exceptions:
        grouped.setdefault(exception_type(exception.type), []).append(exception.owner_team or "(not routed)")
    return {name: (", ".join(sorted(set(teams))), len(teams)) for name, teams in grouped.items()}


def exception_steps(
    host: str,
    base: int,
    run_id: str,
    since: datetime,
    check: Callable[[str, str, str, bool], None],
    tables: list[Table],
) -> None:
    """Operations: every exception the story raised is routed to its owner team; j.doe takes the price variance of the
    invoice released earlier and closes it; the backlog and how long closing takes are read back."""
    router = stub(
        exc_rpc.ExceptionRouterServiceStub, grpc.insecure_channel(f"{host}:{_port(base, 'exception-router')}")
    )
    invoices = stub(inv_rpc.InvoiceStatusServiceStub, grpc.insecure_channel(f"{host}:{_port(base, 'invoice-status')}"))
    ops = _as("ops-console")
    # Raises travel on the exception stream; the router opens and routes each a moment later.
    deadline = time.monotonic() + 10
    raised = _raised_by_run(router, run_id, since)
    while _by_type(raised) != RAISED and time.monotonic() < deadline:
        time.sleep(0.1)
        raised = _raised_by_run(router, run_id, since)
    found = _by_type(raised)
    teams: dict[str, int] = {}
    for team, count in found.values():
        teams[team] = teams.get(team, 0) + count
    check(
        "the exceptions the story raised",
        f"{sum(n for _, n in RAISED.values())}, each routed by policy to its team",
        f"{len(raised)}: " + (", ".join(f"{team} {n}" for team, n in teams.items()) or "none"),
        found == RAISED,
    )

    # The invoice that came before its goods matched once the receipt landed: invoice-status cleared its exception.
    early = next((e for e in raised if exception_type(e.type) == "awaiting_receipt"), None)
    deadline = time.monotonic() + 10
    while early is not None and early.state != exception_pb2.EXCEPTION_STATE_RESOLVED and time.monotonic() < deadline:
        time.sleep(0.1)
        early = router.GetException(exc.GetExceptionRequest(exception_id=early.exception_id), metadata=ops).exception
    check(
        "the awaiting_receipt exception, once the goods arrived",
        "resolved by itself: cleared by invoice-status",
        "none raised"
        if early is None
        else f"{exception_state(early.state)}: {kind_name(early.resolution.kind)} by "
        f"{early.resolution.by or '(no one)'}",
        early is not None
        and early.state == exception_pb2.EXCEPTION_STATE_RESOLVED
        and early.resolution.kind == exception_pb2.RESOLUTION_KIND_CLEARED
        and early.resolution.by == "invoice-status",
    )

    priced_id = f"INV-{run_id}-2"
    reported = invoices.GetInvoice(inv.GetInvoiceRequest(invoice_id=priced_id), metadata=_as("procurement")).status
    raise_id = reported.exception_ids[0] if reported.exception_ids else ""
    case = router.GetException(exc.GetExceptionRequest(exception_id=raise_id), metadata=ops).exception
    listed = next((e for e in raised if exception_type(e.type) == "price_variance"), None)
    check(
        "the exception id invoice-status gave",
        "the open price_variance exception of accounts-payable",
        f"{case.exception_id}: {exception_state(case.state)} {exception_type(case.type)} of {case.owner_team}",
        listed is not None
        and case.exception_id == listed.exception_id
        and case.state == exception_pb2.EXCEPTION_STATE_OPEN
        and case.owner_team == "accounts-payable",
    )

    taken = router.AcknowledgeException(
        exc.AcknowledgeExceptionRequest(exception_id=case.exception_id, acknowledged_by="j.doe"), metadata=ops
    ).exception
    check(
        "j.doe takes it through ops-console",
        "acknowledged by j.doe via ops-console",
        f"{exception_state(taken.state)} by {taken.acknowledgment.by or '(no one recorded)'} via "
        f"{taken.acknowledgment.through or '(no system recorded)'}",
        taken.state == exception_pb2.EXCEPTION_STATE_ACKNOWLEDGED
        and (taken.acknowledgment.by, taken.acknowledgment.through) == ("j.doe", "ops-console"),
    )

    before = router.SummarizeExceptions(exc.SummarizeExceptionsRequest(), metadata=ops)
    closed_before = (
        before.closure_by_team["accounts-payable"].closed if "accounts-payable" in before.closure_by_team else 0
    )
    note = "price rise agreed with the supplier by phone; invoice released"
    closed = router.ResolveException(
        exc.ResolveExceptionRequest(
            exception_id=case.exception_id,
            kind=exception_pb2.RESOLUTION_KIND_ACCEPTED,
            resolution=note,
            resolved_by="j.doe",
        ),
        metadata=ops,
    ).exception
    kept = "the note" if closed.resolution.note == note else repr(closed.resolution.note or "no note")
    check(
        "j.doe resolves it with a note",
        "resolved: accepted by j.doe, with the note",
        f"{exception_state(closed.state)}: {kind_name(closed.resolution.kind)} by "
        f"{closed.resolution.by or '(no one recorded)'}, with {kept}",
        closed.state == exception_pb2.EXCEPTION_STATE_RESOLVED
        and closed.resolution.kind == exception_pb2.RESOLUTION_KIND_ACCEPTED
        and (closed.resolution.by, closed.resolution.note) == ("j.doe", note),
    )

    # The summary reads the router's book, which follows the stream: the closure is counted a moment later.
    deadline = time.monotonic() + 10
    summary = router.SummarizeExceptions(exc.SummarizeExceptionsRequest(), metadata=ops)
    while summary.closure_by_team["accounts-payable"].closed <= closed_before and time.monotonic() < deadline:
        time.sleep(0.1)
        summary = router.SummarizeExceptions(exc.SummarizeExceptionsRequest(), metadata=ops)
    payable = summary.closure_by_team["accounts-payable"]
    check(
        "the summary of accounts-payable",
        "one more closure counted, with its time",
        f"{payable.closed} closure(s) (before: {closed_before}), p50 {duration_text(payable.p50_seconds)}",
        payable.closed > closed_before and payable.p50_seconds > 0,
    )
    now = datetime.now(UTC)
    tables.append(exceptions_table(f"exceptions raised by demo {run_id}", _raised_by_run(router, run_id, since), now))
    tables.append(backlog_table(summary, "", now))
    tables.append(closure_table(summary, ""))


def run_scenario(host: str, base: int, run_id: str, shown: list[Table] | None = None) -> list[Step]:
    """Run the story; every step is checked and returned, the tables worth reading go to ``shown``."""
    steps: list[Step] = []
    tables = shown if shown is not None else []
    # Exceptions this run raises are first raised after this (a minute's leeway for the servers' clocks).
    started = datetime.now(UTC) - timedelta(minutes=1)

    def check(name: str, expected: str, actual: str, ok: bool) -> None:
        steps.append(Step(name, expected, actual, ok))

    suppliers = stub(sp_rpc.SupplierNormalizationServiceStub, grpc.insecure_channel(f"{host}:{base + 1}"))
    orders = stub(po_rpc.PurchaseOrderServiceStub, grpc.insecure_channel(f"{host}:{base + 2}"))
    control = stub(cp_rpc.ControlPlaneServiceStub, grpc.insecure_channel(f"{host}:{base}"))
    receipts = stub(
        gr_rpc.ReceiptReconciliationServiceStub,
        grpc.insecure_channel(f"{host}:{_port(base, 'receipt-reconciliation')}"),
    )

    vat = "DE136695976"
    procurement = suppliers.SubmitSupplierRecord(
        sp.SubmitSupplierRecordRequest(
            record=_record("procurement", f"P-{run_id}", "ACME Industrial Supply GmbH", vat, "DE89370400440532013000")
        ),
        metadata=_as("procurement"),
    )
    erp = suppliers.SubmitSupplierRecord(
        sp.SubmitSupplierRecordRequest(
            record=_record(
                "erp", f"E-{run_id}", "Acme Industrial Supply G.m.b.H.", "de 136 695 976", "DE02120300000000202051"
            )
        ),
        metadata=_as("erp"),
    )
    golden = erp.supplier
    check(
        "supplier records from two systems",
        "one golden record",
        "one" if golden.supplier_id == procurement.supplier.supplier_id else "two",
        golden.supplier_id == procurement.supplier.supplier_id,
    )
    bank = golden.bank_accounts[0].iban if golden.bank_accounts else ""
    check(
        "bank account of the golden record", "the ERP's (it owns bank accounts)", bank, bank == "DE02120300000000202051"
    )
    broken = suppliers.SubmitSupplierRecord(
        sp.SubmitSupplierRecordRequest(
            record=_record("procurement", f"P-{run_id}-x", "Broken Digits AG", "DE136695977", "DE89370400440532013000")
        ),
        metadata=_as("procurement"),
    )
    check(
        "a VAT number with a wrong check digit",
        "a finding, the record kept",
        f"{len(broken.findings)} finding(s)",
        any("check digit" in f.problem for f in broken.findings),
    )

    po_id = f"PO-DEMO-{run_id}"
    # po-publication learns of the new golden supplier from its event, a moment later: a caller retries.
    request = po.PublishPurchaseOrderRequest(purchase_order=_order(po_id, golden.supplier_id, 1, "10"))
    for attempt in range(50):
        try:
            first = orders.PublishPurchaseOrder(request, metadata=_as("procurement"))
            break
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.INVALID_ARGUMENT or attempt == 49:
                raise
            time.sleep(0.1)
    check("procurement publishes the order", "version 1 published", f"version {first.version}", first.version == 1)
    second = orders.ChangePurchaseOrder(
        po.ChangePurchaseOrderRequest(purchase_order=_order(po_id, golden.supplier_id, 2, "12")),
        metadata=_as("procurement"),
    )
    check(
        "a change order",
        "version 2, quantity of line 1 changed",
        f"version {second.version}, lines {list(second.changes.quantity_changed_line_numbers)}",
        list(second.changes.quantity_changed_line_numbers) == [1],
    )
    early = orders.ChangePurchaseOrder(
        po.ChangePurchaseOrderRequest(purchase_order=_order(po_id, golden.supplier_id, 4, "20")),
        metadata=_as("procurement"),
    )
    check("version 4 before version 3", "held", "held" if early.held else "not held", early.held)
    orders.ChangePurchaseOrder(
        po.ChangePurchaseOrderRequest(purchase_order=_order(po_id, golden.supplier_id, 3, "15")),
        metadata=_as("procurement"),
    )
    latest = orders.GetPurchaseOrder(po.GetPurchaseOrderRequest(po_id=po_id), metadata=_as("erp")).latest_version
    check("version 3 arrives", "3 applied, then the held 4", f"latest version {latest}", latest == 4)

    try:
        orders.ChangePurchaseOrder(
            po.ChangePurchaseOrderRequest(purchase_order=_order(po_id, golden.supplier_id, 5, "15")),
            metadata=_as("erp"),
        )
        refused = "accepted"
    except grpc.RpcError as error:
        refused = error.code().name
    check(
        "the ERP changes the order", "PERMISSION_DENIED (procurement owns it)", refused, refused == "PERMISSION_DENIED"
    )

    old = orders.AcknowledgePurchaseOrder(
        po.AcknowledgePurchaseOrderRequest(po_id=po_id, version=2, erp_document_number="4500000001"),
        metadata=_as("erp"),
    )
    check(
        "the ERP acknowledges version 2",
        "recorded, not the latest",
        "latest" if old.latest_version_acknowledged else "not the latest",
        not old.latest_version_acknowledged,
    )
    new = orders.AcknowledgePurchaseOrder(
        po.AcknowledgePurchaseOrderRequest(po_id=po_id, version=4, erp_document_number="4500000001"),
        metadata=_as("erp"),
    )
    check(
        "the ERP acknowledges version 4",
        "the ERP holds the latest",
        "latest" if new.latest_version_acknowledged else "not the latest",
        new.latest_version_acknowledged,
    )

    deadline = time.monotonic() + 10
    entries: list[controlplane_pb2.AuditEntry] = []
    while time.monotonic() < deadline:
        entries = list(
            control.QueryAuditTrail(
                cp.QueryAuditTrailRequest(object_type="purchase_order", object_key=po_id), metadata=_as("ops-console")
            ).entries
        )
        if len(entries) >= 8:
            break
        time.sleep(0.2)
    actions = [f"{e.actor}:{e.action}" for e in entries]
    check(
        "the audit trail of the order",
        "5 writes (4 versions, 1 held arrival), 1 refusal, 2 acknowledgments",
        ", ".join(actions),
        actions.count("procurement:write") == 5 and "erp:refusal" in actions and actions.count("erp:write") == 2,
    )

    # The warehouse: Hamburg prepared its receiving for version 4 (20 EA); procurement has lowered the order since.
    lowered = orders.ChangePurchaseOrder(
        po.ChangePurchaseOrderRequest(purchase_order=_order(po_id, golden.supplier_id, 5, "12")),
        metadata=_as("procurement"),
    )
    check(
        "procurement lowers line 1 to 12",
        "version 5, quantity of line 1 changed",
        f"version {lowered.version}, lines {list(lowered.changes.quantity_changed_line_numbers)}",
        lowered.version == 5 and list(lowered.changes.quantity_changed_line_numbers) == [1],
    )
    try:
        receipts.PostGoodsReceipt(
            _goods_receipt(f"WMS-{run_id}", po_id, 5, "DC-HAMBURG", "12"), metadata=_as("wms-east")
        )
        elsewhere = "accepted"
    except grpc.RpcError as error:
        elsewhere = error.code().name
    check(
        "wms-east posts a receipt for DC-HAMBURG",
        "PERMISSION_DENIED (it serves DC-EAST only)",
        elsewhere,
        elsewhere == "PERMISSION_DENIED",
    )
    receipt_id = f"GR-{run_id}"
    posted = receipts.PostGoodsReceipt(_goods_receipt(receipt_id, po_id, 4, "DC-HAMBURG", "20"), metadata=_as("erp"))
    found = [(finding_name(f.type), f.po_line_number) for f in posted.findings]
    check(
        "the ERP receives 20, prepared from v4",
        "recorded against v5; superseded_version, over_receipt, 2 exception(s) raised",
        f"recorded against v{posted.reconciled_po_version}; {', '.join(name for name, _ in found) or 'no finding'}, "
        f"{sum(1 for f in posted.findings if f.exception_id)} exception(s) raised",
        posted.reconciled_po_version == 5
        and found == [("superseded_version", 0), ("over_receipt", 1)]
        and all(posted.exception_ids)
        and list(posted.exception_ids) == [f.exception_id for f in posted.findings],
    )
    tables.append(findings_table(f"findings of erp/{receipt_id} (each raised as an exception)", posted.findings))
    receiving = receipts.GetPurchaseOrderReceiptStatus(
        gr.GetPurchaseOrderReceiptStatusRequest(po_id=po_id), metadata=_as("procurement")
    )
    line = receiving.lines[0] if receiving.lines else None
    figures = (
        f"version {receiving.po_version}: ordered {line.ordered_quantity.value}, received "
        f"{line.received_quantity.value}, open {line.open_quantity.value} {line.unit_of_measure}"
        if line is not None
        else f"version {receiving.po_version}, no lines"
    )
    check(
        "receiving status of the order",
        "version 5: ordered 12, received 20, open -8 EA; 1 document",
        f"{figures}; {receiving.documents} document(s)",
        line is not None
        and receiving.po_version == 5
        and (line.ordered_quantity.value, line.received_quantity.value, line.open_quantity.value) == ("12", "20", "-8")
        and receiving.documents == 1,
    )
    tables.append(status_table(po_id, receiving))
    invoice_steps(host, base, run_id, po_id, golden.supplier_id, check, tables)
    exception_steps(host, base, run_id, started, check, tables)
    return steps


def demo(
    grpc_port_base: Annotated[
        int, typer.Option(help="control-plane's port; the others follow.")
    ] = DEFAULT_GRPC_PORT_BASE,
    host: Annotated[str, typer.Option(help="Where the stack listens.")] = "127.0.0.1",
) -> None:
    """Drive one procurement-to-ERP story through a running stack and check every step."""
    run_id = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    shown: list[Table] = []
    try:
        steps = run_scenario(host, grpc_port_base, run_id, shown)
    except grpc.RpcError as error:
        console.print(f"[red]the stack did not answer as expected: {error.code().name}: {error.details()}[/red]")
        raise typer.Exit(EXIT_UNREACHABLE if error.code() == grpc.StatusCode.UNAVAILABLE else EXIT_NO) from None
    table = Table(title=f"syncgov demo {run_id}")
    for column in ("", "step", "expected", "what happened"):
        table.add_column(column, overflow="fold")
    for step in steps:
        table.add_row("[green]ok[/green]" if step.ok else "[red]FAIL[/red]", step.name, step.expected, step.actual)
    console.print(table)
    for exhibit in shown:
        console.print(exhibit)
    failed = [s for s in steps if not s.ok]
    console.print(f"{len(steps) - len(failed)} of {len(steps)} steps as expected")
    raise typer.Exit(EXIT_NO if failed else EXIT_OK)
