"""The business objects policy can govern, and the field paths each one has.

Field paths are the contract's own: ``purchase_order`` fields come from
``syncgov.po.v1.PurchaseOrder``, so ``lines[].unit_price`` means the
``unit_price`` of every line, exactly as a request carries it. Objects
without a contract message here are governed as a whole.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from syncgov.invoice.v1 import invoice_pb2
from syncgov.po.v1 import po_pb2
from syncgov.receipt.v1 import receipt_pb2
from syncgov.supplier.v1 import supplier_pb2

# Well-known value types are leaves: nobody owns Money.units apart from the price it belongs to.
_LEAF_MESSAGES = {
    "google.type.Money",
    "google.type.Decimal",
    "google.type.Date",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
}


@dataclass(frozen=True, slots=True)
class ObjectType:
    name: str
    description: str
    message: Descriptor | None = None
    required: bool = False

    def field_paths(self) -> frozenset[str]:
        return frozenset(_paths(self.message, "")) if self.message is not None else frozenset()


@functools.cache
def descends(descriptor: Descriptor | None) -> bool:
    """Whether field paths go inside messages of this type: not for value types (leaves) and map entries."""
    if descriptor is None or descriptor.full_name in _LEAF_MESSAGES:
        return False
    return not descriptor.GetOptions().map_entry


def message_descriptor(message_type: type[Message]) -> Descriptor:
    """``message_type.DESCRIPTOR`` as the descriptor API takes it.

    types-protobuf declares ``Message.DESCRIPTOR`` as a union of the pure-Python and the upb
    descriptor classes while ``FieldDescriptor.message_type`` and ``Any.Is`` take the pure-Python
    one; at run time both are the same descriptor, so this is a cast and nothing more.
    """
    return cast(Descriptor, message_type.DESCRIPTOR)


def field_path(prefix: str, field: FieldDescriptor) -> str:
    """One step of a field path in policy notation: ``lines[]`` for a repeated field."""
    return f"{prefix}{field.name}{'[]' if field.is_repeated else ''}"


def _paths(descriptor: Descriptor, prefix: str) -> list[str]:
    found: list[str] = []
    for field in descriptor.fields:
        path = field_path(prefix, field)
        found.append(path)
        if field.message_type is not None and descends(field.message_type):
            found.extend(_paths(field.message_type, f"{path}."))
    return found


def touched_fields(message: Message, prefix: str = "") -> set[str]:
    """Field paths a message sets, in the same notation as ``ObjectType.field_paths`` (``lines[].unit_price``)."""
    found: set[str] = set()
    for field, value in message.ListFields():
        path, inner = _step(prefix, field)
        found.add(path)
        if inner is not None:
            for item in value if field.is_repeated else (value,):
                found |= touched_fields(item, inner)
    return found


@functools.cache
def _step(prefix: str, field: FieldDescriptor) -> tuple[str, str | None]:
    """A field's path under ``prefix``, and the prefix of the paths inside it (None: a leaf). Computed once:
    enforcement walks every write request (a few dozen field paths, a bounded set per contract)."""
    path = field_path(prefix, field)
    return path, f"{path}." if descends(field.message_type) else None


OBJECT_TYPES: dict[str, ObjectType] = {
    o.name: o
    for o in (
        ObjectType(
            "supplier", "Supplier master data (golden record)", message_descriptor(supplier_pb2.Supplier), required=True
        ),
        ObjectType("item", "Item master"),
        ObjectType("cost_center", "Cost centers"),
        ObjectType(
            "purchase_order",
            "Purchase orders and change orders",
            message_descriptor(po_pb2.PurchaseOrder),
            required=True,
        ),
        ObjectType(
            "purchase_order_acknowledgment",
            "ERP acknowledgment of a PO version, ERP document number",
            message_descriptor(po_pb2.ErpAcknowledgment),
            required=True,
        ),
        ObjectType(
            "goods_receipt", "Goods receipts and returns", message_descriptor(receipt_pb2.GoodsReceipt), required=True
        ),
        ObjectType("invoice", "Supplier invoices (documents)", message_descriptor(invoice_pb2.Invoice), required=True),
        ObjectType("invoice_match_status", "Three-way match results, computed by syncgov", required=True),
        ObjectType("invoice_release", "A person's release or dispute of a blocked invoice"),
        ObjectType("payment", "Payment status", required=True),
        ObjectType("exception", "Exceptions raised by systems"),
        ObjectType("exception_handling", "A person's acknowledgment, resolution or replay of an exception"),
    )
}

SYSTEM_KINDS = frozenset(
    {"procurement", "erp", "wms", "transportation", "supplier_portal", "analytics", "syncgov", "operator", "other"}
)
CONFLICT_RULES = frozenset({"system_of_record_wins", "latest_version_wins", "hold_for_review"})
WORKFLOWS = frozenset({"po_acknowledgment", "receipt_sync", "invoice_match", "exception_acknowledgment"})
CRITICALITIES = ("critical", "high", "normal", "low")
SEVERITIES = ("low", "medium", "high", "critical")
EXCEPTION_TYPES = frozenset(
    {
        "validation_failed",
        "duplicate_transaction",
        "version_conflict",
        "out_of_order_version",
        "ownership_violation",
        "over_receipt",
        "receipt_unknown_po",
        "price_variance",
        "quantity_variance",
        "awaiting_receipt",
        "duplicate_invoice",
        "duplicate_supplier_suspected",
        "sla_breach",
        "drift_detected",
        "delivery_exhausted",
        "erp_rejected",
        "audit_failed",
        "superseded_version",
        "over_return",
    }
)
