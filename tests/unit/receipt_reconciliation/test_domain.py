"""Receiving rules as pure functions: given the documents posted so far and the order, when a document is
posted, then the event (figures, findings) or the refusal."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from libs.runtime.decider import Recorded, Refusal, RefusalKind
from services.receipt_reconciliation import domain
from services.receipt_reconciliation.domain import Kind, OrderLine, OrderView, ReceiptLine

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
CONVERSIONS = {("CS", "EA"): Decimal(12), ("EA", "CS"): None, ("GRM", "KGM"): Decimal("0.001")}


def factor(source: str, target: str) -> Decimal | None:
    if source == target:
        return Decimal(1)
    return CONVERSIONS.get((source, target))


RULES = domain.Rules(
    over_receipt_percent=lambda unit: Decimal(5) if unit != "BU-STRICT" else Decimal(0), unit_factor=factor
)


def order(
    version: int = 1, *, cancelled: bool = False, unit: str = "", quantities: dict[str, str] | None = None
) -> OrderView:
    lines = quantities or {"1": "100", "2": "10"}
    return OrderView(
        "PO-1",
        version,
        cancelled,
        unit,
        {int(n): OrderLine(Decimal(q), "EA") for n, q in lines.items()},
        sequence=version,
    )


def receipt(
    receipt_id: str = "GR-1", *lines: ReceiptLine, kind: Kind = Kind.RECEIPT, version: int = 1, reverses: str = ""
) -> domain.Receipt:
    return domain.Receipt(
        receipt_id,
        "wms-east",
        "PO-1",
        version,
        "DC-EAST",
        kind,
        NOW,
        lines or (ReceiptLine(1, 1, Decimal(40), "EA"),),
        reverses,
    )


def line(number: int, po_line: int, quantity: str, unit: str = "EA", **extra: object) -> ReceiptLine:
    return ReceiptLine(number, po_line, Decimal(quantity), unit, **extra)  # type: ignore[arg-type]


def post(
    state: domain.ReceivingState,
    document: domain.Receipt,
    view: OrderView | None,
    fingerprint: str = "",
    rules: domain.Rules = RULES,
    against: str | None = None,
):
    command = domain.PostReceipt(
        document, f"doc:{document.receipt_id}", fingerprint or document.receipt_id + str(document.lines), "key", against
    )
    return domain.decide(command, state, view, rules)


def fold(state: domain.ReceivingState, event: domain.Reconciled, sequence: int = 1) -> domain.ReceivingState:
    return domain.evolve(state, Recorded(event, sequence, "id", 0, event.idempotency_key, "wms-east"))


def posted(
    state: domain.ReceivingState, document: domain.Receipt, view: OrderView | None, sequence: int = 1
) -> tuple[domain.ReceivingState, domain.Reconciled]:
    event = post(state, document, view)
    assert isinstance(event, domain.Reconciled), event
    return fold(state, event, sequence), event


def figures(event: domain.Reconciled, po_line: int) -> domain.LineStatus:
    return next(s for s in event.lines if s.po_line_number == po_line)


def types(event: domain.Reconciled) -> list[tuple[str, int]]:
    return [(f.type, f.po_line_number) for f in event.findings]


# --- validation ---------------------------------------------------------------------------------------


def test_a_valid_receipt_has_no_problems():
    assert domain.validate_receipt(receipt(), NOW) == []


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (replace(receipt(), receipt_id=" "), "receipt.receipt_id"),
        (replace(receipt(), po_id=""), "receipt.po_id"),
        (replace(receipt(), site_id=""), "receipt.site_id"),
        (replace(receipt(), po_version=0), "receipt.po_version"),
        (replace(receipt(), posted_at=NOW + timedelta(hours=1)), "receipt.posted_at"),
        (replace(receipt(), lines=()), "receipt.lines"),
        (receipt("GR-1", line(1, 1, "1"), line(1, 2, "1")), "receipt.lines[1].line_number"),
        (receipt("GR-1", line(1, 0, "1")), "receipt.lines[0].po_line_number"),
        (receipt("GR-1", line(1, 1, "-1")), "receipt.lines[0].quantity"),
        (receipt("GR-1", line(1, 1, "1", unit=" ")), "receipt.lines[0].unit_of_measure"),
        (receipt("GR-1", line(1, 1, "1", rejected=Decimal(2))), "receipt.lines[0].reject_reason_code"),
        (receipt("GR-1", line(1, 1, "1", short=Decimal(2))), "receipt.lines[0].short_reason_code"),
        (receipt("GR-1", line(1, 1, "0")), "receipt.lines[0]"),
        (receipt("RT-1", kind=Kind.RETURN), "receipt.reverses_receipt_id"),
        (receipt("GR-1", reverses="GR-0"), "receipt.reverses_receipt_id"),
        (receipt("RT-1", line(1, 1, "0"), kind=Kind.RETURN, reverses="GR-1"), "receipt.lines[0].quantity"),
    ],
)
def test_each_document_problem_names_its_field(document, field):
    assert field in [v.field for v in domain.validate_receipt(document, NOW)]


def test_a_line_that_only_rejects_goods_is_valid():
    rejecting = receipt("GR-1", line(1, 1, "0", rejected=Decimal(3), reject_reason="damaged"))
    assert domain.validate_receipt(rejecting, NOW) == []


# --- reconciliation -------------------------------------------------------------------------------------


def test_partial_receipts_accumulate_until_the_line_is_fully_received():
    state, first = posted(domain.INITIAL, receipt("GR-1", line(1, 1, "40")), order())
    assert figures(first, 1).figures.received == 40
    assert figures(first, 1).open == 60
    assert not figures(first, 1).fully_received
    assert first.findings == ()
    state, second = posted(state, receipt("GR-2", line(1, 1, "60")), order(), sequence=2)
    assert figures(second, 1).figures.received == 100
    assert figures(second, 1).open == 0
    assert figures(second, 1).fully_received
    assert not second.fully_received  # line 2 is still open
    _, third = posted(state, receipt("GR-3", line(1, 2, "10")), order(), sequence=3)
    assert third.fully_received
    assert state.lines[1].received == 100


def test_rejected_goods_are_recorded_but_not_received():
    _, event = posted(
        domain.INITIAL, receipt("GR-1", line(1, 1, "30", rejected=Decimal(5), reject_reason="damaged")), order()
    )
    assert figures(event, 1).figures.received == 30
    assert figures(event, 1).figures.rejected == 5
    assert figures(event, 1).open == 70


def test_over_receipt_within_the_allowance_is_no_finding_and_beyond_it_is_one():
    state, within = posted(domain.INITIAL, receipt("GR-1", line(1, 1, "105")), order())
    assert within.findings == ()
    _, beyond = posted(state, receipt("GR-2", line(1, 1, "1")), order(), sequence=2)
    assert types(beyond) == [(domain.OVER_RECEIPT, 1)]
    assert figures(beyond, 1).open == -6  # recorded as received: nothing is adjusted
    assert "106 EA received against 100 ordered" in beyond.findings[0].detail


def test_the_allowance_is_the_business_units():
    _, event = posted(domain.INITIAL, receipt("GR-1", line(1, 1, "101")), order(unit="BU-STRICT"))
    assert types(event) == [(domain.OVER_RECEIPT, 1)]


def test_a_receipt_against_an_unknown_order_is_recorded_with_a_finding():
    _, event = posted(domain.INITIAL, receipt(), None)
    assert types(event) == [(domain.UNKNOWN_PO, 0)]
    assert event.reconciled_version == 0
    assert figures(event, 1).ordered is None
    assert figures(event, 1).figures.received == 40


def test_a_receipt_against_a_cancelled_order_is_a_finding():
    _, event = posted(
        domain.INITIAL,
        receipt(),
        order(2, cancelled=True),
    )
    assert types(event) == [(domain.UNKNOWN_PO, 0)]
    assert "cancelled" in event.findings[0].detail


def test_a_line_the_order_does_not_have_is_a_finding():
    _, event = posted(domain.INITIAL, receipt("GR-1", line(1, 1, "1"), line(2, 7, "1")), order())
    assert types(event) == [(domain.UNKNOWN_PO, 7)]
    assert figures(event, 7).ordered is None


def test_a_receipt_prepared_from_a_superseded_version_is_reconciled_against_the_current_one():
    lowered = order(2, quantities={"1": "30", "2": "10"})
    _, event = posted(domain.INITIAL, receipt("GR-1", line(1, 1, "40"), version=1), lowered)
    assert event.reconciled_version == 2
    assert types(event) == [(domain.SUPERSEDED_VERSION, 0), (domain.OVER_RECEIPT, 1)]
    assert figures(event, 1).ordered == 30
    assert figures(event, 1).open == -10


def test_a_version_not_published_yet_is_refused():
    refusal = post(domain.INITIAL, receipt(version=3), order(2))
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.reason) == (RefusalKind.PRECONDITION, "VERSION_NOT_PUBLISHED")


def test_units_are_converted_to_the_order_lines():
    _, event = posted(domain.INITIAL, receipt("GR-1", line(1, 1, "2.5", unit="CS")), order())
    assert event.quantities[0].quantity == 30
    assert event.quantities[0].unit == "EA"
    assert figures(event, 1).figures.received == 30


def test_a_unit_without_an_exact_conversion_is_refused_naming_the_line():
    refusal = post(domain.INITIAL, receipt("GR-1", line(1, 1, "1"), line(2, 2, "1", unit="PL")), order())
    assert isinstance(refusal, Refusal)
    assert refusal.kind is RefusalKind.INVALID
    assert [path for path, _ in refusal.violations] == ["receipt.lines[1].unit_of_measure"]


def test_figures_counted_before_the_order_was_known_are_converted_to_its_unit():
    state, _ = posted(domain.INITIAL, receipt("GR-1", line(1, 1, "2", unit="CS")), None)
    assert state.lines[1].unit == "CS"
    _, event = posted(state, receipt("GR-2", line(1, 1, "6")), order(), sequence=2)
    assert figures(event, 1).figures.received == 30  # 2 CS = 24 EA, and 6 EA
    assert figures(event, 1).figures.unit == "EA"


def test_a_return_reduces_what_was_received():
    state, _ = posted(domain.INITIAL, receipt("GR-1", line(1, 1, "40")), order())
    _, event = posted(state, receipt("RT-1", line(1, 1, "15"), kind=Kind.RETURN, reverses="GR-1"), order(), sequence=2)
    assert figures(event, 1).figures.received == 25
    assert figures(event, 1).figures.returned == 15
    assert figures(event, 1).open == 75
    assert event.findings == ()


def test_a_return_larger_than_its_receipt_is_a_finding():
    state, _ = posted(domain.INITIAL, receipt("GR-1", line(1, 1, "40")), order())
    state, first = posted(
        state, receipt("RT-1", line(1, 1, "30"), kind=Kind.RETURN, reverses="GR-1"), order(), sequence=2
    )
    assert first.findings == ()
    _, second = posted(state, receipt("RT-2", line(1, 1, "11"), kind=Kind.RETURN, reverses="GR-1"), order(), sequence=3)
    assert types(second) == [(domain.OVER_RETURN, 1)]
    assert figures(second, 1).figures.received == -1


def test_a_return_naming_no_receipt_of_the_order_is_refused():
    refusal = post(domain.INITIAL, receipt("RT-1", kind=Kind.RETURN, reverses="GR-9"), order())
    assert isinstance(refusal, Refusal)
    assert refusal.reason == "UNKNOWN_REVERSED_RECEIPT"


def test_the_same_document_again_is_a_replay_and_other_content_a_duplicate_transaction():
    document = receipt("GR-1", line(1, 1, "40"))
    state, _ = posted(domain.INITIAL, document, order())
    assert post(state, document, order()) is None
    changed = receipt("GR-1", line(1, 1, "41"))
    refusal = post(state, changed, order())
    assert isinstance(refusal, Refusal)
    assert (refusal.kind, refusal.exception) == (RefusalKind.CONFLICT, "duplicate_transaction")


def test_a_document_id_recorded_against_another_order_is_a_duplicate_transaction():
    refusal = post(domain.INITIAL, receipt(), order(), against="PO-OTHER")
    assert isinstance(refusal, Refusal)
    assert (refusal.reason, refusal.exception) == ("DUPLICATE_RECEIPT", "duplicate_transaction")
    assert isinstance(post(domain.INITIAL, receipt(), order(), against="PO-1"), domain.Reconciled)


def test_an_order_holds_a_bounded_number_of_documents():
    state = domain.INITIAL
    many = {f"wms-east/GR-{n}": None for n in range(domain.MAX_DOCUMENTS_PER_ORDER)}
    state = replace(state, documents=many)  # type: ignore[arg-type]
    refusal = post(state, receipt("GR-NEW"), order())
    assert isinstance(refusal, Refusal)
    assert refusal.reason == "TOO_MANY_DOCUMENTS"


def test_one_exception_per_finding_type_of_a_document_names_its_lines():
    many = receipt("GR-1", *(line(n, 100 + n, "1") for n in range(1, 31)))
    _, event = posted(domain.INITIAL, many, order())
    assert len(event.findings) == 30
    [(exception, kind, detail)] = domain.exceptions_of(event.findings)
    assert kind == domain.UNKNOWN_PO
    assert {f.exception_id for f in event.findings} == {exception}
    assert "has no line 101" in detail
    assert detail.endswith("and 10 more line(s)")


def test_finding_exception_ids_are_derived_from_the_document():
    _, first = posted(domain.INITIAL, receipt(), None)
    _, again = posted(domain.INITIAL, receipt(), None)
    _, other = posted(domain.INITIAL, receipt("GR-2"), None)
    assert first.findings[0].exception_id == again.findings[0].exception_id != other.findings[0].exception_id


def test_folding_a_document_twice_counts_it_once():
    state, event = posted(domain.INITIAL, receipt(), order())
    assert fold(state, event, 2) == state


def test_status_lists_every_order_line_and_lines_received_that_it_does_not_have():
    state, _ = posted(domain.INITIAL, receipt("GR-1", line(1, 1, "40"), line(2, 9, "1")), order())
    statuses = domain.status_of(state, order())
    assert [(s.po_line_number, s.ordered, s.figures.received) for s in statuses] == [
        (1, Decimal(100), Decimal(40)),
        (2, Decimal(10), Decimal(0)),
        (9, None, Decimal(1)),
    ]


def test_a_conversion_that_would_need_rounding_is_refused():
    view = OrderView("PO-1", 1, False, "", {1: OrderLine(Decimal(5), "KGM")}, 1)
    assert isinstance(post(domain.INITIAL, receipt("GR-1", line(1, 1, "1500", unit="GRM")), view), domain.Reconciled)
    refusal = post(domain.INITIAL, receipt("GR-1", line(1, 1, "0.0005", unit="GRM")), view)
    assert isinstance(refusal, Refusal)
    assert [path for path, _ in refusal.violations] == ["receipt.lines[0].quantity"]
