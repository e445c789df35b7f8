"""Purchase orders between the contract and the domain: conversion, validation into field violations,
and the responses rebuilt from stored events."""

from __future__ import annotations

from datetime import UTC, datetime

from libs.policy.engine import Policy
from libs.runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, ServiceError
from libs.runtime.events import StoredEvent
from libs.runtime.subjects import MAX_KEY_CHARS
from libs.runtime.values import date_from_proto, datetime_from_proto, decimal_from_proto, money_from_proto
from services.po_publication import domain
from services.po_publication.store import SupplierDirectory
from syncgov.po.v1 import events_pb2, po_pb2, po_service_pb2

PUBLISH_FIELD = "purchase_order"


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


def reject_invalid(
    order: po_pb2.PurchaseOrder,
    idempotency_key: str,
    *,
    suppliers: SupplierDirectory,
    policy: Policy,
    change: bool = False,
) -> None:
    violations: list[FieldViolation] = []
    if order.supplier_id:
        problem = domain.supplier_problem(order.supplier_id, *suppliers.lookup(order.supplier_id))
        if problem:
            violations.append(FieldViolation(f"{PUBLISH_FIELD}.supplier_id", problem))
    if change and order.version < 2:
        violations.append(
            FieldViolation(f"{PUBLISH_FIELD}.version", "a change order is version 2 or later (version 1 is published)")
        )
    if not change and order.version != 1:
        violations.append(
            FieldViolation(
                f"{PUBLISH_FIELD}.version",
                f"PublishPurchaseOrder creates version 1; version {order.version} is a change order "
                "(ChangePurchaseOrder)",
            )
        )
    if len(order.po_id) > MAX_KEY_CHARS:
        violations.append(FieldViolation(f"{PUBLISH_FIELD}.po_id", f"must be at most {MAX_KEY_CHARS} characters"))
    if len(idempotency_key) > 512:
        violations.append(FieldViolation("idempotency_key", "must be at most 512 characters"))
    parsed, conversion_problems = to_domain(order)
    violations.extend(conversion_problems)
    if parsed is not None:
        now = datetime.now(UTC)
        rules = domain.validate_order(parsed, now, sites=policy.sites, past_margin=policy.requested_date_past_margin)
        violations.extend(FieldViolation(v.field, v.description) for v in rules)
    if violations:
        raise InvalidArgument(
            f"purchase order {order.po_id or '(no id)'} is invalid: {len(violations)} problem(s); "
            "nothing was published",
            violations=violations,
            reason="INVALID_PURCHASE_ORDER",
        )


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


def change_response(stored: StoredEvent) -> po_service_pb2.ChangePurchaseOrderResponse:
    changed = stored.unpack(events_pb2.PurchaseOrderChanged)
    envelope = stored.envelope
    return po_service_pb2.ChangePurchaseOrderResponse(
        po_id=envelope.object_key,
        version=envelope.object_version,
        event_id=envelope.event_id,
        stream_sequence=stored.sequence,
        changes=changed.changes,
        idempotency_key=envelope.idempotency_key,
    )


def cancel_response(stored: StoredEvent) -> po_service_pb2.CancelPurchaseOrderResponse:
    envelope = stored.envelope
    return po_service_pb2.CancelPurchaseOrderResponse(
        po_id=envelope.object_key,
        version=envelope.object_version,
        event_id=envelope.event_id,
        stream_sequence=stored.sequence,
    )


def unknown_version(po_id: str, version: int, history) -> ServiceError:
    if not history.versions:
        return NotFound(f"purchase order {po_id!r} is unknown", reason="PO_NOT_FOUND")
    return FailedPrecondition(
        f"purchase order {po_id} has no version {version} (latest {history.latest_version})",
        subject=f"purchase_order/{po_id}",
        reason="UNKNOWN_VERSION",
        metadata={"latest_version": str(history.latest_version)},
    )


def required_po_id(po_id: str) -> str:
    if not po_id.strip():
        raise InvalidArgument("po_id is required", violations=[FieldViolation("po_id", "is required")])
    return po_id


def order_of(event: StoredEvent) -> po_pb2.PurchaseOrder:
    for message_type in (
        events_pb2.PurchaseOrderPublished,
        events_pb2.PurchaseOrderChanged,
        events_pb2.PurchaseOrderCancelled,
    ):
        if event.envelope.payload.Is(message_type.DESCRIPTOR):
            return event.unpack(message_type).purchase_order
    raise TypeError(f"{event.envelope.event_type} carries no purchase order")


def publish_response(order, event_id, sequence, recorded_at, key) -> po_service_pb2.PublishPurchaseOrderResponse:
    return po_service_pb2.PublishPurchaseOrderResponse(
        po_id=order.po_id,
        version=order.version,
        event_id=event_id,
        stream_sequence=sequence,
        published_at=recorded_at,
        idempotency_key=key,
    )
