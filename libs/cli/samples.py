"""A realistic purchase order for the tools that drive a running stack (the demo, the chaos run)."""

from __future__ import annotations

from google.protobuf import timestamp_pb2
from google.type import decimal_pb2, money_pb2

from syncgov.po.v1 import po_pb2


def purchase_order(
    po_id: str,
    version: int,
    quantity: str,
    supplier_id: str,
    approved_at: timestamp_pb2.Timestamp,
    approved_by: str,
    stretch_film: str = "",
) -> po_pb2.PurchaseOrder:
    """One line of pallet wrap for the Hamburg DC, in EUR; with ``stretch_film`` (a quantity), a second line."""
    order = po_pb2.PurchaseOrder(
        po_id=po_id,
        version=version,
        supplier_id=supplier_id,
        currency_code="EUR",
        business_unit="BU-NORTH",
        ship_to_site="DC-HAMBURG",
        approved_by=approved_by,
        approved_at=approved_at,
        lines=[
            po_pb2.PurchaseOrderLine(
                line_number=1,
                item_id="ITEM-42",
                description="Pallet wrap 500mm",
                quantity=decimal_pb2.Decimal(value=quantity),
                unit_of_measure="EA",
                unit_price=money_pb2.Money(currency_code="EUR", units=12, nanos=500_000_000),
            )
        ],
    )
    if stretch_film:
        order.lines.append(
            po_pb2.PurchaseOrderLine(
                line_number=2,
                item_id="ITEM-77",
                description="Stretch film 23um, roll",
                quantity=decimal_pb2.Decimal(value=stretch_film),
                unit_of_measure="EA",
                unit_price=money_pb2.Money(currency_code="EUR", units=40),
            )
        )
    return order
