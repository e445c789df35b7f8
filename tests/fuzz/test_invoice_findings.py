"""What the hostile-input suite found in invoice-status, kept as regression tests: each smallest reproducer, replayed
through the harness's invariants against the fuzzed service (found 2026-11-27, mended the same day: a refused
payment no longer leaves an approval behind, a response carries an invoice's line results once, and a page of the
blocked list is bounded by bytes). The fuzz itself (test_hostile_input.py) draws these shapes too.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from services.invoice_status.domain import MAX_LINES
from tests.fuzz import invoices
from tests.fuzz.harness import FuzzLog, Target
from tests.fuzz.targets import all_rpcs

pytestmark = [pytest.mark.integration, pytest.mark.fuzz, pytest.mark.timeout(120)]


def _rpc(name: str) -> Any:
    return next(rpc for rpc in all_rpcs() if rpc.name == f"invoice-status/{name}")


async def _fresh_approvable_invoice(target: Target) -> str:
    """A new invoice of 1 EA on the payable order, released when the match blocked it: matched or released, which
    a payment approves first."""
    from syncgov.invoice.v1 import invoice_pb2
    from syncgov.invoice.v1 import invoice_service_pb2 as pb

    invoice_id = invoices._fresh_id("INV-RP")
    request = pb.SubmitInvoiceRequest(
        invoice=invoices.invoice(invoice_id, f"RP-{invoice_id}", (invoices.PAYABLE_PO, 1, "1", "12.50"))
    )
    answer: Any = await target.call(invoices.SERVICE + "SubmitInvoice", request, "procurement")
    if answer.status.state == invoice_pb2.INVOICE_STATE_BLOCKED:
        release = pb.ReleaseInvoiceRequest(invoice_id=invoice_id, reason="seen", released_by="j.doe")
        await target.call(invoices.SERVICE + "ReleaseInvoice", release, "ops-console")
    return invoice_id


@pytest.mark.parametrize("target", ["invoice-status"], indirect=True)
@pytest.mark.parametrize("reference", [""])
async def test_a_refused_payment_approves_nothing(target: Target, reference: str) -> None:
    from syncgov.invoice.v1 import invoice_service_pb2 as pb

    invoice_id = await _fresh_approvable_invoice(target)
    log = FuzzLog(shared=False)
    request = pb.RecordInvoicePaymentRequest(invoice_id=invoice_id, payment_reference=reference)
    code = await target.exercise(_rpc("RecordInvoicePayment"), request, "erp", log)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert not log.failures, log.report()


def _large(invoice_id: str, quantity: str = "1234.123457", prices: tuple[str, str] = ("12.499999999", "3.000000001")):
    """MAX_LINES lines (the bound) on PO-IN-1's two lines, every figure within its bound, totals that add up."""
    from syncgov.invoice.v1 import invoice_service_pb2 as pb

    lines = [(invoices.OPEN_PO, 1 + n % 2, quantity, prices[n % 2]) for n in range(MAX_LINES)]
    return pb.SubmitInvoiceRequest(invoice=invoices.invoice(invoice_id, f"RL-{invoice_id}", *lines))


@pytest.mark.parametrize("target", ["invoice-status"], indirect=True)
async def test_an_invoice_at_the_line_bound_is_answered(target: Target) -> None:
    from syncgov.invoice.v1 import invoice_service_pb2 as pb

    invoice_id = invoices._fresh_id("INV-RL")
    log = FuzzLog(shared=False)
    code = await target.exercise(_rpc("SubmitInvoice"), _large(invoice_id), "procurement", log)
    assert not log.failures, log.report()
    assert code == grpc.StatusCode.OK
    read = pb.GetInvoiceRequest(invoice_id=invoice_id)
    assert await target.exercise(_rpc("GetInvoice"), read, "procurement", log) == grpc.StatusCode.OK


@pytest.mark.parametrize("target", ["invoice-status"], indirect=True)
async def test_the_blocked_list_pages_through_large_invoices(target: Target) -> None:
    from syncgov.common.v1 import types_pb2
    from syncgov.invoice.v1 import invoice_service_pb2 as pb

    for _ in range(2):  # 0.001 each at the order's prices: blocked (quantity), answered OK
        await target.call(
            invoices.SERVICE + "SubmitInvoice",
            _large(invoices._fresh_id("INV-RB"), "0.001", ("12.50", "3.00")),
            "procurement",
        )
    log = FuzzLog(shared=False)
    token, pages = "", 0
    while True:
        listing = pb.ListBlockedInvoicesRequest(page=types_pb2.PageRequest(page_token=token))
        code = await target.exercise(_rpc("ListBlockedInvoices"), listing, "procurement", log)
        assert code == grpc.StatusCode.OK
        answer: Any = await target.call(invoices.SERVICE + "ListBlockedInvoices", listing, "procurement")
        token, pages = answer.page_info.next_page_token, pages + 1
        if not token or pages > 100:
            break
    assert not log.failures, log.report()
