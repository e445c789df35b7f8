"""Receipts between the contract and the domain: conversion, validation into field violations, and the
responses and event payloads built from the domain's figures."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from google.protobuf import timestamp_pb2
from google.type import decimal_pb2

from libs.runtime.errors import FieldViolation, InvalidArgument
from libs.runtime.events import timestamp
from libs.runtime.subjects import MAX_KEY_CHARS
from libs.runtime.values import datetime_from_proto, decimal_from_proto
from services.receipt_reconciliation import domain
from syncgov.exception.v1 import exception_pb2
from syncgov.receipt.v1 import events_pb2, receipt_pb2, receipt_service_pb2

FIELD = "receipt"
_KINDS = {receipt_pb2.RECEIPT_KIND_RECEIPT: domain.Kind.RECEIPT, receipt_pb2.RECEIPT_KIND_RETURN: domain.Kind.RETURN}
_KIND_TO_PROTO = {kind: number for number, kind in _KINDS.items()}


def normalized(document: receipt_pb2.GoodsReceipt, caller: str) -> receipt_pb2.GoodsReceipt:
    """The document as recorded (in place: the request belongs to this call): the caller is its source system,
    unit codes are upper case."""
    document.source_system = caller
    for line in document.lines:
        line.unit_of_measure = line.unit_of_measure.strip().upper()
    return document


def received_now_unless_dated(document: receipt_pb2.GoodsReceipt, now: datetime) -> None:
    """An undated document was received when it was posted. Filled after the fingerprint is taken: the same
    undated document posted again is the same document."""
    if not document.HasField("posted_at"):
        document.posted_at.CopyFrom(timestamp(now))


def valid_receipt(document: receipt_pb2.GoodsReceipt, now: datetime) -> domain.Receipt:
    """The domain form of a document, or INVALID_ARGUMENT listing every problem (nothing is recorded)."""
    violations: list[FieldViolation] = []
    if len(document.po_id) > MAX_KEY_CHARS:
        violations.append(FieldViolation(f"{FIELD}.po_id", f"must be at most {MAX_KEY_CHARS} characters"))
    receipt, problems = to_domain(document)
    violations.extend(problems)
    if receipt is not None:
        violations.extend(FieldViolation(v.field, v.description) for v in domain.validate_receipt(receipt, now))
    if violations or receipt is None:
        raise InvalidArgument(
            f"goods receipt {document.receipt_id or '(no id)'} is invalid: {len(violations)} problem(s); "
            "nothing was recorded",
            violations=violations,
            reason="INVALID_GOODS_RECEIPT",
        )
    return receipt


def _quantity(value: object, path: str, problems: list[FieldViolation], *, required: bool) -> Decimal:
    text = getattr(value, "value", "")
    if not text and not required:
        return domain.ZERO
    try:
        return decimal_from_proto(value)  # type: ignore[arg-type]
    except ValueError as error:
        problems.append(FieldViolation(path, str(error)))
        return domain.ZERO


def to_domain(document: receipt_pb2.GoodsReceipt) -> tuple[domain.Receipt | None, list[FieldViolation]]:
    problems: list[FieldViolation] = []
    kind = _KINDS.get(document.kind)
    if kind is None:
        problems.append(FieldViolation(f"{FIELD}.kind", "is required: RECEIPT_KIND_RECEIPT or RECEIPT_KIND_RETURN"))
    lines: list[domain.ReceiptLine] = []
    for index, line in enumerate(document.lines):
        path = f"{FIELD}.lines[{index}]"
        lines.append(
            domain.ReceiptLine(
                line_number=line.line_number,
                po_line_number=line.po_line_number,
                quantity=_quantity(line.quantity, f"{path}.quantity", problems, required=True),
                unit=line.unit_of_measure,
                rejected=_quantity(line.rejected_quantity, f"{path}.rejected_quantity", problems, required=False),
                reject_reason=line.reject_reason_code,
                short=_quantity(line.short_quantity, f"{path}.short_quantity", problems, required=False),
                short_reason=line.short_reason_code,
            )
        )
    if problems or kind is None:
        return None, problems
    return domain.Receipt(
        receipt_id=document.receipt_id,
        source_system=document.source_system,
        po_id=document.po_id,
        po_version=document.po_version,
        site_id=document.site_id,
        kind=kind,
        posted_at=datetime_from_proto(document.posted_at),
        lines=tuple(lines),
        reverses=document.reverses_receipt_id,
    ), []


def decimal_to_proto(number: Decimal) -> decimal_pb2.Decimal:
    """A quantity as people write it: 18, not 18.0 (1.5 CS at 12 EA); never an exponent."""
    return decimal_pb2.Decimal(value=format(number.normalize(), "f") if number else "0")


def finding_type(name: str) -> exception_pb2.ExceptionType:
    return exception_pb2.ExceptionType.Value(f"EXCEPTION_TYPE_{name.upper()}")  # type: ignore[return-value]


def finding_name(value: int) -> str:
    return exception_pb2.ExceptionType.Name(value).removeprefix("EXCEPTION_TYPE_").lower()


def finding_to_proto(finding: domain.Finding) -> receipt_pb2.ReceiptFinding:
    return receipt_pb2.ReceiptFinding(
        type=finding_type(finding.type),
        po_line_number=finding.po_line_number,
        detail=finding.detail,
        exception_id=finding.exception_id,
    )


def finding_from_proto(finding: receipt_pb2.ReceiptFinding) -> domain.Finding:
    return domain.Finding(finding_name(finding.type), finding.po_line_number, finding.detail, finding.exception_id)


def status_to_proto(status: domain.LineStatus) -> receipt_pb2.LineReceiptStatus:
    figures = status.figures
    message = receipt_pb2.LineReceiptStatus(
        po_line_number=status.po_line_number,
        received_quantity=decimal_to_proto(figures.received),
        returned_quantity=decimal_to_proto(figures.returned),
        rejected_quantity=decimal_to_proto(figures.rejected),
        unit_of_measure=figures.unit,
        fully_received=status.fully_received,
    )
    if status.ordered is not None:
        message.ordered_quantity.CopyFrom(decimal_to_proto(status.ordered))
        open_quantity = status.open
        assert open_quantity is not None
        message.open_quantity.CopyFrom(decimal_to_proto(open_quantity))
    return message


def status_from_proto(message: receipt_pb2.LineReceiptStatus) -> domain.LineStatus:
    ordered = Decimal(message.ordered_quantity.value) if message.HasField("ordered_quantity") else None
    figures = domain.LineFigures(
        received=Decimal(message.received_quantity.value or "0"),
        returned=Decimal(message.returned_quantity.value or "0"),
        rejected=Decimal(message.rejected_quantity.value or "0"),
        unit=message.unit_of_measure,
    )
    return domain.LineStatus(message.po_line_number, ordered, figures)


def quantity_to_proto(quantity: domain.LineQuantity) -> receipt_pb2.ReceiptLineQuantity:
    return receipt_pb2.ReceiptLineQuantity(
        line_number=quantity.line_number,
        po_line_number=quantity.po_line_number,
        quantity=decimal_to_proto(quantity.quantity),
        rejected_quantity=decimal_to_proto(quantity.rejected),
        unit_of_measure=quantity.unit,
    )


def quantity_from_proto(message: receipt_pb2.ReceiptLineQuantity) -> domain.LineQuantity:
    return domain.LineQuantity(
        message.line_number,
        message.po_line_number,
        Decimal(message.quantity.value or "0"),
        Decimal(message.rejected_quantity.value or "0"),
        message.unit_of_measure,
    )


def reconciled_to_proto(event: domain.Reconciled) -> events_pb2.GoodsReceiptReconciled:
    return events_pb2.GoodsReceiptReconciled(
        receipt=event.document,
        reconciled_po_version=event.reconciled_version,
        lines=[status_to_proto(status) for status in event.lines],
        findings=[finding_to_proto(finding) for finding in event.findings],
        quantities=[quantity_to_proto(quantity) for quantity in event.quantities],
        purchase_order_fully_received=event.fully_received,
        content_sha256=event.fingerprint,
    )


def post_response(event: domain.Reconciled) -> receipt_service_pb2.PostGoodsReceiptResponse:
    return receipt_service_pb2.PostGoodsReceiptResponse(
        reconciled_po_version=event.reconciled_version,
        lines=[status_to_proto(status) for status in event.lines],
        exception_ids=list(dict.fromkeys(finding.exception_id for finding in event.findings)),
        findings=[finding_to_proto(finding) for finding in event.findings],
        purchase_order_fully_received=event.fully_received,
    )


def document_response(event: domain.Reconciled) -> receipt_service_pb2.GetGoodsReceiptResponse:
    return receipt_service_pb2.GetGoodsReceiptResponse(
        receipt=event.document,
        reconciled_po_version=event.reconciled_version,
        findings=[finding_to_proto(finding) for finding in event.findings],
        quantities=[quantity_to_proto(quantity) for quantity in event.quantities],
    )


def status_response(
    state: domain.ReceivingState,
    order: domain.OrderView | None,
    unit_factor: Callable[[str, str], Decimal | None] | None = None,
) -> receipt_service_pb2.GetPurchaseOrderReceiptStatusResponse:
    statuses = domain.status_of(state, order, unit_factor)
    return receipt_service_pb2.GetPurchaseOrderReceiptStatusResponse(
        po_version=order.version if order is not None else 0,
        lines=[status_to_proto(status) for status in statuses],
        fully_received=order is not None and domain.fully_received_status(statuses, order),
        cancelled=order is not None and order.cancelled,
        documents=len(state.documents),
    )


def kind_to_proto(kind: domain.Kind) -> receipt_pb2.ReceiptKind:
    return _KIND_TO_PROTO[kind]


def posted_at(nanos: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(nanos)
    return stamp


def now() -> datetime:
    return datetime.now(UTC)


def required(value: str, field: str) -> str:
    if not value.strip():
        raise InvalidArgument(f"{field} is required", violations=[FieldViolation(field, "is required")])
    return value
