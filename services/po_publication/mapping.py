"""Purchase orders between the contract and the domain: conversion, validation into field violations,
and the responses built from an order's state."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from libs.policy.engine import Policy
from libs.runtime.errors import FieldViolation, InvalidArgument
from libs.runtime.events import timestamp
from libs.runtime.subjects import MAX_KEY_CHARS
from libs.runtime.values import (
    criticality_name,
    date_from_proto,
    datetime_from_proto,
    decimal_from_proto,
    money_from_proto,
)
from services.po_publication import domain
from syncgov.po.v1 import po_pb2, po_service_pb2

PUBLISH_FIELD = "purchase_order"
MAX_IDEMPOTENCY_KEY_CHARS = 512


def normalized_first_version(order: po_pb2.PurchaseOrder) -> po_pb2.PurchaseOrder:
    """Fill the defaults in place: the request message belongs to this call alone."""
    if order.version == 0:
        order.version = 1
    return normalized(order)


def normalized(order: po_pb2.PurchaseOrder) -> po_pb2.PurchaseOrder:
    """Defaults every version gets: status OPEN, line prices in the order's currency (in place)."""
    if order.status == po_pb2.PURCHASE_ORDER_STATUS_UNSPECIFIED:
        order.status = po_pb2.PURCHASE_ORDER_STATUS_OPEN
    for line in order.lines:
        if not line.unit_price.currency_code:
            line.unit_price.currency_code = order.currency_code
    return order


def valid_order(
    order: po_pb2.PurchaseOrder,
    idempotency_key: str,
    *,
    suppliers: domain.SupplierDirectory,
    policy: Policy,
    change: bool,
) -> domain.PurchaseOrder:
    """The domain form of a version, or INVALID_ARGUMENT listing every problem (nothing is published)."""
    violations: list[FieldViolation] = []
    if len(order.po_id) > MAX_KEY_CHARS:
        violations.append(FieldViolation(f"{PUBLISH_FIELD}.po_id", f"must be at most {MAX_KEY_CHARS} characters"))
    if len(idempotency_key) > MAX_IDEMPOTENCY_KEY_CHARS:
        violations.append(FieldViolation("idempotency_key", f"must be at most {MAX_IDEMPOTENCY_KEY_CHARS} characters"))
    if order.criticality not in po_pb2.PurchaseOrderCriticality.values():
        violations.append(
            FieldViolation(f"{PUBLISH_FIELD}.criticality", f"{order.criticality} is not a PurchaseOrderCriticality")
        )
    parsed, conversion_problems = to_domain(order)
    violations.extend(conversion_problems)
    if parsed is not None:
        rules = domain.validate_order(
            parsed,
            datetime.now(UTC),
            sites=policy.sites,
            past_margin=policy.requested_date_past_margin,
            suppliers=suppliers,
            change=change,
        )
        violations.extend(FieldViolation(v.field, v.description) for v in rules)
    if violations or parsed is None:
        raise InvalidArgument(
            f"purchase order {order.po_id or '(no id)'} is invalid: {len(violations)} problem(s); "
            "nothing was published",
            violations=violations,
            reason="INVALID_PURCHASE_ORDER",
        )
    return parsed


def to_domain(order: po_pb2.PurchaseOrder) -> tuple[domain.PurchaseOrder | None, list[FieldViolation]]:
    problems: list[FieldViolation] = []
    lines: list[domain.OrderLine] = []
    for index, line in enumerate(order.lines):
        path = f"{PUBLISH_FIELD}.lines[{index}]"
        try:
            quantity = decimal_from_proto(line.quantity)
        except ValueError as error:
            problems.append(FieldViolation(f"{path}.quantity", str(error)))
            quantity = None
        try:
            price = money_from_proto(line.unit_price)
        except ValueError as error:
            problems.append(FieldViolation(f"{path}.unit_price", str(error)))
            price = None
        try:
            requested = date_from_proto(line.requested_delivery_date)
        except ValueError as error:
            problems.append(FieldViolation(f"{path}.requested_delivery_date", str(error)))
            requested = None
        if quantity is not None and price is not None:
            lines.append(
                domain.OrderLine(
                    line_number=line.line_number,
                    item_id=line.item_id,
                    description=line.description,
                    quantity=quantity,
                    unit_of_measure=line.unit_of_measure,
                    unit_price=price,
                    price_currency=line.unit_price.currency_code,
                    requested_delivery_date=requested,
                    cost_center=line.cost_center,
                )
            )
    if problems:
        return None, problems
    approved_at = datetime_from_proto(order.approved_at) if order.HasField("approved_at") else None
    return domain.PurchaseOrder(
        po_id=order.po_id,
        version=order.version,
        supplier_id=order.supplier_id,
        currency_code=order.currency_code,
        business_unit=order.business_unit,
        ship_to_site=order.ship_to_site,
        approved_at=approved_at,
        lines=tuple(lines),
        cancelled=order.status == po_pb2.PURCHASE_ORDER_STATUS_CANCELLED,
        criticality=criticality_name(order.criticality),
    ), []


def changes_to_proto(changes: domain.Changes) -> po_pb2.PurchaseOrderChanges:
    return po_pb2.PurchaseOrderChanges(
        added_line_numbers=changes.added_lines,
        removed_line_numbers=changes.removed_lines,
        quantity_changed_line_numbers=changes.quantity_changed,
        price_changed_line_numbers=changes.price_changed,
        date_changed_line_numbers=changes.date_changed,
        header_fields=changes.header_fields,
    )


def changes_from_proto(changes: po_pb2.PurchaseOrderChanges) -> domain.Changes:
    return domain.Changes(
        added_lines=tuple(changes.added_line_numbers),
        removed_lines=tuple(changes.removed_line_numbers),
        quantity_changed=tuple(changes.quantity_changed_line_numbers),
        price_changed=tuple(changes.price_changed_line_numbers),
        date_changed=tuple(changes.date_changed_line_numbers),
        header_fields=tuple(changes.header_fields),
    )


def publish_response(stored: domain.StoredVersion) -> po_service_pb2.PublishPurchaseOrderResponse:
    recorded = stored.recorded
    return po_service_pb2.PublishPurchaseOrderResponse(
        po_id=stored.order.po_id,
        version=stored.version,
        event_id=recorded.event_id,
        stream_sequence=recorded.sequence,
        published_at=_timestamp_ns(recorded.recorded_at_ns),
        idempotency_key=recorded.idempotency_key,
    )


def _timestamp_ns(nanos: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(nanos)
    return stamp


def change_response(stored: domain.StoredVersion) -> po_service_pb2.ChangePurchaseOrderResponse:
    recorded = stored.recorded
    return po_service_pb2.ChangePurchaseOrderResponse(
        po_id=stored.order.po_id,
        version=stored.version,
        event_id=recorded.event_id,
        stream_sequence=recorded.sequence,
        changes=changes_to_proto(stored.changes),
        idempotency_key=recorded.idempotency_key,
    )


def held_response(held: domain.HeldVersion) -> po_service_pb2.ChangePurchaseOrderResponse:
    return po_service_pb2.ChangePurchaseOrderResponse(
        po_id=held.order.po_id, version=held.version, held=True, idempotency_key=held.idempotency_key
    )


def cancel_response(stored: domain.StoredVersion) -> po_service_pb2.CancelPurchaseOrderResponse:
    recorded = stored.recorded
    return po_service_pb2.CancelPurchaseOrderResponse(
        po_id=stored.order.po_id,
        version=stored.version,
        event_id=recorded.event_id,
        stream_sequence=recorded.sequence,
    )


def acknowledgment_to_proto(acknowledgment: domain.Acknowledgment) -> po_pb2.ErpAcknowledgment:
    message = po_pb2.ErpAcknowledgment(
        version=acknowledgment.version, erp_document_number=acknowledgment.erp_document_number
    )
    message.acknowledged_at.CopyFrom(timestamp(acknowledgment.acknowledged_at))
    return message


def required_po_id(po_id: str, field: str = "po_id") -> str:
    if not po_id.strip():
        raise InvalidArgument(f"{field} is required", violations=[FieldViolation(field, "is required")])
    if len(po_id) > MAX_KEY_CHARS:
        raise InvalidArgument(
            f"{field} is longer than {MAX_KEY_CHARS} characters",
            violations=[FieldViolation(field, f"must be at most {MAX_KEY_CHARS} characters")],
        )
    return po_id


def required_text(value: str, field: str, what: str) -> str:
    if not value.strip():
        raise InvalidArgument(f"{what} is required", violations=[FieldViolation(field, "is required")])
    return value


def document_of(stored: domain.StoredVersion) -> po_pb2.PurchaseOrder:
    document = stored.document
    assert isinstance(document, po_pb2.PurchaseOrder)
    return document


def unacknowledged_to_proto(entry: domain.Unacknowledged) -> po_service_pb2.UnacknowledgedPurchaseOrder:
    approved = timestamp_pb2.Timestamp()
    approved.FromNanoseconds(round(entry.approved_at * 1_000_000) * 1000)
    return po_service_pb2.UnacknowledgedPurchaseOrder(
        po_id=entry.po_id,
        latest_version=entry.latest_version,
        acknowledged_version=entry.acknowledged_version,
        approved_at=approved,
    )


def unacknowledged_cursor(cursor: str) -> tuple[str, str]:
    """The (approval score, po id) a page cursor names; INVALID_ARGUMENT for one this server did not issue."""
    score, separator, po_id = cursor.partition("|")
    try:
        float(score)
    except ValueError:
        score = ""
    if not separator or not score or not po_id:
        message = "page_token is not a page token this server issued"
        raise InvalidArgument(
            message, violations=[FieldViolation("page.page_token", message)], reason="INVALID_PAGE_TOKEN"
        )
    return score, po_id
