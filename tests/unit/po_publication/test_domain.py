from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from services.po_publication.domain import (
    OrderLine,
    PurchaseOrder,
    natural_idempotency_key,
    order_total,
    validate_order,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def line(number=1, quantity="10", price="12.50", currency="EUR", **changes) -> OrderLine:
    base = OrderLine(
        line_number=number,
        item_id="ITEM-1",
        description="Pallet wrap",
        quantity=Decimal(quantity),
        unit_of_measure="EA",
        unit_price=Decimal(price),
        price_currency=currency,
        requested_delivery_date=None,
        cost_center="CC-1",
    )
    return replace(base, **changes)


def order(**changes) -> PurchaseOrder:
    base = PurchaseOrder(
        po_id="PO-1",
        version=1,
        supplier_id="SUP-1",
        currency_code="EUR",
        business_unit="BU",
        ship_to_site="DC-1",
        approved_at=NOW - timedelta(minutes=1),
        lines=(line(1), line(2)),
    )
    return replace(base, **changes)


def fields(problems) -> list[str]:
    return [p.field for p in problems]


def test_a_sound_order_has_no_problems():
    assert validate_order(order(), NOW) == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"po_id": " "}, "purchase_order.po_id"),
        ({"supplier_id": ""}, "purchase_order.supplier_id"),
        ({"currency_code": "eur"}, "purchase_order.currency_code"),
        ({"currency_code": "ABC"}, "purchase_order.currency_code"),
        ({"approved_at": None}, "purchase_order.approved_at"),
        ({"approved_at": NOW + timedelta(hours=1)}, "purchase_order.approved_at"),
        ({"lines": ()}, "purchase_order.lines"),
        ({"cancelled": True}, "purchase_order.status"),
        ({"lines": (line(1), line(1))}, "purchase_order.lines[1].line_number"),
        ({"lines": (line(0),)}, "purchase_order.lines[0].line_number"),
        ({"lines": (line(1, quantity="0"),)}, "purchase_order.lines[0].quantity"),
        ({"lines": (line(1, quantity="-1"),)}, "purchase_order.lines[0].quantity"),
        ({"lines": (line(1, price="-0.01"),)}, "purchase_order.lines[0].unit_price"),
        ({"lines": (line(1, currency="USD"),)}, "purchase_order.lines[0].unit_price.currency_code"),
        ({"lines": (line(1, unit_of_measure=" "),)}, "purchase_order.lines[0].unit_of_measure"),
        ({"lines": (line(1, item_id="", description=""),)}, "purchase_order.lines[0].item_id"),
        ({"lines": (line(1, description="x" * 2001),)}, "purchase_order.lines[0].description"),
        ({"supplier_id": "S" * 129}, "purchase_order.supplier_id"),
    ],
)
def test_each_rule_reports_its_field(changes, field):
    assert field in fields(validate_order(order(**changes), NOW))


def test_free_of_charge_lines_are_allowed():
    assert validate_order(order(lines=(line(1, price="0"),)), NOW) == []


def test_approval_within_clock_skew_is_accepted():
    assert validate_order(order(approved_at=NOW + timedelta(minutes=4)), NOW) == []


def test_a_bad_header_currency_is_reported_once_not_per_line():
    assert fields(validate_order(order(currency_code="XXQ"), NOW)) == ["purchase_order.currency_code"]


def test_natural_key_names_source_document_and_version():
    assert natural_idempotency_key("procurement", "PO-1", 3) == "procurement:purchase_order:PO-1:v3"


def test_total_is_exact_decimal_arithmetic():
    three_lines = order(lines=(line(1, "3", "0.10"), line(2, "1", "0.10"), line(3, "0.5", "0.05")))
    assert order_total(three_lines) == Decimal("0.425")


def test_ship_to_site_must_be_known_to_the_policy():
    sites = frozenset({"DC-1", "DC-2"})
    assert validate_order(order(), NOW, sites=sites) == []
    assert fields(validate_order(order(ship_to_site="DC-9"), NOW, sites=sites)) == ["purchase_order.ship_to_site"]


def test_requested_dates_may_lie_in_the_past_only_within_the_margin():
    from datetime import date

    recent = order(lines=(line(1, requested_delivery_date=date(2026, 11, 20)),))
    old = order(lines=(line(1, requested_delivery_date=date(2026, 10, 1)),))
    assert validate_order(recent, NOW, past_margin=timedelta(days=7)) == []
    assert fields(validate_order(old, NOW, past_margin=timedelta(days=7))) == [
        "purchase_order.lines[0].requested_delivery_date"
    ]
    assert fields(validate_order(recent, NOW, past_margin=timedelta(0))) == [
        "purchase_order.lines[0].requested_delivery_date"
    ]


def test_changes_between_versions_name_lines_and_header_fields():
    from services.po_publication.domain import changes_between

    before = order(lines=(line(1), line(2), line(3)))
    after = order(ship_to_site="DC-2", lines=(line(1, quantity="11"), line(2, price="13.00"), line(4)))
    changes = changes_between(before, after)
    assert changes.added_lines == (4,)
    assert changes.removed_lines == (3,)
    assert changes.quantity_changed == (1,)
    assert changes.price_changed == (2,)
    assert changes.header_fields == ("ship_to_site",)
    assert changes_between(before, before).empty
    # Made urgent and nothing else: still a change (it picks another acknowledgment SLA).
    assert changes_between(before, replace(before, criticality="critical")).header_fields == ("criticality",)


def test_criticality_reads_from_the_contract_and_an_unknown_number_is_refused():
    from libs.runtime.values import criticality_name
    from services.po_publication.mapping import to_domain
    from syncgov.po.v1 import po_pb2

    assert criticality_name(po_pb2.PURCHASE_ORDER_CRITICALITY_HIGH) == "high"
    assert criticality_name(po_pb2.PURCHASE_ORDER_CRITICALITY_UNSPECIFIED) == "normal"
    assert criticality_name(99) == "normal"
    parsed, problems = to_domain(po_pb2.PurchaseOrder(po_id="PO-1", criticality=po_pb2.PURCHASE_ORDER_CRITICALITY_LOW))
    assert not problems
    assert parsed is not None
    assert parsed.criticality == "low"


@pytest.mark.parametrize(
    ("requested", "latest", "expected"),
    [(2, 1, "next"), (1, 1, "current"), (1, 3, "stale"), (5, 3, "ahead")],
)
def test_where_a_version_stands(requested, latest, expected):
    from services.po_publication.domain import place_version

    assert place_version(requested, latest).value == expected


def test_supplier_states_that_refuse_an_order():
    from services.po_publication.domain import supplier_problem

    assert supplier_problem("S", "active") is None
    assert "unknown" in (supplier_problem("S", None) or "")
    assert "inactive" in (supplier_problem("S", "inactive") or "")
    assert "blocked" in (supplier_problem("S", "blocked") or "")
    assert "S2" in (supplier_problem("S", "merged", "S2") or "")
